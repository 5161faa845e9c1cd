"""The simulated exchange's fault controls: the methods of :class:`~engine.sim.exchange.SimExchange` that break things.

Kept apart from the exchange's lifetime, transports and views (one concept
per module). Connection-level controls act on every open connection
(``index=None``) or the open one at ``index`` (accept order); request-level
ones ("the next N subscribes") are one-shot counters in
:class:`~engine.sim.faults.Faults`, consumed by whichever connection meets
them first. :meth:`Controls.call_later` / :meth:`Controls.call_at` script any
control on the sim's clock.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from engine.sim.service import Venue
from engine.sim.session import Rejection, Session

__all__ = ["Controls", "check_close_code", "check_delay"]

_RESERVED_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})


def check_close_code(code: int) -> None:
    """ValueError unless ``code`` may be sent in a close frame (1000-4999, not 1004-1006 or 1015)."""
    if not isinstance(code, int) or not 1000 <= code <= 4999 or code in _RESERVED_CLOSE_CODES:
        raise ValueError(f"{code!r} cannot be sent as a close code")


def _count(count: int) -> int:
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, not {count!r}")
    return count


def check_delay(delay: tuple[float, float]) -> None:
    """ValueError unless ``delay`` is a ``(low, high)`` range of seconds with 0 <= low <= high."""
    try:
        low, high = delay
        ok = 0 <= low <= high < float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"a delay range must be (low, high) seconds with 0 <= low <= high, not {delay!r}")

class Controls:
    """Fault controls over the open connections (``_live``) and the shared ``_venue``."""

    #: Seconds :meth:`close_all` (and a lifetime close) waits for clients to answer the close frame.
    close_timeout: float = 2.0
    _live: list[Session]
    _venue: Venue
    _rejections: deque[Rejection]
    _raw: deque[bytes]

    def _task_group(self) -> TaskGroup:
        raise NotImplementedError  # the exchange's own task group

    def _notify(self) -> None:
        raise NotImplementedError  # wakes wait_connections

    def drop_one(self, index: int = 0) -> None:
        """Reset one live connection (``index`` in accept order among the live ones), without a close frame."""
        session = self._live.pop(index)
        session.reset()
        self._notify()

    def drop(self) -> None:
        """Reset every live connection, without a close frame.

        In memory the client's next receive raises ``BrokenResourceError``; over
        TCP the socket is closed with SO_LINGER 0 (the client sees a reset).
        The connections count drops to 0 at once.
        """
        sessions, self._live = self._live, []
        for session in sessions:
            session.reset()
        if sessions:
            self._notify()

    def stall(self) -> None:
        """Freeze the current connections: nothing sent (no data, no pongs), socket kept open.

        Requests still arrive and take effect; their replies are held and sent on
        :meth:`resume`. Connections accepted later are not stalled.
        """
        for session in self._live:
            session.stall()

    def stall_one(self, index: int = 0) -> None:
        """Stall one live connection (``index`` in accept order among the live ones); see :meth:`stall`."""
        self._live[index].stall()

    def resume(self) -> None:
        """End a stall: held replies go out, then data flows again (missed messages are skipped)."""
        for session in self._live:
            session.resume()

    async def close_all(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame with ``code`` to every client (even stalled ones).

        Each connection ends after the client's reply or after
        :attr:`close_timeout` seconds, whichever comes first; returns when all
        have ended.
        """
        check_close_code(code)
        async with anyio.create_task_group() as tg:
            for session in list(self._live):
                tg.start_soon(session.close, code, reason, self.close_timeout)

    def reject_next(
        self,
        status: int,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next handshake with HTTP ``status`` (e.g. 429 with ``("Retry-After", "2")``).

        ``retry_after`` adds a ``Retry-After`` header (whole seconds are sent
        as an integer). Calls queue up: two calls reject the next two
        handshakes. Typical: 429 or 503 with Retry-After, 401.
        """
        if not 200 <= status <= 599 or status == 101:
            raise ValueError(f"status must be an HTTP error or success code (200-599), not {status}")
        pairs = [(str(k), str(v)) for k, v in headers]
        if retry_after is not None:
            pairs.append(("Retry-After", f"{retry_after:g}"))
        self._rejections.append(Rejection(status, tuple(pairs), bytes(body)))

    def send_raw_next(self, data: bytes) -> None:
        """Write ``data`` as is right after the next accepted handshake's 101 (for protocol tests)."""
        self._raw.append(bytes(data))

    def _targets(self, index: int | None) -> list[Session]:
        """Every live connection (None) or the live one at ``index`` (accept order)."""
        return list(self._live) if index is None else [self._live[index]]

    async def close_one(self, index: int = 0, code: int = 1000, reason: str = "") -> None:
        """Like :meth:`close_all` for the live connection at ``index`` (e.g. 1001, 1008, 1011, 4000)."""
        check_close_code(code)
        await self._live[index].close(code, reason, self.close_timeout)

    def half_open(self, index: int | None = None) -> None:
        """Half-open connections: the socket stays open, nothing flows either way.

        The exchange neither sends (data is missed, like :meth:`stall`) nor
        reads (requests, pings and close frames go unanswered and unseen) until
        :meth:`resume`; :meth:`drop` or leaving the sim ends them.
        """
        for session in self._targets(index):
            session.half_open()

    def reject_subscribes(self, count: int = 1, code: int = 503, message: str = "subscribe refused") -> None:
        """Refuse the next ``count`` subscribe requests (any connection) with an error event ``code``."""
        self._venue.faults.reject_subscribes += _count(count)
        self._venue.refusal = (int(code), str(message))

    def reject_logins(self, count: int = 1) -> None:
        """Fail the next ``count`` logins (``"ok": false``, code 401), even correctly signed ones."""
        self._venue.faults.reject_logins += _count(count)

    def duplicate_responses(self, count: int = 1) -> None:
        """Send the next ``count`` request answers (acks, logins, pongs, orders, errors) twice."""
        self._venue.faults.duplicate_responses += _count(count)

    def set_response_delay(self, low: float, high: float) -> None:
        """Delay each ``place_order`` answer by a seeded uniform draw in [low, high] s: answers overtake each other."""
        check_delay((low, high))
        self._venue.response_delay = (float(low), float(high))

    def set_lifetime(self, seconds: float | None, code: int = 1001) -> None:
        """Close each connection accepted from now on ``seconds`` after its handshake (None: never).

        Like Binance's 24-hour limit: a close frame with ``code`` and reason
        ``"lifetime"``, then the connection ends after the client's answer or
        :attr:`close_timeout`.
        """
        if seconds is not None and not seconds > 0:
            raise ValueError(f"lifetime must be > 0 seconds or None, not {seconds!r}")
        check_close_code(code)
        self._venue.lifetime, self._venue.lifetime_code = seconds, code

    def skip_book(self, symbol: str | None = None, index: int | None = None) -> None:
        """Leave out the next book delta (of ``symbol``, or any) on connections: a sequence gap there."""
        for session in self._targets(index):
            session.skip_book(symbol)

    def corrupt_book(self, symbol: str | None = None, index: int | None = None) -> None:
        """Send the next book delta (of ``symbol``, or any) with a wrong checksum on connections."""
        for session in self._targets(index):
            session.corrupt_book(symbol)

    async def send_text(self, text: str, index: int | None = None) -> None:
        """Write one text message to connections now, even stalled ones (e.g. malformed JSON)."""
        for session in self._targets(index):
            await session.send_text(text)

    async def send_malformed(self, index: int | None = None, text: str = '{"channel":"ticker","symbol":') -> None:
        """Write a text message that is not valid JSON."""
        await self.send_text(text, index)

    async def send_oversize(self, size: int, index: int | None = None) -> None:
        """Write one valid JSON text message of exactly ``size`` bytes (above a client's limit, presumably)."""
        frame = '{"channel":"padding","pad":""}'
        if size < len(frame):
            raise ValueError(f"size must be at least {len(frame)}")
        await self.send_text(frame[:-2] + "x" * (size - len(frame)) + '"}', index)

    async def send_raw(self, data: bytes, index: int | None = None) -> None:
        """Write ``data`` as is (no framing) to connections now, e.g. a broken frame."""
        for session in self._targets(index):
            await session.send_raw(bytes(data))

    def ping_storm(self, count: int, interval: float, index: int | None = None) -> None:
        """Send ``count`` protocol pings ``interval`` seconds apart to connections (not while stalled)."""
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0, not {interval!r}")
        for session in self._targets(index):
            session.ping_storm(_count(count), interval)

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` (a control, plain or async) ``delay`` seconds from now on the sim's clock.

        A scripted fault schedule::

            sim.call_later(10, sim.drop)
            sim.call_later(20, sim.close_all, 1011)
        """
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, not {delay!r}")
        self._task_group().start_soon(self._later, delay, func, args)

    def call_at(self, when: float, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` at ``when`` on the sim's clock (``anyio.current_time()``); at once if past."""
        self.call_later(max(0.0, when - anyio.current_time()), func, *args)

    async def _later(self, delay: float, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        await anyio.sleep(delay)
        result = func(*args)
        if inspect.isawaitable(result):
            await result

