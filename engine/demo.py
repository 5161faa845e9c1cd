"""``wirestate demo``: a :class:`~engine.manager.Manager` on the embedded simulated exchange, with faults.

Starts the simulator on 127.0.0.1 (real sockets on a free port, real clock,
nothing else on the network) and runs one manager against it, **single style**
(:class:`~engine.config.WebsocketSetup` holds the global callbacks: subscriber,
unsubscriber, handler and the generated subscriptions, shared by both
connection setups; only the private setup brings its own ``connector``):

- ``public``: 5 public subscriptions at ``max_subscriptions_per_connection=2``,
  so the manager shards them onto 3 connections (``public#1..3``);
- ``private``: one authenticated connection (``private#1``) whose connector
  logs in (``{"op":"login","key":"demo","signature":...,"id":N}``, answered
  ``{"event":"login","ok":true,...}``) before it subscribes its one private
  subscription (``Subscription(..., authenticated=True)``).

On a terminal it draws a live table with rich (refreshed 4 times a second):
one row per connection (id, state, subscriptions, messages/s, sessions, last
cause) above the last 8 state changes. When stdout is not a terminal (a pipe,
a log, CI) it prints plain lines instead: every state change, each step, and a
snapshot of the table after each step.

Then it injects, one after the other, each shown in the table and the log:

1. a drop: one connection's socket is reset (``sim.drop_one(0)``); only that
   connection goes ``reconnecting`` and comes back, the others keep their sessions;
2. a stall: the server goes silent on every socket (``sim.stall()``); each
   connection turns ``stale`` after ``traffic_timeout`` (1.5 s), gives up on
   it after ``pong_timeout`` (1 s) more, reconnects and is live again
   (``sim.resume()`` once they all left);
3. a 429: the next handshake is answered ``429`` with ``Retry-After: 2``
   (``sim.reject_next``) and one connection is reset to make it reconnect: it
   is refused, waits the 2 s the server asked for, then comes back;
4. a clean shutdown: every connection closes with 1000.

A rotation (planned reconnects before an exchange's connection lifetime runs
out) is not shown: the manager has none yet.

The whole script takes about 16 s. It ends by itself within ``duration``
seconds (a shorter bound ends it early, before every step, still with a
clean shutdown), or on Ctrl-C, with exit code 0 on asyncio and trio alike
(Ctrl-C is the caller's: :func:`run_demo` prints ``interrupted``).
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from engine.causes import HandshakeRejection
from engine.config import Backoff, ConnectionSetup, WebsocketSetup
from engine.errors import AuthenticationFailed
from engine.events import StateChanged
from engine.manager import Manager
from engine.sim import SimExchange
from engine.sim.serve import run_interruptible
from engine.subscriptions import Subscription
from machines.connection import State

__all__ = ["run_demo"]

#: data messages per second per subscribed (channel, symbol) pair
_RATE = 4.0
_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
#: 5 public subscriptions (3 connections at 2 each) and 1 private one
_SUBSCRIPTIONS = [
    Subscription("ticker", "BTC-USD"),
    Subscription("ticker", "ETH-USD"),
    Subscription("ticker", "SOL-USD"),
    Subscription("trades", "BTC-USD"),
    Subscription("trades", "ETH-USD"),
    Subscription("trades", "SOL-USD", authenticated=True),  # stands in for a private fills feed
]
_PER_CONNECTION = 2
_CONNECTIONS = 4  # 3 public + 1 private
_API_KEY, _API_SECRET = "demo", b"demo-secret"

_REFRESH = 0.25  # seconds between table refreshes (and msg/s samples)
_RATE_WINDOW = 5  # samples per msg/s figure: about one second
_LOG_LINES = 8
_STYLES = {
    State.LIVE: "bold green",
    State.STALE: "bold yellow",
    State.RECONNECTING: "bold red",
    State.CLOSING: "magenta",
    State.DISCONNECTED: "dim",
}


# -- the exchange's callbacks (single style: shared by both setups) ---------------------------


async def _subscribe(conn: Any, subs: list[Subscription]) -> None:
    """One ``subscribe`` request per subscription; an error reply fails that subscription."""
    for sub in subs:
        rid = conn.next_id()
        message = {"op": "subscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}
        reply = orjson.loads(await conn.request(message, key=rid, timeout=3.0))
        if reply.get("event") == "error":
            raise RuntimeError(f"{sub}: {reply.get('message', 'rejected')}")


async def _unsubscribe(conn: Any, subs: list[Subscription]) -> None:
    for sub in subs:
        rid = conn.next_id()
        message = {"op": "unsubscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}
        await conn.request(message, key=rid, timeout=3.0)


async def _login(conn: Any) -> None:
    """The private connection's connector: log in, before any subscribe."""
    rid = conn.next_id()
    signature = hmac.new(_API_SECRET, f"login{rid}".encode(), hashlib.sha256).hexdigest()
    message = {"op": "login", "key": _API_KEY, "signature": signature, "id": rid}
    reply = orjson.loads(await conn.request(message, key=rid, timeout=3.0))
    if not reply.get("ok"):
        raise AuthenticationFailed(f"login rejected: {reply}")


# -- what is shown -------------------------------------------------------------------------------


class _Board:
    """Counts messages, keeps the state-change log, and draws the table (live or plain)."""

    def __init__(self, console: Console, start: float) -> None:
        self.console = console
        self.live = console.is_terminal
        self.start = start
        self.url = ""
        self.manager: Manager | None = None
        self.step = "starting"
        self.events: list[StateChanged] = []
        self.log: deque[Text] = deque(maxlen=_LOG_LINES)
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, deque[tuple[float, int]]] = {}
        self.causes: dict[str, str] = {}
        self._changed: anyio.Event | None = None

    def elapsed(self, at: float | None = None) -> float:
        return (anyio.current_time() if at is None else at) - self.start

    # plain lines ---------------------------------------------------------------

    def say(self, line: str) -> None:
        """A step line: printed at once in plain mode, shown above the table when live."""
        if line.startswith("--- "):
            self.step = line[4:]
        if self.live:
            self.log.append(Text(f"[{self.elapsed():6.2f}s] {line}", style="bold cyan"))
        else:
            print(line, flush=True)

    def snapshot(self) -> None:
        """The table as plain lines (plain mode only)."""
        if self.live:
            return
        rows = self.rows()
        print(f"    {'connection':<11} {'state':<14} {'subs':>4} {'msg/s':>6} {'sessions':>8}  last cause")
        for cid, state, subs, rate, sessions, cause in rows:
            print(f"    {cid:<11} {state.value:<14} {subs:>4} {rate:>6.1f} {sessions:>8}  {cause}")
        print(flush=True)

    # listeners -----------------------------------------------------------------

    def message(self, conn: Any, message: str | bytes) -> None:
        self.counts[conn.id] += 1

    def state_changed(self, event: StateChanged) -> None:
        self.events.append(event)
        if event.cause is not None:
            self.causes[event.connection] = str(event.cause)
        t = self.elapsed(event.at)
        why = f" ({event.reason})" if event.reason else ""
        line = f"[{t:6.2f}s] {event.connection}: {event.source.value} -> {event.dest.value} on {event.trigger}{why}"
        if self.live:
            self.log.append(Text(line, style=_STYLES.get(event.dest, "")))
        else:
            print(f"  {line}", flush=True)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Wait (woken by state changes) until ``check()``; False if ``timeout`` passed first."""
        with anyio.move_on_after(timeout):
            while not check():
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        return check()

    def since(self, mark: int) -> list[StateChanged]:
        return self.events[mark:]

    # the table -----------------------------------------------------------------

    def sample(self) -> None:
        now = anyio.current_time()
        for cid in self._ids():
            self.samples.setdefault(cid, deque(maxlen=_RATE_WINDOW)).append((now, self.counts[cid]))

    def _ids(self) -> list[str]:
        return [] if self.manager is None else [info.id for info in self.manager.connections()]

    def rate(self, cid: str, state: State) -> float:
        """Messages per second over about the last second; 0 while not streaming."""
        window = self.samples.get(cid)
        if state not in (State.LIVE, State.STALE) or not window or len(window) < 2:
            return 0.0
        (t0, c0), (t1, c1) = window[0], window[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def rows(self) -> list[tuple[str, State, int, float, int, str]]:
        if self.manager is None:
            return []
        out = []
        for info in self.manager.connections():
            conn = self.manager.connection(info.id)
            cause = self.causes.get(info.id) or (str(conn.cause) if conn.cause is not None else "-")
            out.append((info.id, info.state, info.subscriptions, self.rate(info.id, info.state), conn.sessions, cause))
        return out

    def render(self) -> Group:
        header = Text.assemble(
            ("wirestate demo", "bold"),
            f"  sim on {self.url or '...'}  t={self.elapsed():5.1f}s  ",
            (self.step, "bold cyan"),
        )
        table = Table(box=box.SIMPLE_HEAVY, expand=False)
        table.add_column("connection", style="bold")
        table.add_column("state")
        table.add_column("subs", justify="right")
        table.add_column("msg/s", justify="right")
        table.add_column("sessions", justify="right")
        table.add_column("last cause", overflow="fold")
        for cid, state, subs, rate, sessions, cause in self.rows():
            table.add_row(cid, Text(state.value, style=_STYLES.get(state, "cyan")), str(subs), f"{rate:.1f}", str(sessions), cause)
        log = Text("\n").join(self.log) if self.log else Text("(no state changes yet)", style="dim")
        return Group(header, table, Panel(log, title=f"state changes (last {_LOG_LINES})", title_align="left"))

    async def refresh(self, live: Live | None) -> None:
        """Sample msg/s and redraw, every ``_REFRESH`` seconds, until cancelled."""
        while True:
            self.sample()
            if live is not None:
                live.update(self.render(), refresh=True)
            await anyio.sleep(_REFRESH)


# -- the script --------------------------------------------------------------------------------


def _manager(url: str, board: _Board) -> Manager:
    setup = WebsocketSetup(
        exchange="sim",
        max_subscriptions_per_connection=_PER_CONNECTION,
        traffic_timeout=1.5,  # silence before stale (every managed connection)
        connection_monitor_interval=1.0,
        subscriber=_subscribe,
        unsubscriber=_unsubscribe,
        handler=board.message,
        generate_subscriptions=lambda: list(_SUBSCRIPTIONS),
    )
    timeouts: dict[str, Any] = dict(
        pong_timeout=1.0,  # grace after stale before the session counts as lost
        open_timeout=3.0,
        setup_timeout=4.0,
        close_timeout=1.0,
        backoff=Backoff(initial=0.3, maximum=2.0),
        healthy_after=1.0,
    )
    manager = Manager(setup)
    manager.add_connection(ConnectionSetup(url=f"{url}/public", **timeouts), name="public")
    manager.add_connection(ConnectionSetup(url=f"{url}/private", authenticated=True, connector=_login, **timeouts), name="private")
    manager.on_state_change(board.state_changed)
    return manager


async def _script(manager: Manager, sim: SimExchange, board: _Board, duration: float, until: float) -> None:
    """Start the manager, inject the faults until ``until`` (the soft bound), then shut down with 1000."""
    board.say(
        f"--- connecting: {len(_SUBSCRIPTIONS) - 1} public subscriptions at {_PER_CONNECTION} per connection"
        " (3 connections), 1 private connection that logs in, then subscribes"
    )
    async with manager:  # back once every connection is live (or its start bound ran out)
        with anyio.move_on_at(until) as cut:
            await _faults(manager, sim, board)
        if cut.cancelled_caught:
            sim.resume()  # (a stall cut short: let the closing handshakes through)
            board.say(f"--- {duration:g} s bound reached: stopping early")
        board.say("--- shutting down: every connection closes with 1000")
    board.say("--- closed")


async def _faults(manager: Manager, sim: SimExchange, board: _Board) -> None:
    def all_live() -> bool:
        rows = manager.connections()
        return len(rows) == _CONNECTIONS and all(r.state is State.LIVE for r in rows)

    def reached(mark: int, cid: str, state: State) -> bool:
        return any(e.connection == cid and e.dest is state for e in board.since(mark))

    def lost(mark: int, accept: Callable[[StateChanged], bool] = lambda e: True) -> StateChanged | None:
        return next((e for e in board.since(mark) if e.trigger == "lost" and accept(e)), None)

    def sessions() -> dict[str, int]:
        return {r.id: manager.connection(r.id).sessions for r in manager.connections()}

    async def settle(what: str, check: Callable[[], bool], timeout: float) -> bool:
        if await board.until(check, timeout):
            return True
        board.say(f"    ({what}: not seen within {timeout:g} s; going on)")
        return False

    await settle("every connection live", all_live, 5.0)
    names = ", ".join(r.id for r in manager.connections())
    board.say(f"--- {len(manager.connections())} connections live: {names}; streaming")
    await anyio.sleep(3.0)
    board.snapshot()

    # 1. a drop
    board.say("--- fault 1/3: drop one connection (sim.drop_one(0): a reset, no close frame)")
    before, mark = sessions(), len(board.events)
    if sim.connections:
        sim.drop_one(0)
    if await settle("the drop", lambda: lost(mark) is not None, 3.0):
        victim = lost(mark).connection  # type: ignore[union-attr]
        back = await settle(
            f"{victim} back", lambda: reached(mark, victim, State.RECONNECTING) and manager.connection(victim).state is State.LIVE, 5.0
        )
        after = sessions()
        kept = [cid for cid in after if cid != victim and after[cid] == before.get(cid)]
        if back:
            board.say(f"--- drop: {victim} reconnected (session {after[victim]}); the other {len(kept)} kept their sessions")
    await anyio.sleep(3.0)
    board.snapshot()

    # 2. a stall
    board.say("--- fault 2/3: stall (sim.stall(): sockets open, nothing sent, pings unanswered)")
    mark = len(board.events)
    sim.stall()
    ids = [r.id for r in manager.connections()]
    await settle("every connection stale", lambda: all(reached(mark, cid, State.STALE) for cid in ids), 4.0)
    await settle("every connection reconnecting", lambda: all(reached(mark, cid, State.RECONNECTING) for cid in ids), 3.0)
    sim.resume()
    if await settle("every connection live again", all_live, 6.0):
        board.say("--- stall: every connection went stale, reconnected on a fresh socket and is live again")
    await anyio.sleep(3.0)
    board.snapshot()

    # 3. a 429 with Retry-After
    board.say("--- fault 3/3: HTTP 429 with Retry-After: 2 on the next handshake, then a reset to force a reconnect")
    mark = len(board.events)
    sim.reject_next(429, [("Retry-After", "2")])
    if sim.connections:
        sim.drop_one(0)

    def rejected(e: StateChanged) -> bool:
        return isinstance(e.cause, HandshakeRejection) and e.cause.status == 429

    if await settle("the 429", lambda: lost(mark, rejected) is not None, 4.0):
        victim = lost(mark, rejected).connection  # type: ignore[union-attr]
        if await settle(f"{victim} back", lambda: manager.connection(victim).state is State.LIVE, 5.0):
            board.say(f"--- 429: {victim} was refused, waited the 2 s the server asked for, and is live again")
    await anyio.sleep(2.0)
    board.snapshot()


async def _demo(duration: float) -> None:
    console = Console()
    start = anyio.current_time()
    board = _Board(console, start)
    # The faults stop at a soft bound, early enough for the closing handshakes
    # (concurrent, close_timeout 1 s each) to fit in; the hard bound is a safety net.
    until = start + duration - min(1.5, duration / 4)
    with anyio.move_on_after(duration) as deadline:
        async with SimExchange(rate=_RATE, symbols=_SYMBOLS) as sim:
            port = await sim.listen_tcp()
            board.url = f"ws://127.0.0.1:{port}"
            print(f"simulated exchange listening on {board.url} (127.0.0.1 only)", flush=True)
            manager = _manager(board.url, board)
            board.manager = manager
            live = Live(board.render(), console=console, auto_refresh=False) if board.live else None
            async with anyio.create_task_group() as tg:
                if live is not None:
                    live.start(refresh=True)
                try:
                    tg.start_soon(board.refresh, live)
                    await _script(manager, sim, board, duration, until)
                    board.sample()
                finally:
                    tg.cancel_scope.cancel()
                    if live is not None:
                        live.update(board.render(), refresh=True)
                        live.stop()
    if deadline.cancelled_caught:
        print(f"--- demo stopped at its {duration:g} s bound", flush=True)
    board.snapshot()
    rows = board.rows()
    rejected = sum(1 for e in board.events if e.trigger == "lost" and isinstance(e.cause, HandshakeRejection))
    public = sum(1 for r in rows if r[0].startswith("public"))
    print(
        f"done: {sum(board.counts.values())} messages over {len(rows)} connections ({public} public + "
        f"{len(rows) - public} private), {len(board.events)} state changes, {sum(r[4] for r in rows)} sessions, "
        f"{rejected} handshake{'' if rejected == 1 else 's'} rejected, in {board.elapsed():.1f} s",
        flush=True,
    )


def run_demo(duration: float = 20.0, backend: str = "asyncio") -> int:
    """Run the demo; returns the exit code (0, also on Ctrl-C, on either backend)."""
    try:
        run_interruptible(_demo, duration, backend=backend)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    return 0
