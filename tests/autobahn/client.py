"""Autobahn|Testsuite client: echo every case of the fuzzingserver through our ClientProtocol.

Run by ``tests/autobahn/run`` with the project venv and ``PYTHONPATH`` = repo root::

    python tests/autobahn/client.py --port 9001 --agent wirestate-fast --frame-path fast

Loop (the fuzzingserver's client protocol): ``/getCaseCount`` -> for each case
``/runCase?case=N&agent=A`` (echo every message until the server closes) ->
``/updateReports?agent=A`` (the server writes its reports before it closes).

One session = one blocking TCP socket driven by :func:`run_session`, the only
piece that knows the protocol; swap it for the engine's ``Connection`` later.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from transports.websocket import (
    Accepted,
    ClientProtocol,
    Close,
    Failure,
    ProtocolState,
    Rejected,
)

CHUNK = 64 * 1024
RECV_TIMEOUT = 10.0  # seconds, per recv(): nothing may hang
DRAIN_TIMEOUT = 10.0  # seconds, after our close frame: wait for the server's TCP close
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # 9.* sends up to 16 MiB


@dataclass
class SessionResult:
    """What one WebSocket session did, as far as the test driver cares."""

    messages: list[str | bytes] = field(default_factory=list)  # kept only with keep=True
    received: int = 0  # data messages received
    close_received: tuple[int, str] | None = None
    close_sent: tuple[int, str] | None = None
    failure: Failure | None = None  # we failed the connection (peer broke the protocol)
    eof_without_close: bool = False  # the server dropped TCP without a close frame
    drain_timed_out: bool = False  # the server did not close TCP after the close handshake


def run_session(
    host: str,
    port: int,
    resource: str,
    frame_path: str,
    *,
    echo: bool = True,
    keep: bool = False,
) -> SessionResult:
    """One WebSocket session over a blocking socket; echo messages until the server closes.

    After each ``receive_data``: write ``data_to_send()`` (pongs, close reply)
    first, then the echoes. The protocol queued those replies while parsing
    frames that precede the echoed message's completion (a ping between two
    fragments is answered before the message exists), and Autobahn compares
    the order of pongs and messages. After a close/failure the protocol no
    longer sends data, so an echo never follows our close frame.
    """
    result = SessionResult()
    proto = ClientProtocol(
        f"{host}:{port}",
        resource,
        max_message_size=MAX_MESSAGE_SIZE,
        frame_path=frame_path,
    )
    with socket.create_connection((host, port), timeout=RECV_TIMEOUT) as sock:
        sock.settimeout(RECV_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(proto.connect())
        while True:
            data = sock.recv(CHUNK)
            if not data:
                proto.receive_eof()  # raises InvalidHandshake before the handshake
                result.eof_without_close = True
                return result
            events = proto.receive_data(data)
            out = bytearray(proto.data_to_send())
            closing = False
            for event in events:
                kind = type(event)
                if kind is str or kind is bytes:
                    result.received += 1
                    if keep:
                        result.messages.append(event)  # type: ignore[arg-type]
                    if echo and proto.state is ProtocolState.OPEN:
                        if kind is str:
                            out += proto.send_text(event)  # type: ignore[arg-type]
                        else:
                            out += proto.send_bytes(event)  # type: ignore[arg-type]
                elif kind is Close:
                    closing = True
                elif kind is Failure:
                    result.failure = event  # type: ignore[assignment]
                    closing = True
                elif kind is Rejected:
                    raise ConnectionError(f"handshake rejected: HTTP {event.status}")  # type: ignore[attr-defined]
                elif kind is Accepted:
                    pass
            if proto.state is ProtocolState.CLOSED and not closing:
                closing = True
            if out:
                try:
                    sock.sendall(out)
                except OSError:
                    if not closing:
                        raise
            if closing:
                result.close_received = proto.close_received
                result.close_sent = proto.close_sent
                result.drain_timed_out = not _drain(sock)
                proto.receive_eof()
                return result


def _drain(sock: socket.socket) -> bool:
    """Read (and drop) until the server closes TCP; False if it did not in time."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(CHUNK):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset after the close handshake: closed all the same
            return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--agent", required=True, help="agent name in the reports")
    parser.add_argument("--frame-path", required=True, choices=("fast", "wsproto"))
    parser.add_argument("--result-file", help="write a JSON run record here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    started = time.monotonic()
    agent = quote(args.agent, safe="")
    count_session = run_session(args.host, args.port, "/getCaseCount", args.frame_path, echo=False, keep=True)
    if len(count_session.messages) != 1:
        print(f"getCaseCount: expected one message, got {count_session.messages!r}", file=sys.stderr)
        return 2
    case_count = int(count_session.messages[0])
    print(f"[{args.agent}] server reports {case_count} cases (frame_path={args.frame_path})", flush=True)

    errors: list[dict[str, object]] = []
    completed = 0
    for case in range(1, case_count + 1):
        case_started = time.monotonic()
        try:
            outcome = run_session(
                args.host, args.port, f"/runCase?case={case}&agent={agent}", args.frame_path
            )
        except Exception as exc:  # one broken case must not stop the run
            errors.append({"case": case, "error": f"{type(exc).__name__}: {exc}"})
            print(f"[{args.agent}] case #{case}: client error {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        completed += 1
        if outcome.drain_timed_out:
            print(f"[{args.agent}] case #{case}: server did not close TCP within {DRAIN_TIMEOUT:.0f} s", file=sys.stderr, flush=True)
        if not args.quiet and (case % 50 == 0 or case == case_count):
            print(f"[{args.agent}] {case}/{case_count} cases ({time.monotonic() - started:.1f} s; last {time.monotonic() - case_started:.2f} s)", flush=True)

    run_session(args.host, args.port, f"/updateReports?agent={agent}", args.frame_path, echo=False)
    seconds = time.monotonic() - started
    print(f"[{args.agent}] done: {completed}/{case_count} sessions completed, {len(errors)} client errors, {seconds:.1f} s", flush=True)

    if args.result_file:
        record = {
            "agent": args.agent,
            "frame_path": args.frame_path,
            "case_count": case_count,
            "completed": completed,
            "errors": errors,
            "seconds": round(seconds, 3),
        }
        with open(args.result_file, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
