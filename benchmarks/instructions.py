"""Round trips counted in instructions: the request path's cost without the machine's noise.

The round-trip phase's times swing by a third from hour to hour on a shared
machine, so a change worth 1-3 % cannot be seen in them. This counts instead
the user-space instructions one round trip takes in the client process,
under valgrind's callgrind (no cache simulation): each client of the
round-trip phase runs ``N`` and ``N + DELTA`` round trips at 100 in flight
against the echo server, and the difference of the two totals divided by
``DELTA`` is the cost of one request (start-up, imports, connecting and the
warm-up cancel out). Counts repeat to ~0.3 % (0.01 % against the same
server process); the client is ~50x slower
under valgrind, so the echo server always has its answers ready (reads
carry up to 100 of them, the best batching the client can get).

Kernel time is not counted: a ``send`` that wakes the server costs ~14 us of
system time on this VM, which python-websockets and the floor pay per request
and wirestate per ~14 (it coalesces). So this is not the round-trip ratio; it
is the instrument for changes to the request path.

Run (valgrind must be installed; ~1.5 minutes)::

    .venv/bin/python -m benchmarks.instructions [--clients raw-socket websockets wirestate-fast]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

from benchmarks.runner import ROOT, server

__all__ = ["instructions_per_request", "main"]

CLIENTS = ("raw-socket", "websockets", "wirestate-fast")
LABELS = {
    "raw-socket": "floor: asyncio.Protocol + hand parser + dict of futures",
    "websockets": "python-websockets + dict of futures by id",
    "wirestate-fast": "wirestate Connection.request (matcher)",
}
_COLLECTED = re.compile(r"Collected : (\d+)")


def _instructions(client: str, port: int, requests: int, inflight: int) -> int:
    """User-space instructions of one client process doing ``requests`` round trips."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--cache-sim=no", "--branch-sim=no",
           sys.executable, "-m", "benchmarks.clients", "roundtrip", client, "--port", str(port),
           "--messages", str(requests), "--inflight", str(inflight), "--timeout", "900"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None or '"error"' in proc.stdout:
        raise RuntimeError(f"{client}: {proc.stdout.strip()[-200:]} {proc.stderr.strip()[-300:]}")
    return int(found.group(1))


def instructions_per_request(client: str, port: int, base: int = 2_000, delta: int = 10_000, inflight: int = 100) -> float:
    """Instructions one more round trip costs ``client`` (the difference of two runs, see the module doc)."""
    return (_instructions(client, port, base + delta, inflight) - _instructions(client, port, base, inflight)) / delta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--delta", type=int, default=10_000, help="round trips between the two runs")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks.instructions needs valgrind (Debian: apt install valgrind)")
    counts: dict[str, float] = {}
    with server("echo") as port:
        for client in args.clients:
            print(f"{client}: counting ...", file=sys.stderr, flush=True)
            counts[client] = instructions_per_request(client, port, delta=args.delta)
    reference = counts.get("websockets")
    print("| client | instructions per round trip (100 in flight) | × python-websockets' count |")
    print("|---|---:|---:|")
    for client, count in counts.items():
        ratio = f"{count / reference:.2f}" if reference else "-"
        print(f"| {LABELS[client]} | {count:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
