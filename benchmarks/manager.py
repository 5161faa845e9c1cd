"""Manager costs (issue 16): memory per managed connection, and ``flush()`` per subscription.

Run: ``.venv/bin/python -m benchmarks.manager [--connections 1000] [--subscriptions 10000]
[--rounds 3] [--profile] [--json]``.

The server is the blast server in ``hold`` mode (``benchmarks/blast.py``) in its
**own process**, pinned to its own CPU: every number below is the client side
only, over real 127.0.0.1 sockets. Every measurement runs in a fresh process
(pinned to the other CPU); rounds interleave the kinds.

- **memory**: one process opens N idle connections and reports the growth
  per connection, two ways, each in its own process: RSS (``/proc/self/statm``,
  no tracemalloc running: tracemalloc's own bookkeeping would inflate RSS)
  and tracemalloc (Python allocations only, with the top files that grew).
  ``plain``: N ``Connection`` objects (today's single connection), each
  entered and live, its ``hello`` received. ``managed``: one ``Manager``
  with ``max_subscriptions_per_connection=1`` and N subscriptions (so N
  managed connections, each live with its subscription acked and its
  ``hello`` received). Both warm up first (5 connections, resp. a 5-connection
  manager, kept open) so imports and lazy caches are not counted. The soft
  open-files limit is raised to the hard one; N is capped below it.
- **flush**: ``Manager.flush()`` placing N new subscriptions on one live
  connection whose subscriber acks at once (no network round trip), in µs per
  subscription: the ledger, placement and the subscription machines'
  transitions. ``--profile`` also prints a cProfile of one flush, and the cost
  of the subscription machine's transitions measured alone.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("plain", "managed")
MEASURES = ("rss", "traced")
WARMUP = 5


def _rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


def _malloc_trim() -> bool:
    """Give free heap pages back to the OS (glibc), so RSS counts what is live, not the peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


async def _acking(conn: Any, subs: list[Any]) -> None:
    pass  # "acked" at once: measures the manager, not the exchange


class _Hellos:
    """Counts the hold server's ``hello`` messages; ``wait(k)`` until k have arrived."""

    def __init__(self) -> None:
        import anyio

        self.count = 0
        self._target = 0
        self._event = anyio.Event()

    def handler(self, conn: Any, message: Any) -> None:
        self.count += 1
        if self.count >= self._target:
            self._event.set()

    async def wait(self, k: int, timeout: float = 60.0) -> None:
        import anyio

        self._target = k
        if self.count < k:
            self._event = anyio.Event()
            with anyio.fail_after(timeout):
                await self._event.wait()


async def _open_plain(stack: contextlib.AsyncExitStack, url: str, hellos: _Hellos, n: int) -> None:
    """Enter ``n`` live Connections on ``stack`` (held by the stack alone: no wrapper per connection)."""
    from engine import Connection, ConnectionSetup, State

    setup = ConnectionSetup(url=url, handler=hellos.handler)
    for _ in range(n):
        conn = await stack.enter_async_context(Connection(setup))
        await conn.wait_for(State.LIVE)


def _manager(url: str, n: int, hellos: _Hellos, prefix: str) -> Any:
    from engine import ConnectionSetup, Manager, Subscription, WebsocketSetup

    manager = Manager(
        WebsocketSetup(exchange="bench", use_multi_connection_management=True, max_subscriptions_per_connection=1)
    )
    subs = [Subscription("trades", f"{prefix}{i}") for i in range(n)]
    manager.add_connection(
        ConnectionSetup(url=url, handler=hellos.handler, subscriber=_acking, generate_subscriptions=lambda: subs)
    )
    return manager


def _top_files(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[list[Any]]:
    """The files whose Python allocations grew most: [file, KiB per connection] (divided later)."""
    stats = after.compare_to(before, "filename")
    top = []
    for stat in stats[:n]:
        name = stat.traceback[0].filename
        for marker in ("site-packages/", "/lib/python3"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        else:
            name = os.path.relpath(name, ROOT)
        top.append([name, stat.size_diff])
    return top


async def _memory(kind: str, measure: str, port: int, n: int) -> dict[str, Any]:
    """Open ``n`` idle connections of ``kind``; growth per connection by ``measure``."""
    from engine import State

    from benchmarks.blast import raise_nofile_limit

    limit = raise_nofile_limit()
    n = min(n, max(1, limit - 200))
    url = f"ws://127.0.0.1:{port}/"
    hellos = _Hellos()
    traced = measure == "traced"
    if traced:
        tracemalloc.start()
    async with contextlib.AsyncExitStack() as stack:
        if kind == "plain":
            await _open_plain(stack, url, hellos, WARMUP)
        else:
            await stack.enter_async_context(_manager(url, WARMUP, hellos, "W"))
        await hellos.wait(WARMUP)
        gc.collect()
        _malloc_trim()
        before_rss = _rss_kib()
        before_traced = tracemalloc.get_traced_memory()[0] if traced else 0
        snap0 = tracemalloc.take_snapshot() if traced else None
        t0 = time.perf_counter()
        if kind == "plain":
            await _open_plain(stack, url, hellos, n)
        else:
            manager = await stack.enter_async_context(_manager(url, n, hellos, "S"))
            infos = manager.connections()
            if len(infos) != n or any(i.state is not State.LIVE or i.subscriptions != 1 for i in infos):
                raise RuntimeError(f"expected {n} live managed connections with one subscription each")
        await hellos.wait(WARMUP + n)
        open_seconds = time.perf_counter() - t0
        gc.collect()
        result: dict[str, Any] = {"kind": kind, "measure": measure, "connections": n, "open_seconds": open_seconds}
        if traced:
            assert snap0 is not None
            grown = tracemalloc.get_traced_memory()[0] - before_traced
            result["kib_per_connection"] = grown / n / 1024
            top = _top_files(snap0, tracemalloc.take_snapshot(), 8)
            result["top_files"] = [[name, size / n / 1024] for name, size in top]
        else:
            result["kib_per_connection"] = (_rss_kib() - before_rss) / n
            if _malloc_trim():
                result["kib_per_connection_trimmed"] = (_rss_kib() - before_rss) / n
        # Report now and end the process: closing N connections is not part of it.
        print(json.dumps(result), flush=True)
        os._exit(0)
    return result  # (not reached)


async def _flush(port: int, n: int, profile: bool) -> dict[str, Any]:
    """``flush()`` of ``n`` new subscriptions on one live managed connection."""
    from engine import ConnectionSetup, Manager, Subscription, WebsocketSetup

    subs: list[Subscription] = []
    hellos = _Hellos()
    manager = Manager(WebsocketSetup(exchange="bench", use_multi_connection_management=True))
    manager.add_connection(
        ConnectionSetup(url=f"ws://127.0.0.1:{port}/", handler=hellos.handler, subscriber=_acking,
                        generate_subscriptions=lambda: subs)  # fmt: skip
    )
    result: dict[str, Any] = {"subscriptions": n}
    async with manager:
        # warm up the code paths with a small flush (not timed)
        subs.extend(Subscription("warm", f"W{i}") for i in range(100))
        await manager.flush()
        subs.extend(Subscription("trades", f"S{i}") for i in range(n))
        gc.collect()
        t0 = time.perf_counter()
        await manager.flush()
        took = time.perf_counter() - t0
        if len(manager.subscriptions()) != n + 100 or len(manager.connections()) != 1:
            raise RuntimeError("flush did not place every subscription on the one connection")
        result["us_per_subscription"] = took / n * 1e6
        if profile:  # a second flush of as many more, under the profiler (not the timed one)
            subs.extend(Subscription("book", f"S{i}") for i in range(n))
            profiler = cProfile.Profile()
            profiler.enable()
            await manager.flush()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
            result["profile"] = out.getvalue()
    return result


def transition_cost(n: int = 20_000) -> dict[str, float]:
    """µs per subscription-machine transition (send, acked) on a ledger entry, measured alone."""
    from engine.ledger import Ledger
    from engine.subscriptions import Subscription

    ledger = Ledger(lambda *args: None)
    entries = [ledger.add(Subscription("trades", f"T{i}"), "s#1", "s") for i in range(n)]
    t0 = time.perf_counter()
    for entry in entries:
        entry.fire_if("send")
    t1 = time.perf_counter()
    for entry in entries:
        entry.fire_if("acked")
    t2 = time.perf_counter()
    more = [ledger.add(Subscription("book", f"T{i}"), "s#1", "s") for i in range(n)]
    t3 = time.perf_counter()
    for entry in more:
        entry.may_fire("send")
    t4 = time.perf_counter()
    return {
        "send_us": (t1 - t0) / n * 1e6,
        "acked_us": (t2 - t1) / n * 1e6,
        "may_fire_us": (t4 - t3) / n * 1e6,
    }


# -- processes -------------------------------------------------------------------


def _child(argv: list[str]) -> None:
    import anyio

    p = argparse.ArgumentParser()
    p.add_argument("task", choices=["memory", "flush"])
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--measure", choices=MEASURES)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--subscriptions", type=int, default=10_000)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.task == "memory":
            result = anyio.run(_memory, a.kind, a.measure, a.port, a.connections)
        else:
            result = anyio.run(_flush, a.port, a.subscriptions, a.profile)
            if a.profile:
                result["transitions"] = transition_cost()
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        os._exit(1)
    print(json.dumps(result), flush=True)
    os._exit(0)


def _run_child(args: list[str], timeout: float) -> dict[str, Any]:
    from benchmarks.runner import CLIENT_CPU, _pin

    cmd = [sys.executable, "-m", "benchmarks.manager", "--child", *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_pin(CLIENT_CPU))  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return {"error": f"no output; stderr: {proc.stderr.strip()[-300:]}"}
    try:
        out: dict[str, Any] = json.loads(lines[0])
    except json.JSONDecodeError:
        return {"error": f"bad output: {lines[0][:200]}"}
    return out


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def run(connections: int, subscriptions: int, rounds: int, profile: bool) -> dict[str, Any]:
    """Every measurement ``rounds`` times (kinds interleaved), against one hold server."""
    from benchmarks.runner import server

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    samples: dict[str, list[dict[str, Any]]] = {f"{k}/{m}": [] for k in KINDS for m in MEASURES}
    flushes: list[dict[str, Any]] = []
    errors: list[str] = []
    load_start = os.getloadavg()
    with server("hold") as port:
        for r in range(rounds):
            order = [(k, m) for m in MEASURES for k in KINDS]
            shift = r % len(order)
            for kind, measure in order[shift:] + order[:shift]:
                out = _run_child(["memory", "--kind", kind, "--measure", measure, "--port", str(port),
                                  "--connections", str(connections)], 300)  # fmt: skip
                if "error" in out:
                    errors.append(f"{kind}/{measure}: {out['error']}")
                    log(f"  round {r + 1}: {kind} {measure}: {out['error']}")
                else:
                    samples[f"{kind}/{measure}"].append(out)
                    log(f"  round {r + 1}: {kind} {measure}: {out['kib_per_connection']:.1f} KiB/conn")
            out = _run_child(["flush", "--port", str(port), "--subscriptions", str(subscriptions),
                              *(["--profile"] if profile and r == 0 else [])], 300)  # fmt: skip
            if "error" in out:
                errors.append(f"flush: {out['error']}")
                log(f"  round {r + 1}: flush: {out['error']}")
            else:
                flushes.append(out)
                log(f"  round {r + 1}: flush: {out['us_per_subscription']:.1f} µs/subscription")
    rows = []
    for key, outs in samples.items():
        kind, measure = key.split("/")
        values = [o["kib_per_connection"] for o in outs]
        row: dict[str, Any] = {"kind": kind, "measure": measure, "summary": _summary(values), "samples": values}
        if outs:
            row["connections"] = outs[0]["connections"]
            row["open_seconds"] = statistics.median(o["open_seconds"] for o in outs)
        if measure == "traced" and outs:
            row["top_files"] = outs[len(outs) // 2]["top_files"]
        rows.append(row)
    result: dict[str, Any] = {
        "memory": rows,
        "flush": {"subscriptions": subscriptions, "summary": _summary([f["us_per_subscription"] for f in flushes]),
                  "samples": [f["us_per_subscription"] for f in flushes]},  # fmt: skip
        "errors": errors,
        "load_average": [load_start[0], os.getloadavg()[0]],
        "rounds": rounds,
    }
    profiled = next((f for f in flushes if "profile" in f), None)
    if profiled is not None:
        result["flush"]["profile"] = profiled["profile"]
        result["flush"]["transitions"] = profiled["transitions"]
    return result


def render(result: dict[str, Any]) -> str:
    """Markdown tables of :func:`run`'s result."""
    lines = [
        "| connections (idle, client side only) | measure | KiB/conn (median) | range | open N s |",
        "|---|---|---:|---:|---:|",
    ]
    labels = {"plain": "plain `Connection`", "managed": "managed (`Manager`, 1 subscription each)"}
    for row in result["memory"]:
        s = row["summary"]
        if not s["n"]:
            lines.append(f"| {labels[row['kind']]} | {row['measure']} | failed | | |")
            continue
        lines.append(
            f"| {labels[row['kind']]} ×{row.get('connections', '?')} | {row['measure']} | {s['median']:.1f} | "
            f"{s['min']:.1f}–{s['max']:.1f} | {row.get('open_seconds', 0):.2f} |"
        )
    f = result["flush"]
    s = f["summary"]
    lines += ["", "| flush() | µs per subscription (median) | range |", "|---|---:|---:|"]
    if s["n"]:
        lines.append(f"| {f['subscriptions']:,} new subscriptions, one connection | {s['median']:.1f} | "
                     f"{s['min']:.1f}–{s['max']:.1f} |")  # fmt: skip
    else:
        lines.append(f"| {f['subscriptions']:,} new subscriptions | failed | |")
    for error in result.get("errors", []):
        lines.append(f"\nerror: {error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the memory and flush measurements and print tables (or JSON)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.manager", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one flush; time the transitions alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.connections, args.subscriptions, args.rounds, args.profile)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return
    print(render(result))
    flush = result["flush"]
    if "transitions" in flush:
        t = flush["transitions"]
        print(f"\nsubscription machine alone: send {t['send_us']:.1f} µs, acked {t['acked_us']:.1f} µs, "
              f"may_fire {t['may_fire_us']:.2f} µs")  # fmt: skip
        print("\n" + flush["profile"])
    for row in result["memory"]:
        if "top_files" in row:
            print(f"\n{row['kind']}: top files by traced growth (KiB per connection)")
            for name, kib in row["top_files"]:
                print(f"  {kib:6.2f}  {name}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
