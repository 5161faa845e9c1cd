"""End to end (issue 18): socket -> typed events -> a bounded stream -> a consumer taking batches.

Every client does the same work on the blast server's N ~200-byte trade
messages (``benchmarks.blast.make_message``, seq 0..N-1): decode each into a
typed trade event (a msgspec Struct), put it into a bounded buffer that pushes
back on the socket when full (``capacity`` events), and let a separate
consumer task take *batches* and check every event (type and ``seq``: each
message consumed exactly once, in order) until the N-th. Time runs from just
before connect until the consumer has checked the N-th event.

- ``e2e-picows-msgspec`` (the 1.0 reference): a picows listener decodes each
  frame's memoryview with ``msgspec.json.Decoder(PeerTrade)`` in
  ``on_ws_frame`` and appends it to a list; the consumer swaps the list out
  per wakeup (one future per wait). When ``capacity`` events are queued the
  listener pauses the socket (``pause_reading``) until the consumer takes
  them: picows' equivalent of ``block``.
- ``e2e-websockets-orjson``: ``async for message in ws`` -> ``orjson.loads``
  -> ``PeerTrade(**fields)``, the same list buffer; a full buffer makes the
  reading task wait for the consumer.
- ``e2e-wirestate-adapter``: ``Connection`` with the reference adapter's
  ``engine.adapters.sim.batch_handler`` (tagged-union msgspec decode into a
  wire Struct, then :class:`engine.events.Trade` stamped with the connection
  id and the receive time, ``conn.emit_many`` per read), consumed with
  ``async for batch in conn.stream(Trade, policy="block", capacity=...)``.
- ``e2e-wirestate-msgspec``: the same stream; the ``batch_handler`` decodes
  straight into :class:`engine.events.Trade` (``msgspec.json.Decoder(Trade)``,
  unknown fields skipped) and stamps ``connection`` and ``received`` with
  ``msgspec.structs.force_setattr`` (the event is new and not yet shared).

``python -m benchmarks.e2e --profile [adapter|msgspec]`` runs one wirestate
client in this process under cProfile against a blast server in its own
process and prints the top costs.

``PeerTrade`` has the fields of :class:`engine.events.Trade` (same defaults),
so every client allocates the same event; the peers leave ``connection`` and
``received`` at their defaults (their libraries have no such notion), the
wirestate rows stamp them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

import msgspec

from benchmarks.clients import Client

__all__ = ["E2E_CLIENTS", "PeerTrade", "main"]


class PeerTrade(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What the peers decode into: the fields (and defaults) of ``engine.events.Trade``."""

    connection: str = ""
    received: float = 0.0
    symbol: str
    ts: float | None = None
    seq: int | None = None
    price: str
    size: str
    side: str | None = None
    trade_id: str | None = None


class Batches:
    """The peers' bounded buffer: a list the consumer swaps out per wakeup.

    ``put`` never waits; it returns True when ``capacity`` events are queued
    (the producer then stops reading until :meth:`take` makes room).
    """

    __slots__ = ("items", "capacity", "_ready", "_space", "_on_space")

    def __init__(self, capacity: int, on_space: Any = None) -> None:
        self.items: list[Any] = []
        self.capacity = capacity
        self._ready: asyncio.Future[None] | None = None  # the consumer waits for events
        self._space: asyncio.Future[None] | None = None  # an async producer waits for room
        self._on_space = on_space  # a callback producer's resume (picows: resume_reading)

    def put(self, item: Any) -> bool:
        items = self.items
        items.append(item)
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set_result(None)
        return len(items) >= self.capacity

    async def wait_space(self) -> None:
        while len(self.items) >= self.capacity:
            self._space = asyncio.get_running_loop().create_future()
            await self._space

    async def take(self) -> list[Any]:
        while not self.items:
            self._ready = asyncio.get_running_loop().create_future()
            await self._ready
        batch, self.items = self.items, []
        space = self._space
        if space is not None:
            self._space = None
            space.set_result(None)
        if self._on_space is not None:
            self._on_space()
        return batch


async def _consume(take: Any, cls: Any, n: int) -> tuple[int, int]:
    """The consumer: batches until the N-th event; every event checked. Returns (events, batches)."""
    expected = batches = 0
    while expected < n:
        batch = await take()
        batches += 1
        for event in batch:
            if type(event) is not cls or event.seq != expected:
                if expected == n:  # (the close, after the N-th event)
                    break
                raise RuntimeError(f"event {expected}: got {event!r}")
            expected += 1
    return expected, batches


def _check(events: int, n: int) -> None:
    if events != n:
        raise RuntimeError(f"consumed {events} events, expected {n}")


class PicowsE2E(Client):
    """picows + msgspec: decode in ``on_ws_frame``, pause the socket when the buffer is full."""

    async def e2e(self, port: int, n: int, capacity: int) -> dict[str, Any]:
        from picows import WSListener, WSMsgType, ws_connect

        text, close = WSMsgType.TEXT, WSMsgType.CLOSE
        decode = msgspec.json.Decoder(PeerTrade).decode
        state: dict[str, Any] = {"paused": False, "pauses": 0, "transport": None}

        def resume() -> None:
            if state["paused"]:
                state["paused"] = False
                state["transport"].resume_reading()

        buffer = Batches(capacity, on_space=resume)
        put = buffer.put

        class Listener(WSListener):  # type: ignore[misc]
            def on_ws_connected(self, transport: Any) -> None:
                state["transport"] = transport.underlying_transport

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind == text:
                    if put(decode(frame.get_payload_as_memoryview())) and not state["paused"]:
                        state["paused"] = True
                        state["pauses"] += 1
                        transport.underlying_transport.pause_reading()
                elif kind == close:
                    if not transport.is_close_frame_sent:
                        transport.send_close(frame.get_close_code())
                    transport.disconnect()

        t0 = time.perf_counter()
        transport, _ = await ws_connect(Listener, f"ws://127.0.0.1:{port}/", max_frame_size=1 << 30)
        events, batches = await _consume(buffer.take, PeerTrade, n)
        elapsed = time.perf_counter() - t0
        _check(events, n)
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 5)
        return {"elapsed": elapsed, "batches": batches, "blocked": state["pauses"]}


class WebsocketsE2E(Client):
    """python-websockets + orjson: ``async for`` -> ``orjson.loads`` -> ``PeerTrade`` -> buffer."""

    async def e2e(self, port: int, n: int, capacity: int) -> dict[str, Any]:
        import orjson
        from websockets.asyncio.client import connect

        loads = orjson.loads
        buffer = Batches(capacity)
        put = buffer.put
        blocked = 0

        async def reader(ws: Any) -> None:
            nonlocal blocked
            async for message in ws:
                d = loads(message)
                event = PeerTrade(symbol=d["symbol"], price=d["price"], size=d["size"], side=d["side"],
                                  seq=d["seq"], ts=d["ts"])  # fmt: skip
                if put(event):
                    blocked += 1
                    await buffer.wait_space()

        t0 = time.perf_counter()
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None, proxy=None) as ws:
            task = asyncio.create_task(reader(ws))
            events, batches = await _consume(buffer.take, PeerTrade, n)
            elapsed = time.perf_counter() - t0
            task.cancel()
        _check(events, n)
        return {"elapsed": elapsed, "batches": batches, "blocked": blocked}


class WirestateE2E(Client):
    """``Connection`` + ``batch_handler`` + ``conn.emit_many`` -> ``conn.stream(Trade, policy="block")``."""

    runner = "anyio"

    def __init__(self, decoder: str) -> None:
        self.decoder = decoder  # "adapter": engine.adapters.sim; "msgspec": straight into Trade

    def _handler(self) -> Any:
        if self.decoder == "adapter":
            from engine.adapters import sim

            return sim.batch_handler
        from engine.events import Trade

        decode = msgspec.json.Decoder(Trade).decode
        stamp = msgspec.structs.force_setattr

        def on_batch(conn: Any, messages: list[Any]) -> None:
            received = conn.now()  # one clock read per socket read
            connection = conn.id
            events = [decode(message) for message in messages]
            for event in events:
                stamp(event, "connection", connection)
                stamp(event, "received", received)
            conn.emit_many(events)  # one route lookup and one queue extend per read

        return on_batch

    async def e2e(self, port: int, n: int, capacity: int) -> dict[str, Any]:
        from engine import Connection, ConnectionSetup
        from engine.events import Trade

        setup = ConnectionSetup(url=f"ws://127.0.0.1:{port}/", batch_handler=self._handler(), frame_path="fast")
        t0 = time.perf_counter()
        conn = Connection(setup)
        # (alert_at as a count above any fill: no Backlog events; the checks want trades only)
        stream = conn.stream(Trade, policy="block", capacity=capacity, alert_at=1 << 40)
        async with conn, stream:
            events, batches = await _consume(stream.receive, Trade, n)
            elapsed = time.perf_counter() - t0
            sessions = conn.sessions
            stats = stream.stats()
            hub = stream.hub
        # The engine reconnects on its own: N events over two sessions is no valid run.
        if sessions != 1:
            raise RuntimeError(f"the N messages came over {sessions} sessions")
        _check(events, n)
        if stats.dropped or hub.unrouted or hub.filtered:
            raise RuntimeError(f"events lost: {stats}, unrouted {hub.unrouted}, filtered {hub.filtered}")
        return {"elapsed": elapsed, "batches": batches, "blocked": stats.blocked}


#: client id -> factory (ids as in ``benchmarks.clients.CLIENTS``)
E2E_CLIENTS: dict[str, Any] = {
    "e2e-picows-msgspec": PicowsE2E,
    "e2e-websockets-orjson": WebsocketsE2E,
    "e2e-wirestate-adapter": lambda: WirestateE2E("adapter"),
    "e2e-wirestate-msgspec": lambda: WirestateE2E("msgspec"),
}


def main(argv: list[str] | None = None) -> None:
    """``--profile``: one wirestate client in process under cProfile; the top costs by own time."""
    import anyio

    from benchmarks.runner import server

    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--profile", choices=["adapter", "msgspec"], default="msgspec", help="the wirestate client")
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--capacity", type=int, default=10_000)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    client = WirestateE2E(args.profile)
    with server("blast", args.messages) as port:
        profile = cProfile.Profile()
        profile.enable()
        out = anyio.run(client.e2e, port, args.messages, args.capacity, backend="asyncio")
        profile.disable()
    print(f"{args.profile}: {args.messages / out['elapsed']:,.0f} msgs/s under the profiler, {out}")
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
