"""Micro-benchmark: ns/frame for transports.frames.FrameDecoder vs other parsers.

Reference parsers (each only if installed): wsproto's FrameProtocol and
Connection, python-websockets' sans-IO Protocol, aiohttp's WebSocketReader
(its Cython build when available).

Decodes N pre-encoded ~200-byte JSON text frames (unmasked, as a server sends
them) fed in fixed-size chunks, and prints the best of several runs.

    .venv/bin/python benchmarks/micro_frames.py [--frames 100000] [--chunk 65536]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transports.frames import OP_TEXT, FrameDecoder, encode_frame  # noqa: E402


def make_stream(frames: int, size: int) -> bytes:
    parts = []
    for k in range(frames):
        msg = {"e": "trade", "E": 1700000000000 + k, "s": "BTCUSDT", "t": 123456789 + k,
               "p": f"{43000 + k % 1000}.12", "q": "0.00123000", "T": 1700000000000 + k,
               "m": bool(k & 1), "M": True}
        text = json.dumps(msg, separators=(",", ":"))
        text = text + " " * max(0, size - len(text))
        parts.append(encode_frame(OP_TEXT, text.encode(), mask=False))
    return b"".join(parts)


def split(stream: bytes, chunk: int) -> list[bytes]:
    return [stream[k : k + chunk] for k in range(0, len(stream), chunk)]


def bench_ours(chunks: list[bytes], frames: int) -> float:
    dec = FrameDecoder()
    feed = dec.feed
    count = 0
    t0 = time.perf_counter_ns()
    for c in chunks:
        count += len(feed(c))
    dt = time.perf_counter_ns() - t0
    assert count == frames, count
    return dt / frames


def bench_wsproto_frames(chunks: list[bytes], frames: int) -> float:
    from wsproto.frame_protocol import FrameProtocol

    proto = FrameProtocol(client=True, extensions=[])
    count = 0
    t0 = time.perf_counter_ns()
    for c in chunks:
        proto.receive_bytes(c)
        for frame in proto.received_frames():
            if frame.message_finished:
                count += 1
    dt = time.perf_counter_ns() - t0
    assert count == frames, count
    return dt / frames


def bench_wsproto_conn(chunks: list[bytes], frames: int) -> float:
    from wsproto.connection import Connection, ConnectionType

    conn = Connection(ConnectionType.CLIENT, extensions=[])
    count = 0
    t0 = time.perf_counter_ns()
    for c in chunks:
        conn.receive_data(c)
        for ev in conn.events():
            if ev.message_finished:
                count += 1
    dt = time.perf_counter_ns() - t0
    assert count == frames, count
    return dt / frames


def bench_websockets(chunks: list[bytes], frames: int) -> float:
    # python-websockets' sans-IO protocol, already OPEN; text payloads decoded
    # to str like ours (websockets hands out Frame objects with bytes).
    from websockets.protocol import Protocol, Side, State

    proto = Protocol(Side.CLIENT, state=State.OPEN, max_size=16 * 1024 * 1024)
    count = 0
    t0 = time.perf_counter_ns()
    for c in chunks:
        proto.receive_data(c)
        for frame in proto.events_received():
            frame.data.decode()
            count += 1
    dt = time.perf_counter_ns() - t0
    assert count == frames, count
    return dt / frames


def bench_aiohttp(chunks: list[bytes], frames: int) -> float:
    # aiohttp's own reader (Cython build when available) feeding its data queue.
    import asyncio

    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

    class _Proto:
        _reading_paused = False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        queue = WebSocketDataQueue(_Proto(), 1 << 30, loop=loop)  # type: ignore[arg-type]
        reader = WebSocketReader(queue, 16 * 1024 * 1024, compress=False, decode_text=True)
        buffer = queue._buffer
        feed = reader.feed_data
        count = 0
        t0 = time.perf_counter_ns()
        for c in chunks:
            feed(c)
            count += len(buffer)
            buffer.clear()
        dt = time.perf_counter_ns() - t0
    finally:
        loop.close()
    assert count == frames, count
    return dt / frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--ours-only", action="store_true")
    args = ap.parse_args()
    stream = make_stream(args.frames, args.size)
    chunks = split(stream, args.chunk)
    print(f"{args.frames} text frames of {args.size} B, {len(chunks)} feeds of {args.chunk} B")
    benches = [("transports.frames.FrameDecoder", bench_ours)]
    if not args.ours_only:
        benches += [("wsproto FrameProtocol", bench_wsproto_frames), ("wsproto Connection", bench_wsproto_conn)]
        for module, name, fn in (
            ("websockets", "websockets Protocol (sans-IO)", bench_websockets),
            ("aiohttp", "aiohttp WebSocketReader", bench_aiohttp),
        ):
            try:
                __import__(module)
            except ImportError:
                continue
            benches.append((name, fn))
    results = {}
    for name, fn in benches:
        slow = "wsproto" in name or "websockets" in name
        runs = max(1, args.runs // 3) if slow else args.runs
        best = min(fn(chunks, args.frames) for _ in range(runs))
        results[name] = best
        print(f"{name:34s} {best:9.1f} ns/frame")
    if len(results) > 1:
        ours = results["transports.frames.FrameDecoder"]
        for name, v in results.items():
            if v is not ours:
                print(f"speed-up vs {name}: {v / ours:.1f}x")


if __name__ == "__main__":
    main()
