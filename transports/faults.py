"""Fault injection at the transport: a :class:`~anyio.abc.ByteStream` wrapper driven by a schedule.

Wrap a dialer and every stream it opens misbehaves on cue::

    schedule = Scripted([Step(At(5.0), Reset())])          # 5 s after the first dial
    conn = Connection(setup, dialer=wrap(sim.dialer(), schedule))

Faults (frozen values; what the client sees):

- :class:`Reset`: the next receive and send raise ``BrokenResourceError``; the
  peer's stream is aborted too (it sees a reset).
- :class:`HalfOpen`: the socket stays open and nothing flows either way:
  receives block (inbound bytes are swallowed and counted), sends vanish
  (counted).
- :class:`Stall`: receives pause for ``duration`` seconds (bytes wait, none lost).
- :class:`SlowReader`: each receive waits ``delay`` and returns at most ``max_bytes``.
- :class:`Split`: every receive returns one byte (or, ``random=True``, a
  random cut of what is buffered).
- :class:`PartialWrites`: each send goes out in pieces of ``max_bytes`` with
  ``delay`` between them. A stream whose schedule can do this declares
  ``atomic_send=False`` in its :class:`~transports.base.Capabilities`, so the
  engine knows a cancelled send may leave part of a frame on the wire.

When (triggers, per dial): :class:`At` seconds after the dial,
:class:`AfterBytes` inbound bytes handed to the caller, :class:`AfterFrames`
inbound WebSocket frames handed to the caller (the stream is cut exactly
there: a ``Reset`` after 3 frames delivers 3 whole frames, then fails).

Schedules: :class:`Scripted` (a list of :class:`Step`, each for one dial
number or every dial) or :class:`Seeded` (faults from a menu at random gaps,
from an injected :class:`random.Random`, so a seed replays exactly). Both
keep :attr:`Schedule.fired` (what fired when, on which dial) and one
:class:`FaultStats` per dial (what the faults swallowed: nothing is lost
without a count).

Time is the injected clock (``anyio.current_time`` by default, which is the
virtual clock in tests); waits are anyio sleeps and cancel-scope deadlines.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream

from transports.base import URL, Capabilities, Dialer, capabilities_of
from transports.tap import Frame, StreamParser

__all__ = [
    "After",
    "AfterBytes",
    "AfterFrames",
    "At",
    "Fault",
    "FaultStats",
    "FaultyStream",
    "Fired",
    "HalfOpen",
    "PartialWrites",
    "Reset",
    "Schedule",
    "Scripted",
    "Seeded",
    "SlowReader",
    "Split",
    "Stall",
    "Step",
    "Trigger",
    "wrap",
]


_F = TypeVar("_F")

# -- faults ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reset:
    """A TCP reset: the next receive and send raise ``BrokenResourceError``."""


@dataclass(frozen=True, slots=True)
class HalfOpen:
    """The peer is gone without a word: receives block, sends vanish, until the stream is closed."""


@dataclass(frozen=True, slots=True)
class Stall:
    """Receives pause for ``duration`` seconds; what arrives meanwhile waits (nothing is lost)."""

    duration: float

    def __post_init__(self) -> None:
        _check_seconds("Stall.duration", self.duration)


@dataclass(frozen=True, slots=True)
class SlowReader:
    """Each receive waits ``delay`` seconds, then returns at most ``max_bytes`` (for ``duration``, None: for good)."""

    max_bytes: int = 1
    delay: float = 0.01
    duration: float | None = None

    def __post_init__(self) -> None:
        _check_count("SlowReader.max_bytes", self.max_bytes)
        _check_seconds("SlowReader.delay", self.delay, zero=True)
        _check_duration("SlowReader.duration", self.duration)


@dataclass(frozen=True, slots=True)
class Split:
    """Receives return one byte at a time, or (``random=True``) a random cut of what is buffered."""

    random: bool = False
    duration: float | None = None

    def __post_init__(self) -> None:
        _check_duration("Split.duration", self.duration)


@dataclass(frozen=True, slots=True)
class PartialWrites:
    """Sends go out in pieces of at most ``max_bytes``, ``delay`` seconds apart."""

    max_bytes: int = 1
    delay: float = 0.0
    duration: float | None = None

    def __post_init__(self) -> None:
        _check_count("PartialWrites.max_bytes", self.max_bytes)
        _check_seconds("PartialWrites.delay", self.delay, zero=True)
        _check_duration("PartialWrites.duration", self.duration)


Fault = Reset | HalfOpen | Stall | SlowReader | Split | PartialWrites
_FAULTS = (Reset, HalfOpen, Stall, SlowReader, Split, PartialWrites)


def _check_seconds(name: str, value: float, *, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be {'>= 0' if zero else '> 0'}, not {value!r}")


def _check_duration(name: str, value: float | None) -> None:
    if value is not None:
        _check_seconds(name, value)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


# -- triggers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class At:
    """``seconds`` after the dial returned (the injected clock)."""

    seconds: float

    def __post_init__(self) -> None:
        _check_seconds("At.seconds", self.seconds, zero=True)


@dataclass(frozen=True, slots=True)
class AfterBytes:
    """Once ``count`` inbound bytes (the handshake answer included) were handed to the caller."""

    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"AfterBytes.count must be an integer >= 0, not {self.count!r}")


@dataclass(frozen=True, slots=True)
class AfterFrames:
    """Once ``count`` inbound WebSocket frames (after the handshake) were handed to the caller."""

    count: int

    def __post_init__(self) -> None:
        _check_count("AfterFrames.count", self.count)


Trigger = At | AfterBytes | AfterFrames
After = AfterFrames  # the common case reads well: Step(After(3), Reset())


@dataclass(frozen=True, slots=True)
class Step:
    """Inject ``fault`` when ``when`` holds, on dial number ``dial`` (0: the first; None: every dial)."""

    when: Trigger
    fault: Fault
    dial: int | None = 0

    def __post_init__(self) -> None:
        if not isinstance(self.when, (At, AfterBytes, AfterFrames)):
            raise TypeError(f"Step.when must be At, AfterBytes or AfterFrames, not {type(self.when).__name__}")
        if not isinstance(self.fault, _FAULTS):
            raise TypeError(f"Step.fault must be a fault (Reset, HalfOpen, ...), not {type(self.fault).__name__}")
        if self.dial is not None and (isinstance(self.dial, bool) or not isinstance(self.dial, int) or self.dial < 0):
            raise ValueError(f"Step.dial must be an integer >= 0 or None, not {self.dial!r}")


@dataclass(frozen=True, slots=True)
class Fired:
    """A fault that took effect: on which dial, at what clock time."""

    dial: int
    at: float
    fault: Fault


@dataclass(slots=True)
class FaultStats:
    """What one faulty stream did to the bytes (per dial)."""

    dial: int
    delivered_bytes: int = 0  # inbound bytes handed to the caller
    delivered_frames: int = 0  # inbound frames handed to the caller (complete)
    swallowed_bytes: int = 0  # inbound bytes a half-open stream (or a reset) discarded
    swallowed_frames: int = 0  # complete inbound frames among them
    vanished_bytes: int = 0  # outbound bytes a half-open stream dropped
    vanished_sends: int = 0  # outbound send() calls a half-open stream dropped
    split_sends: int = 0  # sends that went out in pieces


# -- schedules ----------------------------------------------------------------------


class Schedule:
    """Base of :class:`Scripted` and :class:`Seeded`: what each dial gets, and what happened."""

    #: how many of :attr:`fired` and :attr:`stats` are kept (the newest), so long runs stay bounded
    keep = 10_000

    def __init__(self) -> None:
        self._dials = 0
        #: the faults that took effect, in order (the newest :attr:`keep`)
        self.fired: deque[Fired] = deque(maxlen=self.keep)
        #: one per dial, in dial order (the newest :attr:`keep`; ``FaultStats.dial`` says which)
        self.stats: deque[FaultStats] = deque(maxlen=self.keep)

    @property
    def dials(self) -> int:
        """Streams opened so far."""
        return self._dials

    @property
    def may_split_writes(self) -> bool:
        """True when a stream of this schedule may write a send in pieces."""
        raise NotImplementedError

    def steps(self, dial: int) -> Iterator[tuple[Trigger, Fault]]:
        """The steps of dial number ``dial``; time triggers must come in time order."""
        raise NotImplementedError

    def rng(self, dial: int) -> random.Random:
        """The random source for ``Split(random=True)`` on dial number ``dial``."""
        return random.Random(dial)

    def open(self) -> tuple[int, FaultStats]:
        """Number the next dial and make its stats (the wrapper calls this)."""
        dial = self._dials
        self._dials += 1
        stats = FaultStats(dial)
        self.stats.append(stats)
        return dial, stats


class Scripted(Schedule):
    """Faults at fixed points: each :class:`Step` for its dial (or every dial)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        super().__init__()
        steps = tuple(steps)
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"Scripted takes Step values, not {type(step).__name__}")
        self._steps = steps

    @property
    def may_split_writes(self) -> bool:
        return any(isinstance(step.fault, PartialWrites) for step in self._steps)

    def steps(self, dial: int) -> Iterator[tuple[Trigger, Fault]]:
        mine = [step for step in self._steps if step.dial is None or step.dial == dial]
        timed = sorted((s for s in mine if isinstance(s.when, At)), key=lambda s: s.when.seconds)  # type: ignore[union-attr]
        untimed = [s for s in mine if not isinstance(s.when, At)]
        return iter([(s.when, s.fault) for s in untimed + timed])


class Seeded(Schedule):
    """Faults drawn from ``menu`` at exponential gaps (mean ``mean_gap`` seconds), from ``rng``.

    Each dial gets its own generator seeded from ``rng`` in dial order, so the
    same seed and the same dial order give the same faults at the same times.
    ``per_dial`` bounds the faults per dial (None: no bound).
    """

    def __init__(
        self, rng: random.Random, menu: Sequence[Fault], *, mean_gap: float, per_dial: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(rng, random.Random):
            raise TypeError(f"Seeded needs a random.Random, not {type(rng).__name__}")
        menu = tuple(menu)
        if not menu or not all(isinstance(fault, _FAULTS) for fault in menu):
            raise ValueError("Seeded needs a non-empty menu of faults (Reset(), Stall(2.0), ...)")
        _check_seconds("Seeded.mean_gap", mean_gap)
        if per_dial is not None:
            _check_count("Seeded.per_dial", per_dial)
        self._rng = rng
        self._menu = menu
        self._mean_gap = float(mean_gap)
        self._per_dial = per_dial
        self._dial_rngs: dict[int, random.Random] = {}

    @property
    def may_split_writes(self) -> bool:
        return any(isinstance(fault, PartialWrites) for fault in self._menu)

    def rng(self, dial: int) -> random.Random:
        if dial not in self._dial_rngs:
            self._dial_rngs.clear()  # only the current dial's is needed: no growth over long runs
            self._dial_rngs[dial] = random.Random(self._rng.getrandbits(64))
        return self._dial_rngs[dial]

    def steps(self, dial: int) -> Iterator[tuple[Trigger, Fault]]:
        rng = self.rng(dial)
        count = 0
        at = 0.0
        while self._per_dial is None or count < self._per_dial:
            at += rng.expovariate(1.0 / self._mean_gap)
            count += 1
            yield At(at), rng.choice(self._menu)


# -- the stream ---------------------------------------------------------------------


class FaultyStream(ByteStream):
    """A byte stream that passes through ``inner`` and injects the faults of one dial.

    Not for direct use: :func:`wrap` makes one per dial. Triggers are checked
    whenever the caller receives or sends; a time trigger also wakes a
    receive that is waiting, so a reset reaches a reader blocked on a quiet
    peer at the scheduled time.
    """

    def __init__(
        self,
        inner: ByteStream,
        schedule: Schedule,
        *,
        clock: Callable[[], float],
    ) -> None:
        dial, stats = schedule.open()
        self._inner = inner
        self._schedule = schedule
        self._clock = clock
        # the latest deadline a wait of ours ran to: a virtual clock may read a hair
        # before it afterwards (rounding), and the step due then must still fire
        self._reached = -math.inf
        self._dial = dial
        self.stats = stats
        self._rng = schedule.rng(dial)
        self._steps = schedule.steps(dial)
        self._started = clock()
        inner_caps = capabilities_of(inner)
        #: what this stream promises: the inner stream's, minus atomic sends if the schedule splits them
        self.capabilities = Capabilities(
            atomic_send=inner_caps.atomic_send and not schedule.may_split_writes,
            instant_close=inner_caps.instant_close,
        )
        # pending steps: untimed ones (bytes/frames) are all kept; timed ones one at a time, in order
        self._waiting: list[tuple[Trigger, Fault]] = []
        self._next_timed: tuple[float, Fault] | None = None
        self._pull_steps()
        self._parser = StreamParser()
        self._frame_ends: deque[int] = deque()  # fetched frames not yet delivered: their end offsets
        self._frames_seen = 0  # complete frames fetched (delivered or not)
        self._buffer = b""  # fetched, not yet delivered
        self._fetched = 0
        # active faults
        self._broken = False
        self._closed = False
        self._half_open = False
        self._stall_until = -math.inf
        self._slow: tuple[SlowReader, float] | None = None  # (fault, until)
        self._slow_ready: float | None = None  # when the current slow receive may return
        self._split: tuple[Split, float] | None = None
        self._partial: tuple[PartialWrites, float] | None = None

    # -- schedule bookkeeping -------------------------------------------------

    def _now(self) -> float:
        return max(self._clock(), self._reached)

    async def _sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)
        self._reached = max(self._reached, deadline)

    def _pull_steps(self) -> None:
        """Take untimed steps as they come, up to (and holding) the next timed one."""
        while self._next_timed is None:
            step = next(self._steps, None)
            if step is None:
                return
            when, fault = step
            if isinstance(when, At):
                self._next_timed = (self._started + when.seconds, fault)
            else:
                self._waiting.append(step)

    def _byte_goal(self, when: Trigger) -> int | None:
        """The inbound offset where an untimed trigger holds, if known yet."""
        if isinstance(when, AfterBytes):
            return when.count
        assert isinstance(when, AfterFrames)
        missing = when.count - self.stats.delivered_frames
        if missing <= 0:
            return self.stats.delivered_bytes
        if missing <= len(self._frame_ends):
            return self._frame_ends[missing - 1]
        return None

    def _fire_due(self) -> None:
        now = self._now()
        delivered = self.stats.delivered_bytes
        keep: list[tuple[Trigger, Fault]] = []
        for when, fault in self._waiting:
            goal = self._byte_goal(when)
            if goal is not None and goal <= delivered:
                self._apply(fault, now)
            else:
                keep.append((when, fault))
        self._waiting = keep
        while self._next_timed is not None and self._next_timed[0] <= now:
            fault = self._next_timed[1]
            self._next_timed = None
            self._apply(fault, now)
            self._pull_steps()

    def _apply(self, fault: Fault, now: float) -> None:
        self._schedule.fired.append(Fired(self._dial, now, fault))
        if isinstance(fault, Reset):
            if not self._broken:
                self._broken = True
                self._swallow(self._buffer)
                self._buffer = b""
                abort = getattr(self._inner, "abort", None)
                if callable(abort):
                    abort()  # the peer sees a reset too
        elif isinstance(fault, HalfOpen):
            self._half_open = True
            self._swallow(self._buffer)
            self._buffer = b""
        elif isinstance(fault, Stall):
            self._stall_until = max(self._stall_until, now + fault.duration)
        elif isinstance(fault, SlowReader):
            self._slow = (fault, _until(now, fault.duration))
        elif isinstance(fault, Split):
            self._split = (fault, _until(now, fault.duration))
        else:
            self._partial = (fault, _until(now, fault.duration))

    def _wake_at(self) -> float:
        """When the next timed step (or the end of a stall) is due."""
        wake = self._next_timed[0] if self._next_timed is not None else math.inf
        if self._stall_until > self._now():
            wake = min(wake, self._stall_until)
        return wake

    def _swallow(self, data: bytes) -> None:
        """Count fetched inbound bytes that will never be delivered."""
        if not data:
            return
        self.stats.swallowed_bytes += len(data)
        self.stats.swallowed_frames += len(self._frame_ends)
        self._frame_ends.clear()

    def _fetched_bytes(self, data: bytes) -> None:
        self._fetched += len(data)
        for item in self._parser.feed(data):
            if isinstance(item, Frame):
                self._frames_seen += 1
                self._frame_ends.append(item.end)

    # -- ByteStream -------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            self._fire_due()
            if self._closed:
                raise anyio.ClosedResourceError
            if self._broken:
                raise anyio.BrokenResourceError("connection reset (injected fault)")
            wake = self._wake_at()
            now = self._now()
            if self._half_open:
                await self._black_hole(wake)
                continue
            if self._stall_until > now:
                await self._sleep_until(min(self._stall_until, wake))
                continue
            slow = _active(self._slow, now)
            if slow is not None:
                if self._slow_ready is None:
                    self._slow_ready = now + slow.delay
                if self._slow_ready > now:
                    await self._sleep_until(min(self._slow_ready, wake))
                    continue
            if not self._buffer:
                data = b""
                with anyio.CancelScope(deadline=wake) as scope:
                    data = await self._inner.receive(max(max_bytes, 65536))
                if scope.cancelled_caught:
                    self._reached = max(self._reached, wake)
                if data:
                    self._fetched_bytes(data)
                    self._buffer = data
                continue
            return self._deliver(max_bytes, slow, now)

    def _deliver(self, max_bytes: int, slow: SlowReader | None, now: float) -> bytes:
        buffer = self._buffer
        limit = min(max_bytes, len(buffer))
        if slow is not None:
            limit = min(limit, slow.max_bytes)
            self._slow_ready = None
        split = _active(self._split, now)
        if split is not None and limit > 1:
            limit = self._rng.randint(1, limit) if split.random else 1
        delivered = self.stats.delivered_bytes
        for when, _ in self._waiting:  # stop exactly where an untimed trigger holds
            goal = self._byte_goal(when)
            if goal is not None and goal > delivered:
                limit = min(limit, goal - delivered)
        piece, self._buffer = buffer[:limit], buffer[limit:]
        delivered += len(piece)
        self.stats.delivered_bytes = delivered
        ends = self._frame_ends
        while ends and ends[0] <= delivered:
            ends.popleft()
            self.stats.delivered_frames += 1
        self._fire_due()  # a trigger reached by this piece acts from the next call on
        return piece

    async def _black_hole(self, wake: float) -> None:
        """Half-open: swallow whatever arrives until ``wake`` (or forever)."""
        with anyio.CancelScope(deadline=wake) as scope:
            while True:
                try:
                    data = await self._inner.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    await anyio.sleep_forever()  # the peer is gone: nobody tells the client
                self._fetched_bytes(data)
                self._swallow(data)
        if scope.cancelled_caught:
            self._reached = max(self._reached, wake)

    async def send(self, item: bytes) -> None:
        self._fire_due()
        if self._closed:
            raise anyio.ClosedResourceError
        if self._broken:
            raise anyio.BrokenResourceError("connection reset (injected fault)")
        if self._half_open:
            self.stats.vanished_bytes += len(item)
            self.stats.vanished_sends += 1
            await anyio.lowlevel.checkpoint()
            return
        partial = _active(self._partial, self._now())
        if partial is None or len(item) <= partial.max_bytes:
            await self._inner.send(item)
            return
        self.stats.split_sends += 1
        step = partial.max_bytes
        for start in range(0, len(item), step):
            if start and partial.delay:
                await anyio.sleep(partial.delay)
            await self._inner.send(item[start : start + step])

    async def send_eof(self) -> None:
        if self._broken or self._half_open:
            return
        await self._inner.send_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._inner.aclose()

    def abort(self) -> None:
        """Reset, as the memory and TCP streams offer (tests call it on the client end)."""
        self._closed = True
        abort = getattr(self._inner, "abort", None)
        if callable(abort):
            abort()


def _until(now: float, duration: float | None) -> float:
    return math.inf if duration is None else now + duration


def _active(slot: tuple[_F, float] | None, now: float) -> _F | None:
    if slot is None or slot[1] <= now:
        return None
    return slot[0]


def wrap(dialer: Dialer, schedule: Schedule, *, clock: Callable[[], float] | None = None) -> Dialer:
    """A dialer whose streams inject ``schedule``'s faults (dial numbers count from 0).

    ``clock`` (seconds, the event loop's time base) defaults to
    ``anyio.current_time``; triggers and waits use it.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"wrap needs a Schedule (Scripted or Seeded), not {type(schedule).__name__}")
    read_clock = clock if clock is not None else anyio.current_time

    async def dial(url: URL) -> ByteStream:
        inner = await dialer(url)
        return FaultyStream(inner, schedule, clock=read_clock)

    return dial
