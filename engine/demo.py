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
snapshot of the table after each step. (The drawing and the counters are
:mod:`engine.demo_view`; this module is the script: steps, faults, timing.)

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
4. a rotation: ``private#1`` is replaced make-before-break
   (:meth:`Manager.rotate`, what ``rotate_after`` does ahead of an exchange's
   connection lifetime limit): a second socket logs in and subscribes beside
   it, both stream for a second with each message delivered once, then the
   old one closes with 1000; the id stays ``private#1``;
5. a clean shutdown: every connection closes with 1000.

The whole script takes about 20 s. It ends by itself within ``duration``
seconds (a shorter bound ends it early, before every step, still with a
clean shutdown), or on Ctrl-C, with exit code 0 on asyncio and trio alike
(Ctrl-C is the caller's: :func:`run_demo` prints ``interrupted``).
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from engine.causes import HandshakeRejection
from engine.config import Backoff, ConnectionSetup, WebsocketSetup
from engine.demo_view import Board
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


# -- the script --------------------------------------------------------------------------------


def _manager(url: str, board: Board) -> Manager:
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
    manager.add_connection(
        ConnectionSetup(
            url=f"{url}/private",
            authenticated=True,
            connector=_login,
            rotate_after=3600.0,  # (a lifetime limit far away: the demo rotates on demand)
            rotate_overlap=1.0,
            **timeouts,
        ),
        name="private",
    )
    manager.on_state_change(board.state_changed)
    return manager


async def _script(manager: Manager, sim: SimExchange, board: Board, duration: float, until: float) -> None:
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


async def _faults(manager: Manager, sim: SimExchange, board: Board) -> None:
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

    # 4. a rotation
    board.say("--- then a rotation: private#1 is replaced make-before-break (Manager.rotate)")
    old, accepted = manager.connection("private#1"), sim.accepted
    if await manager.rotate("private#1"):
        new = manager.connection("private#1")
        board.say(
            f"--- rotation: private#1 runs on a new socket ({sim.accepted - accepted} accepted), logged in and"
            f" subscribed before the old one closed with {old.last_close_sent[0] if old.last_close_sent else '?'};"
            f" it is {new.state.value}"
        )
    await anyio.sleep(1.0)
    board.snapshot()


async def _demo(duration: float) -> None:
    start = anyio.current_time()
    board = Board(start)
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
            async with anyio.create_task_group() as tg:
                board.show()
                try:
                    tg.start_soon(board.refresh)
                    await _script(manager, sim, board, duration, until)
                    board.sample()
                finally:
                    tg.cancel_scope.cancel()
                    board.hide()
    if deadline.cancelled_caught:
        print(f"--- demo stopped at its {duration:g} s bound", flush=True)
    board.snapshot()
    print(board.summary(), flush=True)


def run_demo(duration: float = 30.0, backend: str = "asyncio") -> int:
    """Run the demo; returns the exit code (0, also on Ctrl-C, on either backend)."""
    try:
        run_interruptible(_demo, duration, backend=backend)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    return 0
