"""``wirestate record`` and ``wirestate replay``: a session to a JSONL file, and back.

``record`` runs one Connection (ticker and trades subscriptions in the
simulator's dialect) against the embedded simulated exchange over the
in-memory transport (or against ``url``, e.g. a ``wirestate sim`` on
127.0.0.1) for ``duration`` seconds and writes every frame through
:class:`transports.record.Recorder`; ``drop_at`` resets the connection from
the sim's side once (a reconnect to record). ``replay`` plays a recording to a fresh
Connection per recorded connection with :class:`transports.replay.Replayer`,
at the recorded pace, and prints each state change and message; it closes
each connection when the recorded client closed.

``virtual=True`` runs either on trio's ``MockClock`` (nothing but the
embedded sim and the replay, no sockets): a recorded hour takes moments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import anyio

from engine.config import ConnectionSetup
from engine.connection import Connection
from engine.errors import ConfigError
from engine.events import StateChanged
from engine.policy import Backoff
from engine.sim.exchange import SimExchange
from transports.replay import Recording, RecordingError, Replayer

__all__ = ["run_record", "run_replay"]

_EMBEDDED_URL = "ws://sim.local/ws"
_SUBSCRIPTIONS = (("ticker", ("BTC-USD",)), ("trades", ("ETH-USD",)))


async def _subscribe(conn: Connection, subs: list[Any]) -> None:
    # Sent, not awaited as requests: a replay of somebody else's recording
    # must not wait for acks that its server never sends (they are printed as messages).
    for channel, symbols in subs:
        await conn.send({"op": "subscribe", "channel": channel, "symbols": list(symbols), "id": conn.next_id()})


def _setup(url: str, name: str, out: TextIO, start: list[float]) -> ConnectionSetup:
    def handler(conn: Connection, message: str | bytes) -> None:
        shown = message if isinstance(message, str) else f"<{len(message)} bytes> {message[:64]!r}"
        print(f"[{anyio.current_time() - start[0]:9.3f}] {conn.id}: {shown}", file=out)

    def changed(event: StateChanged) -> None:
        why = f" ({event.reason})" if event.reason else ""
        print(f"[{event.at - start[0]:9.3f}] {event.connection}: {event.source} -> {event.dest} on {event.trigger}{why}", file=out)

    return ConnectionSetup(
        url=url,
        name=name,
        handler=handler,
        subscriber=_subscribe,
        generate_subscriptions=lambda: list(_SUBSCRIPTIONS),
        backoff=Backoff(initial=0.5, maximum=5.0, jitter=False),
        on_state_change=changed,
    )


async def _record(path: Path, url: str | None, duration: float, drop_at: float | None, out: TextIO) -> int:
    from transports.record import Recorder

    start = [anyio.current_time()]
    with path.open("w", encoding="utf-8") as file:
        recorder = Recorder(file, connection="sim")
        setup = _setup(url or _EMBEDDED_URL, "sim", out, start)
        if url is None:
            async with SimExchange(rate=4.0) as sim, Connection(setup, dialer=recorder.wrap(sim.dialer())) as conn:
                if drop_at is not None and drop_at < duration:
                    await anyio.sleep(drop_at)
                    sim.drop()
                    await anyio.sleep(duration - drop_at)
                else:
                    await anyio.sleep(duration)
        else:
            from engine.dialing import default_dialer

            async with Connection(setup, dialer=recorder.wrap(default_dialer())) as conn:
                await anyio.sleep(duration)
    print(f"recorded {recorder.lines} lines, {conn.messages_received} messages, {conn.sessions} session(s) to {path}", file=out)
    return 0


def run_record(
    path: str,
    *,
    url: str | None = None,
    duration: float = 5.0,
    drop_at: float | None = None,
    virtual: bool = False,
    out: TextIO | None = None,
) -> int:
    """``wirestate record``: returns the exit code (2 when ``path`` cannot be written or the options clash)."""
    target = Path(path)
    if target.is_dir():
        return _fail("record", f"{path} is a directory")
    if not target.parent.exists():
        return _fail("record", f"no folder {target.parent} for {target.name}")
    if url is not None and (virtual or drop_at is not None):
        return _fail("record", "--virtual and --drop-at need the embedded simulator (no URL)")
    run = _runner("record", virtual)
    if run is None:
        return 2
    try:
        return int(run(_record, target, url, duration, drop_at, out or sys.stdout))
    except OSError as exc:
        return _fail("record", f"{path}: {exc.strerror or exc}")


def _fail(command: str, message: str) -> int:
    print(f"wirestate {command}: error: {message}", file=sys.stderr)
    return 2


def _runner(command: str, virtual: bool) -> Callable[..., Any] | None:
    """``anyio.run`` on asyncio, or on trio with a virtual clock; None (after an error line) without trio."""
    if not virtual:
        return anyio.run
    try:
        import trio.testing
    except ImportError:
        _fail(command, "--virtual needs trio: pip install trio")
        return None

    def run(func: Callable[..., Any], *args: Any) -> Any:
        clock = trio.testing.MockClock(autojump_threshold=0)
        return anyio.run(func, *args, backend="trio", backend_options={"clock": clock})

    return run


async def _replay(recording: Recording, strict: bool, out: TextIO) -> int:
    replayer = Replayer(recording, strict=strict)
    start = [anyio.current_time()]
    first_dial = min(s.dialed_at for s in recording.sessions)
    async with anyio.create_task_group() as tg:
        for name in recording.connections:
            tg.start_soon(_replay_one, recording, replayer, name, start, first_dial, out)
    for mismatch in replayer.mismatches:
        print(f"mismatch: {mismatch}", file=out)
    return 1 if strict and replayer.mismatches else 0


async def _replay_one(
    recording: Recording, replayer: Replayer, name: str, start: list[float], first_dial: float, out: TextIO
) -> None:
    sessions = [s for s in recording.sessions if s.connection == name]
    try:  # (the URL only names the connection: nothing is dialed; a redacted part stays a placeholder)
        setup = _setup(sessions[0].url.replace("***", "redacted"), name, out, start)
    except ConfigError:
        setup = _setup(_EMBEDDED_URL, name, out, start)
    # The recorded client closed with its last session's close frame (or at the end of the file).
    stop = recording.last_time
    for line in reversed(sessions[-1].sent):
        if line.get("op") == "close":
            stop = float(line["t"])
            break
    await anyio.sleep_until(start[0] + (sessions[0].dialed_at - first_dial))
    async with Connection(setup, dialer=replayer.dialer(name)):
        await anyio.sleep_until(start[0] + (stop - first_dial))


def run_replay(path: str, *, strict: bool = False, virtual: bool = False, out: TextIO | None = None) -> int:
    """``wirestate replay``: returns the exit code (2 for a missing or bad file, 1 for strict mismatches)."""
    try:
        recording = Recording.load(path)
    except RecordingError as exc:
        return _fail("replay", str(exc))
    if not recording.sessions:
        return _fail("replay", f"{path}: the recording has no sessions")
    run = _runner("replay", virtual)
    if run is None:
        return 2
    return int(run(_replay, recording, strict, out or sys.stdout))
