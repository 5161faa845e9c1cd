"""An in-process simulated exchange for your own tests, the demo and ``wirestate sim``.

It serves the JSON dialect of :mod:`engine.sim.dialect` (the reference: every
request, answer and data message with its fields) over in-memory streams
(:meth:`SimExchange.dialer`, for virtual clocks) or real sockets on 127.0.0.1
only (:meth:`SimExchange.listen_tcp`), to many connections at once. Everything
is seeded (``seed``: prices, books, fills, answer delays) and timed by
``anyio.current_time()``, so a test on virtual time is exact and repeats.

What it offers, in short:

- public data, exchange-wide (:mod:`engine.sim.feed`): ``ticker``, ``trades``
  and full-depth ``book`` streams per symbol, each message made once and sent
  byte-identical to every subscriber; ``(channel, symbol, seq)`` identifies a
  message across connections; books come as a snapshot on subscribe, then
  deltas with ``prev_seq``/``seq`` and an OKX-style CRC32 ``checksum``;
  :meth:`SimExchange.book_snapshot` is the REST-like snapshot;
- login signed with HMAC-SHA256 (``credentials``; :mod:`engine.sim.auth`),
  private ``orders`` and ``fills`` channels, ``place_order`` answered after a
  seeded delay (``response_delay``: answers out of order);
- fault controls, now or scripted on the sim's clock (:meth:`call_later`,
  :meth:`call_at`), for every connection or the one at ``index`` (accept
  order among the open ones):

  ====================================  ==================================================
  handshake refused                     :meth:`reject_next` (429/503 with ``retry_after``, 401, ...)
  close frame with a code               :meth:`close_all`, :meth:`close_one` (1001, 1008, 1011, 4000-4999)
  abrupt close (client sees 1006)       :meth:`drop`, :meth:`drop_one` (reset, no close frame)
  half-open                             :meth:`half_open` (nothing flows either way) until :meth:`resume`
  stall                                 :meth:`stall`, :meth:`stall_one` until :meth:`resume`
  subscribe / login rejected            :meth:`reject_subscribes`, :meth:`reject_logins`
  duplicate / out-of-order answers      :meth:`duplicate_responses`, :meth:`set_response_delay`
  sequence gap / bad checksum in a book :meth:`skip_book`, :meth:`corrupt_book`
  malformed JSON / oversize message     :meth:`send_malformed`, :meth:`send_oversize`, :meth:`send_text`
  raw bytes                             :meth:`send_raw`, :meth:`send_raw_next` (right after the 101)
  server ping storm                     :meth:`ping_storm`
  connection lifetime                   ``lifetime=`` / :meth:`set_lifetime` (close N s after the handshake)
  ====================================  ==================================================

- a server-side log: :attr:`transcripts` (every frame in and out of every
  connection, with direction and time; :mod:`engine.sim.wirelog`), the older
  :attr:`log` (what each client sent), :meth:`stats`, :attr:`subscriptions`,
  :attr:`private_subscriptions`, :attr:`accounts`, :meth:`stream_seq`.

In a test of your own (tests/test_sim_usage.py is a complete one)::

    async with SimExchange(seed=5, credentials={"k": "s"}, response_delay=(0, 2)) as sim:
        async with Connection(setup, dialer=sim.dialer()) as conn:   # memory: virtual time
            await conn.wait_for(State.LIVE)
            sim.call_later(10, sim.skip_book, "BTC-USD")   # a gap in 10 s...
            sim.call_later(20, sim.close_all, 1011)         # ...a server restart in 20
            ...
        assert [e for e in sim.transcripts[0] if e.direction == "in"]   # what the client sent, when

Protocol-level pings are answered with pongs (not while stalled); a client's
close frame is answered with the same code, then the server closes the stream.
Only anyio is used (never asyncio or trio directly), so the sim runs on
virtual clocks (looptime, trio's MockClock) as well as on the real one.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskGroup

from engine.sim.auth import Authenticator
from engine.sim.controls import Controls, check_close_code, check_delay
from engine.sim.faults import Faults
from engine.sim.feed import Feed
from engine.sim.orders import Desk
from engine.sim.schedule import Schedule
from engine.sim.service import Venue
from engine.sim.session import Acceptance, Admission, Rejection, Session
from engine.sim.wirelog import Transcript
from transports.base import URL
from transports.memory import memory_pair

__all__ = ["SimExchange", "SimStats"]

log = logging.getLogger("wirestate.sim")

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class SimStats:
    """Counters of a :class:`SimExchange` at one moment."""

    connections: int  # open client connections (handshake accepted, not ended)
    accepted: int  # handshakes accepted so far
    rejected: int  # handshakes answered by a reject_next() status
    data_messages: int  # data messages (public and private) written, over all connections
    made: int = 0  # data messages made by the exchange-wide feed (each once, however many subscribers)
    missed: int = 0  # data messages connections missed while stalled (never re-sent), or dropped as too far behind
    orders: int = 0  # orders accepted
    fills: int = 0  # fills made
    faults: int = 0  # one-shot faults carried out (refused subscribes/logins, duplicates, book gaps/corruptions)


class SimExchange(Controls):
    """An in-process WebSocket exchange with fault controls.

    Use it as an async context manager; every task it starts belongs to its own
    task group, and leaving the block cancels and closes everything::

        async with SimExchange(rate=5.0) as sim:
            conn = Connection(setup, dialer=sim.dialer())   # in memory, virtual time
            ...
            sim.drop()                                       # every client sees a reset

    Options (all keyword-only):

    - ``rate``: data messages per second of each (channel, symbol) stream
      while anybody is subscribed to it (0 means no data);
    - ``symbols``: the known symbols;
    - ``seed``: every random draw (prices, books, fills, answer delays): the
      same seed and the same client behaviour give the same bytes;
    - ``book_depth``: levels per side of each order book (it wanders between
      half of it and 1.2 times it);
    - ``credentials``: API key -> secret; when given, logins must be signed
      (:mod:`engine.sim.auth`); ``login_window``: allowed timestamp skew, s;
    - ``response_delay``: (low, high) seconds each ``place_order`` answer waits
      (a seeded draw per answer), so answers overtake each other;
    - ``lifetime`` / ``lifetime_code``: close each connection that many seconds
      after its handshake with that code (:meth:`set_lifetime`);
    - ``log_limit``: entries each connection's transcript keeps.
    """

    #: How many of the newest connections keep their :attr:`transcripts`.
    transcript_connections: int = 1_000

    def __init__(
        self,
        *,
        rate: float = 10.0,
        symbols: Sequence[str] = ("BTC-USD", "ETH-USD"),
        seed: int = 0,
        book_depth: int = 100,
        credentials: Mapping[str, str] | None = None,
        login_window: float | None = None,
        response_delay: tuple[float, float] = (0.0, 0.0),
        lifetime: float | None = None,
        lifetime_code: int = 1001,
        log_limit: int = 1_000,
    ) -> None:
        Schedule(rate)  # validates the rate
        if isinstance(symbols, str) or not symbols or not all(isinstance(s, str) and s for s in symbols):
            raise ValueError("symbols must be a non-empty sequence of non-empty strings")
        self._rate = float(rate)
        self._symbols = tuple(dict.fromkeys(symbols))
        self._rng = random.Random(seed)
        if not isinstance(book_depth, int) or book_depth < 2:
            raise ValueError(f"book_depth must be an int >= 2, not {book_depth!r}")
        self._feed = Feed(self._symbols, self._rate, random.Random(self._rng.getrandbits(64)), book_depth)
        check_delay(response_delay)
        if lifetime is not None and not lifetime > 0:
            raise ValueError(f"lifetime must be > 0 seconds or None, not {lifetime!r}")
        check_close_code(lifetime_code)
        if not isinstance(log_limit, int) or log_limit < 1:
            raise ValueError(f"log_limit must be an int >= 1, not {log_limit!r}")
        if credentials is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in credentials.items()):
            raise ValueError("credentials must map API keys (str) to secrets (str)")
        self._desk = Desk(random.Random(self._rng.getrandbits(64)), self._task_group)
        self._venue = Venue(
            self._symbols,
            self._feed,
            self._desk,
            Authenticator(dict(credentials) if credentials is not None else None, login_window),
            Faults(),
            (float(response_delay[0]), float(response_delay[1])),
            log_limit,
            lifetime,
            lifetime_code,
        )
        self._tg: TaskGroup | None = None
        self._live: list[Session] = []
        # every accepted session, in order (the server-side log; bounded for long runs)
        self._sessions: deque[Session] = deque(maxlen=10_000)
        self._transcribed: deque[Session] = deque()  # the newest transcript_connections keep their transcripts
        self._ended_faults = 0
        self._rejections: deque[Rejection] = deque()
        self._raw: deque[bytes] = deque()
        self._accepted = 0
        self._rejected = 0
        self._ended_data = 0
        self._ended_missed = 0
        self._changed: anyio.Event | None = None

    # -- lifetime ------------------------------------------------------------

    async def __aenter__(self) -> SimExchange:
        """Open the sim's task group; the sim serves until the block is left."""
        if self._tg is not None:
            raise RuntimeError("this SimExchange is already running")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._feed.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel every task (listeners and connections) and close every stream."""
        tg = self._tg
        if tg is None:
            return None
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("use the SimExchange inside 'async with' before connecting to it")
        return self._tg

    # -- transports ------------------------------------------------------------

    def dialer(self) -> Callable[[URL], Awaitable[ByteStream]]:
        """A dialer over the in-memory transport (no sockets: fine on virtual clocks).

        Each dial makes a :func:`~transports.memory.memory_pair`, serves one end
        in the sim's task group and returns the other. The URL is not looked at:
        every dial reaches this sim.
        """

        async def dial(url: URL) -> ByteStream:
            tg = self._task_group()
            client, server = memory_pair()
            tg.start_soon(self._serve, server)
            return client

        return dial

    async def listen_tcp(self, port: int = 0) -> int:
        """Serve on 127.0.0.1:``port`` (0: any free port) until the sim closes; returns the port."""
        tg = self._task_group()
        listener = await anyio.create_tcp_listener(local_host=_LOOPBACK, local_port=port)
        bound: int = listener.extra(SocketAttribute.local_port)
        tg.start_soon(self._accept_loop, listener, bound)
        log.debug("sim listening on %s:%d", _LOOPBACK, bound)
        return bound

    async def _accept_loop(self, listener: Listener[ByteStream], port: int) -> None:
        async with listener:
            try:
                await listener.serve(self._serve, task_group=self._task_group())
            except OSError as exc:  # e.g. out of file descriptors: stop listening, keep the rest
                log.warning("sim listener on port %d stopped: %s", port, exc)

    async def _serve(self, stream: ByteStream) -> None:
        session = Session(stream, venue=self._venue, admit=self._admit, on_end=self._ended)
        await session.run()

    def _admit(self, session: Session) -> Admission:
        if self._rejections:
            self._rejected += 1
            return self._rejections.popleft()
        self._accepted += 1
        self._venue.close_timeout = self.close_timeout
        self._live.append(session)
        self._sessions.append(session)
        self._transcribed.append(session)
        if len(self._transcribed) > self.transcript_connections:
            self._transcribed.popleft().transcript.clear()  # bounded memory on long runs
        self._notify()
        rng = random.Random(self._rng.getrandbits(64))
        return Acceptance(rng, self._raw.popleft() if self._raw else b"")

    def _ended(self, session: Session) -> None:
        self._ended_data += session.data_sent
        self._ended_missed += session.missed + session.overflowed
        self._ended_faults += session.book_faults
        if session in self._live:
            self._live.remove(session)
            self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- views -------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Currently open client connections (handshake accepted, not yet ended)."""
        return len(self._live)

    @property
    def log(self) -> list[list[tuple[float, str]]]:
        """What each accepted connection sent, in accept order: ``[(time, text), ...]`` per connection."""
        return [session.received for session in self._sessions]

    @property
    def transcripts(self) -> list[Transcript]:
        """Every accepted connection's log of frames in and out, in accept order (see :mod:`engine.sim.wirelog`).

        Each keeps its newest ``log_limit`` entries; only the newest
        :attr:`transcript_connections` connections keep theirs (older ones are
        emptied, their entries counted in ``forgotten``), so a long run stays
        bounded.
        """
        return [session.transcript for session in self._sessions]

    @property
    def live_transcripts(self) -> list[Transcript]:
        """The open connections' transcripts, in accept order (indexes as for ``drop_one`` etc.)."""
        return [session.transcript for session in self._live]

    @property
    def accepted(self) -> int:
        """Handshakes accepted so far."""
        return self._accepted

    @property
    def rejected(self) -> int:
        """Handshakes answered with a :meth:`reject_next` status so far."""
        return self._rejected

    @property
    def symbols(self) -> tuple[str, ...]:
        """The known symbols."""
        return self._symbols

    @property
    def subscriptions(self) -> list[frozenset[tuple[str, str]]]:
        """Per open connection, in accept order: its ``(channel, symbol)`` subscriptions."""
        return [session.subscriptions for session in self._live]

    @property
    def authenticated(self) -> list[bool]:
        """Per open connection, in accept order: whether it logged in successfully."""
        return [session.authenticated for session in self._live]

    @property
    def private_subscriptions(self) -> list[frozenset[tuple[str, str]]]:
        """Per open connection, in accept order: its private ``(channel, symbol)`` subscriptions."""
        return [session.private_subscriptions for session in self._live]

    @property
    def accounts(self) -> list[str | None]:
        """Per open connection, in accept order: the API key it logged in with (None: not logged in)."""
        return [session.account for session in self._live]

    def stats(self) -> SimStats:
        """The counters as one snapshot."""
        data = self._ended_data + sum(session.data_sent for session in self._live)
        missed = self._ended_missed + sum(session.missed + session.overflowed for session in self._live)
        return SimStats(
            len(self._live),
            self._accepted,
            self._rejected,
            data,
            self._feed.made,
            missed,
            self._desk.orders,
            self._desk.fills,
            self._venue.faults.fired + self._ended_faults + sum(session.book_faults for session in self._live),
        )

    def book_snapshot(self, symbol: str, depth: int | None = None) -> dict[str, Any]:
        """``symbol``'s current order book, as a REST endpoint would return it (JSON-able).

        The same shape as the ``book`` channel's snapshot message (``"type":
        "snapshot"``, ``bids``/``asks`` best first as ``[price, size]`` strings,
        ``seq`` of the last update it includes, ``checksum`` of its best 25
        levels, ``ts``); ``depth`` limits the levels per side. Apply the deltas
        whose ``seq`` is greater. ``KeyError`` for an unknown symbol.
        """
        if symbol not in self._symbols:
            raise KeyError(symbol)
        return self._feed.book_snapshot(symbol, anyio.current_time(), depth)

    def stream_seq(self, channel: str, symbol: str) -> int:
        """The last exchange-wide ``seq`` of (channel, symbol)'s stream; 0 before its first message."""
        return self._feed.stream_seq(channel, symbol)

    async def wait_connections(self, count: int) -> None:
        """Wait until exactly ``count`` connections are open (bound it with ``anyio.fail_after``)."""
        while len(self._live) != count:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
