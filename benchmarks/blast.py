"""Blast server: a hand-rolled WebSocket server that is never the bottleneck.

It is deliberately *not* a WebSocket library. It parses the HTTP upgrade
request by hand, answers ``101`` with the computed ``Sec-WebSocket-Accept``
(no extensions, so no compression), and then, depending on the mode:

``blast``
    writes N pre-encoded, unmasked ~200-byte JSON text frames in 256 KiB
    writes (the whole stream is encoded once at start-up, every message with
    its own ``seq``), then a close frame (1000), then waits briefly for the
    client's close frame and drops the TCP connection.
``hold``
    sends one small ``hello`` text frame and keeps the connection open until
    the client sends a close frame, answers it with a close frame and drops
    the connection (pings are answered with pongs). Used for the handshake
    latency and idle-memory measurements.
``echo``
    answers every text frame the client sends with the same payload,
    unmasked (a request ``{"id":7,...}`` gets a response carrying ``"id":7``),
    all the answers to one read in one write; pings get pongs, a close frame
    is echoed and the connection dropped. An ``asyncio.Protocol`` with no
    per-frame awaits: the round-trip benchmark's server, the same for every
    client.

Run it as its own process (``python -m benchmarks.blast --mode blast
--messages N``): it prints ``PORT <n>`` once listening, and exits when its
stdin reaches EOF (the parent went away) or after ``--lifetime`` seconds,
whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import resource
import struct
import sys
import threading

__all__ = ["GUID", "accept_key", "encode_frame", "make_message", "build_stream", "BlastServer", "EchoProtocol", "main"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BLOCK = 256 * 1024  # bytes per write while blasting
MESSAGE_SIZE = 200  # target size of one JSON message, before framing
CLOSE_1000 = b"\x88\x02\x03\xe8"  # FIN + close opcode, payload: status 1000
HELLO = b'{"event":"hello","channel":"trades","symbol":"BTC-USD"}'


def accept_key(key: bytes) -> bytes:
    """Compute ``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def encode_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """Encode one unmasked, final server->client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def make_message(seq: int) -> bytes:
    """A realistic trade message, padded with a ``pad`` field to ~:data:`MESSAGE_SIZE` bytes."""
    price = 43210.5 + (seq % 1000) / 10
    side = "buy" if seq % 2 else "sell"
    body = (
        f'{{"channel":"trades","symbol":"BTC-USD","price":"{price:.1f}","size":"0.0123",'
        f'"side":"{side}","seq":{seq},"ts":{1700000000.123456 + seq / 1000:.6f},"pad":"'
    )
    pad = max(0, MESSAGE_SIZE - len(body) - 2)
    return (body + "x" * pad + '"}').encode()


def build_stream(n: int) -> bytes:
    """All N text frames back to back (seq 0..N-1), encoded once."""
    return b"".join([encode_frame(make_message(seq)) for seq in range(n)])


class BlastServer:
    """The server's per-connection logic on asyncio streams."""

    def __init__(self, mode: str, stream: bytes) -> None:
        self.mode = mode
        self.stream = stream
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client: handshake, then blast or hold."""
        self.connections += 1
        try:
            if not await self._handshake(reader, writer):
                return
            if self.mode == "blast":
                await self._blast(reader, writer)
            else:
                await self._hold(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass  # the client went away: normal at the end of a benchmark
        finally:
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read the upgrade request, answer 101 (or 400 without a key)."""
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        key = None
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if key is None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        return True

    async def _blast(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write the pre-built stream in large blocks, then close (1000)."""
        view = memoryview(self.stream)
        for start in range(0, len(view), BLOCK):
            writer.write(view[start : start + BLOCK])
            await writer.drain()
        writer.write(CLOSE_1000)
        await writer.drain()
        # Give the client a moment to answer the close; whatever it sends ends it.
        try:
            await asyncio.wait_for(reader.read(4096), 5)
        except asyncio.TimeoutError:
            pass

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send ``hello``, then answer pings and wait for the client's close frame."""
        writer.write(encode_frame(HELLO))
        while True:
            head = await reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = await reader.readexactly(length)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:  # close: echo the status code and hang up
                writer.write(encode_frame(payload[:2] if len(payload) >= 2 else b"", 0x8))
                await writer.drain()
                return  # the server closes TCP first (RFC 6455 §7.1.1)
            if opcode == 0x9:  # ping -> pong
                writer.write(encode_frame(payload, 0xA))


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated, as one big-int operation (no per-byte loop)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class EchoProtocol(asyncio.Protocol):
    """``echo`` mode: handshake, then each client text/binary frame back unmasked (see the module doc)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        transport = self.transport
        assert transport is not None
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = None
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            del buf[: end + 4]
            if key is None:
                transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                transport.close()
                return
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
            )
            self.upgraded = True
        out = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            masked = b1 & 0x80
            end = pos + head + (4 if masked else 0) + length
            if end > size:
                break
            payload = bytes(buf[end - length : end])
            if masked:
                payload = unmask(payload, bytes(buf[pos + head : pos + head + 4]))
            pos = end
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2):
                out.append(encode_frame(payload, opcode))
            elif opcode == 0x9:
                out.append(encode_frame(payload, 0xA))
            elif opcode == 0x8:
                out.append(encode_frame(payload[:2], 0x8))
                transport.write(b"".join(out))
                transport.close()  # the server closes TCP first (RFC 6455 7.1.1)
                return
        del buf[:pos]
        if out:
            transport.write(b"".join(out))


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(mode: str, messages: int, lifetime: float, port: int = 0) -> None:
    """Listen on 127.0.0.1, print the port, serve until stdin EOF or ``lifetime``."""
    raise_nofile_limit()
    server: asyncio.Server
    if mode == "echo":
        server = await asyncio.get_running_loop().create_server(EchoProtocol, "127.0.0.1", port, backlog=2048)
    else:
        server_logic = BlastServer(mode, build_stream(messages) if mode == "blast" else b"")
        server = await asyncio.start_server(server_logic.handle, "127.0.0.1", port, backlog=2048)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        # Blocks until the parent closes our stdin (or dies).
        try:
            sys.stdin.buffer.read()
        finally:
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with server:
        try:
            await asyncio.wait_for(stop.wait(), lifetime)
        except asyncio.TimeoutError:
            pass


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["blast", "hold", "echo"], default="blast")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds at most")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.mode, args.messages, args.lifetime, args.port))


if __name__ == "__main__":
    main()
