"""What ``wirestate demo`` shows: the live rich table, or plain lines, and the counters behind them.

On a terminal :class:`Board` draws a live table with rich (refreshed 4 times
a second): one row per connection (id, state, subscriptions, messages/s,
sessions, last cause) above the last 8 state changes. When stdout is not a
terminal (a pipe, a log, CI) it prints plain lines instead: every state
change, each step, and a snapshot of the table when asked. The script itself
(steps, faults, timing) is :mod:`engine.demo`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import anyio
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from engine.causes import HandshakeRejection
from engine.events import StateChanged
from engine.manager import Manager
from machines.connection import State

__all__ = ["Board"]

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


class Board:
    """Counts messages, keeps the state-change log, and draws the table (live or plain)."""

    def __init__(self, start: float, console: Console | None = None) -> None:
        self.console = console if console is not None else Console()
        self.live = self.console.is_terminal
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
        self._display: Live | None = None

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

    def summary(self) -> str:
        """The closing ``done: ...`` line: messages, connections, state changes, sessions, rejections, time."""
        rows = self.rows()
        rejected = sum(1 for e in self.events if e.trigger == "lost" and isinstance(e.cause, HandshakeRejection))
        public = sum(1 for r in rows if r[0].startswith("public"))
        return (
            f"done: {sum(self.counts.values())} messages over {len(rows)} connections ({public} public + "
            f"{len(rows) - public} private), {len(self.events)} state changes, {sum(r[4] for r in rows)} sessions, "
            f"{rejected} handshake{'' if rejected == 1 else 's'} rejected, in {self.elapsed():.1f} s"
        )

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

    # the live display (terminal only) ------------------------------------------

    def show(self) -> None:
        """Start drawing the live table (on a terminal; nothing in plain mode)."""
        if self.live:
            self._display = Live(self.render(), console=self.console, auto_refresh=False)
            self._display.start(refresh=True)

    def hide(self) -> None:
        """Draw the table one last time and stop the live display (if :meth:`show` started one)."""
        display, self._display = self._display, None
        if display is not None:
            display.update(self.render(), refresh=True)
            display.stop()

    async def refresh(self) -> None:
        """Sample msg/s and redraw, every ``_REFRESH`` seconds, until cancelled."""
        while True:
            self.sample()
            if self._display is not None:
                self._display.update(self.render(), refresh=True)
            await anyio.sleep(_REFRESH)
