"""Seeded simulation: a Manager against the simulated exchange under seeded faults, for hours of virtual time.

Like a hypothesis stateful test for the whole stack: :func:`simulate` runs a
:class:`~engine.manager.Manager` (sharded public connections, optionally a
rotating one) against :class:`~engine.sim.SimExchange` over the memory
transport, and every ``step`` virtual seconds it may inject a fault (drawn
from a :class:`random.Random` seeded with :attr:`Scenario.seed`: resets,
stalls, refused handshakes with Retry-After, close codes, subscription
churn, rotations), then checks the invariants:

- no connection stays out of ``live`` longer than :attr:`Scenario.down_bound`;
- once healed (every connection live, every subscription acked), what the
  exchange has subscribed is exactly what the ledger wants, on as many
  sockets as the manager has connections;
- no message is delivered twice (the simulator numbers each stream
  exchange-wide), and every gap in a stream falls where that stream's
  connection was down or stalled (a loss the client can count, never a
  silent one);
- no request pending past its deadline;
- no task growth: the number of tasks once healed stays within a constant
  of the first healed count. (Memory is not checked step by step: the
  simulator's own bounded logs grow by design, and tracemalloc would cost
  more than the run.)

A violation raises :class:`InvariantViolation` naming the seed, the virtual
time and the rerun command. Everything random is seeded and time is virtual,
so a seed replays exactly (on the same backend)::

    report = await simulate(Scenario(seed=7, hours=50))

``wirestate simulate --seed 7 --hours 50`` runs one from the command line.
"""

from __future__ import annotations

import random
import sys
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import attrs
import orjson

from engine.config import ConnectionSetup, WebsocketSetup
from engine.errors import WirestateError
from engine.events import StateChanged
from engine.manager import Manager
from engine.policy import Backoff
from engine.sim import SimExchange
from engine.subscriptions import Subscription
from machines.connection import State
from machines.subscription import SubState

__all__ = ["Invariant", "InvariantViolation", "Report", "Scenario", "run_simulation", "simulate"]

_FAULTS = ("drop", "stall", "refuse", "close", "churn", "rotate")


@attrs.frozen
class Scenario:
    """One seeded run. Times are virtual seconds; rates per stream per second."""

    seed: int
    hours: float = 10.0
    step: float = 600.0  # invariants are checked this often
    fault_every: float = 3600.0  # mean spacing of faults (exponential, at least down_bound apart)
    symbols: tuple[str, ...] = ("BTC-USD", "ETH-USD", "SOL-USD")
    channels: tuple[str, ...] = ("ticker", "trades")
    per_connection: int = 2  # subscriptions per connection (half go to a setup that also rotates)
    rate: float = 1 / 1000  # data messages per second per stream (sparse: hours must stay cheap)
    traffic_timeout: float = 900.0
    retry_after: int = 60  # the longest Retry-After a refused handshake asks for
    faults: tuple[str, ...] = _FAULTS

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.faults) - set(_FAULTS))
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {', '.join(_FAULTS)}")
        if not self.hours > 0 or not self.step > 0 or not self.fault_every > 0:
            raise ValueError("hours, step and fault_every must be positive")

    @property
    def down_bound(self) -> float:
        """The longest a connection may be out of ``live`` after one fault: detection
        (silence, then the pong grace), the server's Retry-After, the backoff cap, dial
        and setup, rotation's overlap, and slack."""
        return self.traffic_timeout + 10.0 + self.retry_after + 30.0 + 10.0 + 30.0 + 15.0 + 60.0


@attrs.define
class Report:
    """What one run did (equal for equal seeds on one backend)."""

    seed: int
    hours: float
    steps: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)
    delivered: int = 0
    gaps: int = 0  # messages the client knows it missed (counted, each inside a down or stalled spell)
    transitions: int = 0
    sessions: int = 0
    max_down: float = 0.0
    trail: int = 0  # a CRC of every state change, for "the same seed replays exactly"

    def __str__(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"seed {self.seed}: {self.hours:g} h, {self.steps} steps, faults: {faults or 'none'}; "
            f"{self.delivered} messages, {self.gaps} missed while down (counted), {self.sessions} sessions, "
            f"{self.transitions} state changes, longest outage {self.max_down:.0f} s, trail {self.trail:08x}"
        )


class InvariantViolation(WirestateError):
    """An invariant failed; the message names the seed and how to rerun it."""

    def __init__(self, scenario: Scenario, at: float, what: str, recent: Iterable[str] = ()) -> None:
        history = "".join(f"\n  {line}" for line in recent)
        super().__init__(
            f"seed {scenario.seed}: invariant violated at {at:.0f} s virtual: {what}\n"
            f"rerun: wirestate simulate --seed {scenario.seed} --hours {scenario.hours:g}"
            + (f"\nwhat happened last:{history}" if history else "")
        )
        self.seed = scenario.seed
        self.at = at


class _Streams:
    """Per stream: the last exchange-wide seq delivered; and the outages a gap may fall in."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], tuple[int, float]] = {}  # stream -> (seq, exchange time)
        self.delivered = 0
        self.gaps = 0
        self.violations: list[str] = []
        self.outages: dict[str, list[list[float]]] = {}  # connection id -> [[down, back], ...]
        self.stalls: list[list[float]] = []  # [[stalled, resumed], ...]

    def forget(self, channel: str, symbol: str) -> None:
        self.last.pop((channel, symbol), None)  # unsubscribed: the next one starts afresh

    def down(self, conn_id: str, at: float) -> None:
        spells = self.outages.setdefault(conn_id, [])
        if not spells or spells[-1][1] != float("inf"):
            spells.append([at, float("inf")])

    def up(self, conn_id: str, at: float) -> None:
        spells = self.outages.get(conn_id)
        if spells and spells[-1][1] == float("inf"):
            spells[-1][1] = at

    def _explained(self, conn_id: str, after: float, before: float) -> bool:
        spells = [*self.outages.get(conn_id, ()), *self.stalls]
        return any(start <= before and end >= after for start, end in spells)

    def seen(self, conn_id: str, data: dict[str, Any], sent_at: float) -> None:
        key = (data["channel"], data["symbol"])
        seq = data["seq"]
        last = self.last.get(key)
        if last is not None:
            if seq <= last[0]:
                self.violations.append(f"{key[0]}:{key[1]} seq {seq} delivered after {last[0]} (twice or out of order)")
                return
            if seq > last[0] + 1:
                if not self._explained(conn_id, last[1], sent_at):
                    self.violations.append(
                        f"{key[0]}:{key[1]} on {conn_id}: seq {last[0]} -> {seq} ({last[1]:.0f} s -> {sent_at:.0f} s)"
                        " with no outage or stall to explain it"
                    )
                self.gaps += seq - last[0] - 1
        self.last[key] = (seq, sent_at)
        self.delivered += 1


def _subscriber(timeout: float) -> Callable[..., Any]:
    async def subscribe(conn: Any, subs: list[Subscription]) -> None:
        for sub in subs:
            rid = conn.next_id()
            message = {"op": "subscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}
            reply = orjson.loads(await conn.request(message, key=rid, timeout=timeout))
            if reply.get("event") == "error":
                raise WirestateError(f"{sub}: {reply.get('message', 'rejected')}")

    return subscribe


async def _unsubscribe(conn: Any, subs: list[Subscription]) -> None:
    for sub in subs:
        rid = conn.next_id()
        await conn.request({"op": "unsubscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}, key=rid)


def _task_count() -> int:
    """Tasks alive now, through each backend's public API."""
    if "trio" in sys.modules:
        import trio

        try:
            root = trio.lowlevel.current_root_task()
        except RuntimeError:
            root = None
        if root is not None:
            count, stack = 0, [root]
            while stack:
                task = stack.pop()
                count += 1
                for nursery in task.child_nurseries:
                    stack.extend(nursery.child_tasks)
            return count
    import asyncio

    return len(asyncio.all_tasks())


#: a user's own invariant: ``(manager, sim) -> None`` when it holds, else what is wrong
Invariant = Callable[[Manager, SimExchange], "str | None"]


async def simulate(scenario: Scenario, *, invariants: Iterable[Invariant] = ()) -> Report:
    """Run ``scenario`` on virtual time (see the module doc); raises :class:`InvariantViolation`.

    ``invariants`` are your own checks, run after every step with the
    built-in ones (a text return value is a violation).
    """
    try:
        return await _simulate(scenario, tuple(invariants))
    except BaseExceptionGroup as group:  # (raised inside the manager's and the simulator's task groups)
        violations = group.subgroup(InvariantViolation)
        if violations is None:
            raise
        first: BaseException = violations
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _simulate(scenario: Scenario, invariants: tuple[Invariant, ...]) -> Report:
    rng = random.Random(scenario.seed)
    report = Report(scenario.seed, scenario.hours)
    streams = _Streams()
    down_since: dict[str, float] = {}
    trail = 0
    recent: deque[str] = deque(maxlen=30)  # the last faults and state changes, for a violation's message

    def state_of(connection: str) -> State:
        """The managed connection's state now (live when it is gone: retired is no outage)."""
        return next((r.state for r in manager.connections() if r.id == connection), State.LIVE)

    def hear(event: StateChanged) -> None:
        nonlocal trail
        report.transitions += 1
        recent.append(str(event))
        trail = zlib.crc32(f"{event.connection} {event.source.value} {event.dest.value} {event.trigger} {event.at:.6f}".encode(), trail)
        if event.dest is State.LIVE:
            since = down_since.pop(event.connection, None)
            if since is not None:
                report.max_down = max(report.max_down, event.at - since)
            report.sessions += 1
        elif event.source is State.LIVE and state_of(event.connection) is not State.LIVE:
            # (retired, or a rotated-out socket closing while its replacement carries the id: no outage)
            down_since.setdefault(event.connection, event.at)
        if event.trigger in ("lost", "close"):
            streams.down(event.connection, event.at)  # what it misses until it is back is a counted loss
        elif event.trigger == "subscribed":
            streams.up(event.connection, event.at)

    def handle(conn: Any, message: str | bytes) -> None:
        data = orjson.loads(message)
        if "seq" in data and "symbol" in data:
            streams.seen(conn.id, data, float(data.get("ts", anyio.current_time())))

    everything = [Subscription(c, s) for c in scenario.channels for s in scenario.symbols]
    async with SimExchange(rate=scenario.rate, symbols=scenario.symbols, seed=rng.getrandbits(32)) as sim:
        manager = Manager(
            WebsocketSetup(
                exchange="sim",
                use_multi_connection_management=True,
                max_subscriptions_per_connection=scenario.per_connection,
                traffic_timeout=scenario.traffic_timeout,
                connection_monitor_interval=scenario.step,
            ),
            dialer=sim.dialer(),
            rng=random.Random(rng.getrandbits(32)),
        )
        common: dict[str, Any] = dict(
            handler=handle,
            subscriber=_subscriber(10.0),
            unsubscriber=_unsubscribe,
            backoff=Backoff(initial=1.0, maximum=30.0, jitter=True),
            retry_after_cap=float(scenario.retry_after),
            healthy_after=60.0,
        )
        manager.add_connection(ConnectionSetup(url="ws://sim.test/public", **common), name="public")
        manager.add_connection(
            ConnectionSetup(url="ws://sim.test/rotating", rotate_after=6 * 3600.0, rotate_overlap=5.0, **common), name="rot"
        )
        manager.on_state_change(hear)
        end = anyio.current_time() + scenario.hours * 3600.0
        async with manager:
            wanted = set(range(len(everything)))
            half = len(everything) // 2
            await manager.subscribe([everything[i] for i in range(half)], group="public")
            await manager.subscribe([everything[i] for i in range(half, len(everything))], group="rot")
            group_of = {i: ("public" if i < half else "rot") for i in range(len(everything))}
            next_fault = anyio.current_time() + scenario.down_bound
            first_tasks: int | None = None
            resume_at: float | None = None
            while anyio.current_time() < end:
                await anyio.sleep(scenario.step)
                now = anyio.current_time()
                report.steps += 1
                if resume_at is not None and now >= resume_at:
                    sim.resume()
                    streams.stalls[-1][1] = now
                    resume_at = None
                if now >= next_fault and resume_at is None:
                    fault = rng.choice(scenario.faults)
                    report.faults[fault] += 1
                    recent.append(f"[{now:10.3f}] fault: {fault}")
                    await _inject(fault, rng, sim, manager, scenario, wanted, everything, group_of, streams)
                    if fault == "stall":
                        streams.stalls.append([now, float("inf")])
                        resume_at = now + rng.uniform(5.0, scenario.traffic_timeout * 2)
                    next_fault = now + scenario.down_bound + rng.expovariate(1.0 / scenario.fault_every)
                    continue  # (its effects land in the next few virtual moments: check at the next step)
                # -- the invariants --
                if streams.violations:
                    raise InvariantViolation(scenario, now, recent=recent, what=streams.violations[0])
                for cid, since in down_since.items():
                    report.max_down = max(report.max_down, now - since)
                    if now - since > scenario.down_bound:
                        raise InvariantViolation(scenario, now, recent=recent, what=f"{cid} out of live for {now - since:.0f} s (bound {scenario.down_bound:g})")
                for row in manager.connections():
                    late = [key for key, deadline in manager.connection(row.id).pending_requests if deadline < now]
                    if late:
                        raise InvariantViolation(scenario, now, recent=recent, what=f"{row.id}: request(s) {late} past their deadline")
                for invariant in invariants:
                    what = invariant(manager, sim)
                    if what:
                        raise InvariantViolation(scenario, now, recent=recent, what=what)
                rows = manager.connections()
                healed = all(r.state is State.LIVE and r.rotation in (None, "steady") for r in rows) and all(
                    i.state is SubState.SUBSCRIBED for i in manager.subscriptions()
                ) and resume_at is None
                if healed:
                    want = {(everything[i].channel, everything[i].symbols[0]) for i in wanted}
                    have = [s for s in sim.subscriptions if s]
                    got: set[tuple[str, str]] = set().union(*have) if have else set()
                    if got != want or sum(len(s) for s in have) != len(want):
                        raise InvariantViolation(scenario, now, recent=recent, what=f"healed, but the exchange has {sorted(got)}, the ledger wants {sorted(want)}")
                    if sim.connections != len(rows):
                        raise InvariantViolation(scenario, now, recent=recent, what=f"healed with {len(rows)} connections but {sim.connections} sockets open")
                    tasks = _task_count()
                    if first_tasks is None:
                        first_tasks = tasks
                    elif tasks > first_tasks + 10 + 2 * len(rows):
                        raise InvariantViolation(scenario, now, recent=recent, what=f"tasks grew from {first_tasks} to {tasks}")
            if resume_at is not None:
                sim.resume()
    report.delivered, report.gaps, report.trail = streams.delivered, streams.gaps, trail
    return report


async def _inject(
    fault: str,
    rng: random.Random,
    sim: SimExchange,
    manager: Manager,
    scenario: Scenario,
    wanted: set[int],
    everything: list[Subscription],
    group_of: dict[int, str],
    streams: _Streams,
) -> None:
    if fault == "drop" and sim.connections:
        sim.drop_one(rng.randrange(sim.connections))
    elif fault == "stall":
        sim.stall()
    elif fault == "refuse" and sim.connections:
        status = rng.choice((429, 503))
        sim.reject_next(status, [("Retry-After", str(rng.randint(1, scenario.retry_after)))])
        sim.drop_one(rng.randrange(sim.connections))
    elif fault == "close":
        await sim.close_all(rng.choice((1001, 1011, 1012, 4000)), "simulated")
    elif fault == "churn":
        i = rng.randrange(len(everything))
        sub = everything[i]
        if i in wanted:
            await manager.unsubscribe([sub])
            wanted.discard(i)
            streams.forget(sub.channel, sub.symbols[0])
        else:
            wanted.add(i)
            await manager.subscribe([sub], group=group_of[i], wait=False)
    elif fault == "rotate":
        rows = [r.id for r in manager.connections() if r.setup == "rot" and r.state is State.LIVE]
        if rows:
            try:
                await manager.rotate(rng.choice(rows))
            except WirestateError:
                pass  # (another rotation under way: fine)


def run_simulation(scenario: Scenario, backend: str = "asyncio") -> Report:
    """Run ``scenario`` to completion on a virtual clock (looptime for asyncio, trio's MockClock).

    On asyncio a seed replays exactly. Trio deliberately shuffles its run
    queue; it replays exactly only where that shuffle is seeded (under
    hypothesis, which the test suite uses). Needs the test extra (looptime, trio).
    """
    if backend == "trio":
        import trio.testing

        return anyio.run(simulate, scenario, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})
    import looptime

    # (noop_cycles=1: nothing here waits on threads or real sockets, so time may jump at once)
    return anyio.run(
        simulate, scenario, backend="asyncio", backend_options={"loop_factory": lambda: looptime.new_event_loop(start=0, noop_cycles=1)}
    )
