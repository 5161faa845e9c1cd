"""Request/response correlation by key: one dict lookup per message while requests wait.

A request registers its key *before* its frame is sent, so a fast reply is
never missed. Incoming messages are offered only while something is pending,
through one per-connection ``response_key(message)`` (from the setup; by
default the ``"id"`` of a JSON object): never one matcher per pending request.
A ``response_key`` that raises on some message (a heartbeat that is not JSON)
counts as no match: counted, logged once, the stream goes on. A socket read
whose bytes hold no :attr:`Requests.marker` (with the default key ``"id"``;
``setup.response_marker`` for your own) skips the matcher altogether: one
vectorized search per read (StringZilla, ~6 ns per 200-byte message, where
``bytes.__contains__`` takes ~115 ns on JSON, which has a quote every few
bytes) instead of a parse per message. An id key spelled with JSON escapes
would not be seen.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import anyio
import orjson

from engine.errors import DuplicateRequest, RequestTimeout
from engine.waiter import Deadlines, Done, EventDone, Waits, finish, waits_for_running_loop

__all__ = ["LatencyObserver", "Pending", "Requests", "ResponseKey", "json_id"]

log = logging.getLogger("wirestate.requests")

Message = str | bytes
#: ``(message) -> key or None``: which pending request a message answers
ResponseKey = Callable[[Message], Hashable | None]
#: ``(key, seconds)``: how long an answered request took (send to last response)
LatencyObserver = Callable[[Hashable, float], None]
_EXPIRED_KEPT = 1024
W = TypeVar("W")  # what a request is sent on (the connection's wire)
#: what an answer found by :func:`json_id` holds in its raw bytes
JSON_ID_MARKER = b'"id"'


def json_id(message: Message) -> Hashable | None:
    """The ``"id"`` field of a JSON object message, or None (not JSON, not an object, no id)."""
    try:
        decoded = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if type(decoded) is dict:
        key = decoded.get("id")
        if type(key) is int or type(key) is str:  # (the common ids, without the slower ABC check)
            return key
        return key if isinstance(key, Hashable) else None
    return None


class Pending:
    """One waiting request: its responses so far, and what ends the wait (see :class:`~engine.waiter.Done`)."""

    __slots__ = ("key", "expect", "is_final", "responses", "done", "error", "deadline", "started")

    def __init__(
        self,
        key: Hashable,
        expect: int,
        is_final: Callable[[Message], bool] | None,
        done: Done,
        deadline: float,
        started: float,
    ) -> None:
        self.key = key
        self.deadline = deadline  # when the wait ends in a timeout, on the clock
        self.started = started  # when it was sent, on the clock
        self.expect = expect
        self.is_final = is_final
        self.responses: list[Message] = []
        self.done = done
        self.error: BaseException | None = None


class Requests:
    """The pending requests of one connection, by key."""

    __slots__ = (
        "_pending", "_response_key", "marker", "_owner", "_clock", "_expired", "key_errors", "late_responses", "observer",
        "_waits", "_deadlines",
    )  # fmt: skip

    def __init__(
        self,
        response_key: ResponseKey,
        owner: str,
        clock: Callable[[], float],
        observer: LatencyObserver | None = None,
        marker: bytes | None = None,
    ) -> None:
        self._pending: dict[Hashable, Pending] = {}
        self._response_key = response_key
        if marker is None and response_key is json_id:
            marker = JSON_ID_MARKER
        #: bytes every answer's raw frame holds (server frames are unmasked and never
        #: compressed here): reads without them pass the matcher by (engine.reader).
        #: None or b"": every message is offered
        self.marker = marker or None
        self._owner = owner
        self._clock = clock
        # keys whose wait timed out -> until when a late answer is watched for (bounded, in
        # expiry order): such an answer is logged once; it still goes to the handler
        self._expired: dict[Hashable, float] = {}
        #: messages on which ``response_key`` raised (each treated as no match)
        self.key_errors = 0
        #: answers that came after their request timed out (they went to the handler)
        self.late_responses = 0
        #: ``(key, seconds)`` after every answered request
        self.observer = observer
        # How waiting is done on the running backend, and (asyncio) the deadlines' one timer:
        # found at the first request of a run (an idle connection holds neither)
        self._waits: Waits | None = None
        self._deadlines: Deadlines[Hashable, Pending] | None = None

    def unbind(self) -> None:
        """A new run starts (perhaps on another loop): find the backend again at its first request."""
        if self._deadlines is not None:
            self._deadlines.close()
        self._waits = self._deadlines = None

    def _bind(self) -> Waits:
        waits = self._waits = waits_for_running_loop()
        call_at = waits.call_at
        if call_at is not None:
            self._deadlines = Deadlines(call_at, self._clock, self._time_out, self._pending)
        return waits

    def _time_out(self, pending: Pending) -> None:
        """``pending``'s deadline passed: an answer from now on goes to the handler (logged once)."""
        self.discard(pending)
        self._note_expired(pending)
        finish(pending.done, False)

    def _note_expired(self, pending: Pending) -> None:
        key, now = pending.key, self._clock()
        self._expired.pop(key, None)
        self._expired[key] = now + (now - pending.started)  # watched as long again as it waited
        if len(self._expired) > _EXPIRED_KEPT:
            del self._expired[next(iter(self._expired))]

    def __bool__(self) -> bool:
        """Whether incoming messages must be offered: requests wait, or answers may still come late."""
        if self._pending:
            return True
        if self._expired:
            self._forget_expired()
            return bool(self._expired)
        return False

    def _forget_expired(self) -> None:
        now = self._clock()
        for key, until in list(self._expired.items()):
            if until > now:
                break  # (kept in expiry order)
            del self._expired[key]

    def __len__(self) -> int:
        return len(self._pending)

    def waiting(self) -> list[tuple[Hashable, float]]:
        """``(key, deadline)`` of every pending request."""
        return [(p.key, p.deadline) for p in self._pending.values()]

    def register(
        self,
        key: Hashable,
        expect: int = 1,
        is_final: Callable[[Message], bool] | None = None,
        deadline: float = float("inf"),
        started: float = 0.0,
    ) -> Pending:
        """Start waiting for ``key`` (no timer: :meth:`request` adds it); :class:`DuplicateRequest` if it is pending."""
        table = self._pending
        if key in table:
            raise DuplicateRequest(f"{self._owner}: a request with key {key!r} is already pending")
        waits = self._waits or self._bind()
        pending = table[key] = Pending(key, expect, is_final, waits.new(), deadline, started)
        return pending

    def discard(self, pending: Pending) -> None:
        """Stop waiting (done, timed out or cancelled); later responses go to the handler."""
        if self._pending.get(pending.key) is pending:
            del self._pending[pending.key]

    def offer(self, message: Message) -> bool:
        """True when ``message`` answered a pending request (it is then not delivered to the handler)."""
        try:
            key = self._response_key(message)
        except Exception:
            self.key_errors += 1
            if self.key_errors == 1:  # once: a heartbeat format would otherwise flood the log
                log.warning("%s: response_key raised; such messages count as no match", self._owner, exc_info=True)
            return False
        if key is None:
            return False
        try:
            pending = self._pending.get(key)
        except TypeError:  # an unhashable key from a custom response_key
            return False
        if pending is None:
            if self._expired and key in self._expired:
                del self._expired[key]  # once per expired key
                self.late_responses += 1
                log.warning("%s: a response to request %r came after its timeout; it goes to the handler", self._owner, key)
            return False
        pending.responses.append(message)
        final = pending.is_final
        if len(pending.responses) >= pending.expect or (final is not None and _safe_final(final, message)):
            del self._pending[key]
            finish(pending.done, True)
        return True

    async def request(
        self,
        send: Callable[[W, bytes], Awaitable[None] | None],
        wire: W,
        frame: bytes,
        key: Hashable,
        expect: int,
        deadline: float,
        is_final: Callable[[Message], bool] | None,
        clock: Callable[[], float],
        started: float,
    ) -> Any:
        """Register ``key``, ``send(wire, frame)``, wait for the response(s) until ``deadline`` (on ``clock``).

        ``send(wire, frame)`` sends the request: None when it is out, else an awaitable
        that finishes the send (waited for within the deadline too: a blocked
        send is a timeout). ``expect`` is a positive int (the connection's
        ``request`` checked it); ``started`` is ``clock()`` at the call.
        Raises :class:`DuplicateRequest` at once if ``key`` is already pending.
        """
        pending = self.register(key, expect, is_final, deadline, started)
        done, deadlines = pending.done, self._deadlines
        try:
            rest = send(wire, frame)
            if deadlines is not None:  # asyncio: the table's one timer ends the wait at the deadline
                deadlines.add(deadline, key, pending)
                if rest is not None:
                    with anyio.CancelScope(deadline=deadline):  # a blocked send is a timeout too
                        await rest
                answered = await done  # type: ignore[misc]  # (a future: True answered, False expired)
            else:
                assert isinstance(done, EventDone)
                with anyio.CancelScope(deadline=deadline):  # one scope: the send counts too
                    if rest is not None:
                        await rest
                    await done.wait()
                answered = done.done() and done.result()
        except BaseException:
            self.discard(pending)  # the send failed or the wait was cancelled: nobody waits any more
            raise
        # Whatever ended the wait took the request out of the table already (the answer, the
        # table's timer, fail_all), except a wait that its own cancel scope ended (trio).
        if pending.error is not None:
            raise pending.error
        if not answered:
            if deadlines is None:  # (with the table's timer, its _time_out noted it)
                self.discard(pending)
                self._note_expired(pending)
            raise RequestTimeout(f"{self._owner}: no response to request {key!r} in time", pending.responses)
        if self.observer is not None:
            try:
                self.observer(key, clock() - started)
            except Exception:
                log.exception("%s: latency observer failed", self._owner)
        return pending.responses[0] if expect == 1 else list(pending.responses)

    def fail_all(self, error: BaseException) -> None:
        """End every wait with ``error`` (the connection dropped or closed)."""
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.error = error
            finish(waiting.done, True)


def _safe_final(is_final: Callable[[Message], bool], message: Message) -> bool:
    try:
        return bool(is_final(message))
    except Exception:
        log.warning("is_final raised; treated as not final", exc_info=True)
        return False
