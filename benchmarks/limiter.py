"""Micro-benchmark of the rate limiter (engine/ratelimit.py) against its peers, in one run.

Two measures:

1. **Uncontended decision**, ns per call: a limiter with room says yes
   (``try_acquire`` that succeeds, or ``await acquire()`` that needn't wait).
   Each limiter is set to 100 per second; calls come in batches of 50 (always
   under the limit), each batch on a fresh or cleared limiter, so every library
   decides on the small state a real exchange limit has. Only the calls are
   timed. Rounds interleave the libraries; the table shows each one's median.
2. **Release lateness** of a blocked acquire, on a real asyncio loop: one task
   acquires 200 times from a limiter of 100 per second with no burst (one every
   10 ms). The ideal schedule is ``first + k * 10 ms``; lateness is each release's
   delay behind it (a limiter that schedules from its late wake-ups drifts, and
   its lateness grows). wirestate computes each release time and sleeps once
   until it, so what remains is the event loop's own timer lateness (epoll
   waits in whole milliseconds): the "loop alone" rows, which sleep straight to
   each ideal time, are that floor. On the tests' virtual clocks it is exact.

Peers: aiolimiter (leaky bucket), limits (moving window, memory storage) and
pyrate-limiter (in-memory bucket), all in the ``bench`` extra::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m benchmarks.limiter          # or: python -m benchmarks --only limiter

(``--site DIR`` adds another environment's site-packages, e.g. a scratch venv
that has the peers.) Without them the peer rows say "not installed".
``--quick`` runs fewer rounds; ``--json`` prints the result as JSON.

Every measurement runs in a fresh process: some peers start background threads
(pyrate-limiter's leaker, limits' expiry timer) that would otherwise take the
GIL from whatever is measured next.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 50  # decisions per batch: under the 100/s limit, so every one says yes
RATE = 100  # per second

SyncCall = Callable[[], object]
AsyncCall = Callable[[], Awaitable[object]]


# -- uncontended decisions ---------------------------------------------------------------


class Case:
    """One decision row; ``build(loop)`` returns ``make``, which gives a fresh (or
    cleared) decision callable per batch (it may be a coroutine function)."""

    def __init__(
        self, name: str, call: str, requires: str, is_async: bool, build: Callable[[Any], Any], note: str = ""
    ) -> None:
        self.name, self.call, self.requires, self.is_async, self.build, self.note = (
            name, call, requires, is_async, build, note,
        )


def _wirestate(algorithm: str, blocking: bool) -> Callable[[Any], Any]:
    def build(loop: asyncio.AbstractEventLoop) -> Any:
        from engine.ratelimit import RateLimit

        burst = BATCH if algorithm == "gcra" else 1  # room for the whole batch
        rate = RateLimit.per(1.0, RATE, algorithm=algorithm, burst=burst)  # type: ignore[arg-type]
        if blocking:
            return lambda: rate.limiter(clock=loop.time).acquire
        return lambda: rate.limiter(clock=loop.time).try_acquire

    return build


def _aiolimiter(check_only: bool) -> Callable[[Any], Any]:
    def build(loop: Any) -> Any:
        from aiolimiter import AsyncLimiter  # type: ignore[import-not-found,unused-ignore]

        if check_only:
            return lambda: AsyncLimiter(RATE, 1.0).has_capacity
        return lambda: AsyncLimiter(RATE, 1.0).acquire

    return build


def _limits(aio: bool) -> Callable[[Any], Any]:
    def build(loop: Any) -> Any:
        import limits  # type: ignore[import-not-found,unused-ignore]
        import limits.aio.storage  # type: ignore[import-not-found,unused-ignore]
        import limits.aio.strategies  # type: ignore[import-not-found,unused-ignore]
        import limits.storage  # type: ignore[import-not-found,unused-ignore]
        import limits.strategies  # type: ignore[import-not-found,unused-ignore]

        item = limits.RateLimitItemPerSecond(RATE)
        if aio:
            aio_limiter = limits.aio.strategies.MovingWindowRateLimiter(limits.aio.storage.MemoryStorage())

            async def make_aio() -> AsyncCall:
                await aio_limiter.clear(item, "k")
                hit = aio_limiter.hit
                return lambda: hit(item, "k")

            return make_aio
        sync_limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())

        def make() -> SyncCall:
            sync_limiter.clear(item, "k")
            hit = sync_limiter.hit
            return lambda: hit(item, "k")

        return make

    return build


def _pyrate(aio: bool) -> Callable[[Any], Any]:
    def build(loop: Any) -> Any:
        import pyrate_limiter  # type: ignore[import-not-found,unused-ignore]

        pyrate = pyrate_limiter.Limiter(pyrate_limiter.Rate(RATE, pyrate_limiter.Duration.SECOND))

        def make() -> Any:
            pyrate.buckets()[0].flush()
            if aio:
                try_acquire_async = pyrate.try_acquire_async
                return lambda: try_acquire_async("k", blocking=False)
            try_acquire = pyrate.try_acquire
            return lambda: try_acquire("k", blocking=False)

        return make

    return build


CASES = [
    Case("wirestate gcra", "try_acquire()", "engine", False, _wirestate("gcra", False)),
    Case("wirestate gcra", "await acquire()", "engine", True, _wirestate("gcra", True)),
    Case("wirestate window", "try_acquire()", "engine", False, _wirestate("window", False)),
    Case("wirestate window", "await acquire()", "engine", True, _wirestate("window", True)),
    Case("wirestate sliding", "try_acquire()", "engine", False, _wirestate("sliding", False)),
    Case("wirestate sliding", "await acquire()", "engine", True, _wirestate("sliding", True)),
    Case("aiolimiter", "await acquire()", "aiolimiter", True, _aiolimiter(False)),
    Case("aiolimiter", "has_capacity()", "aiolimiter", False, _aiolimiter(True), "check only, takes nothing"),
    Case("limits moving window", "hit()", "limits", False, _limits(False)),
    Case("limits moving window", "await aio hit()", "limits", True, _limits(True)),
    Case("pyrate-limiter", "try_acquire(blocking=False)", "pyrate_limiter", False, _pyrate(False)),
    Case("pyrate-limiter", "await try_acquire_async()", "pyrate_limiter", True, _pyrate(True)),
]


async def time_case(case: Case, batches: int) -> float:
    """ns per decision over ``batches`` batches (only the calls are timed)."""
    make = case.build(asyncio.get_running_loop())
    clock = time.perf_counter_ns

    async def one_batch() -> int:
        fn = make()
        if asyncio.iscoroutine(fn):  # an async reset
            fn = await fn
        if case.is_async:
            start = clock()
            for _ in range(BATCH):
                await fn()
            return clock() - start
        start = clock()
        for _ in range(BATCH):
            fn()
        return clock() - start

    for _ in range(20):  # warm up
        await one_batch()
    gc.collect()
    total = 0
    for _ in range(batches):
        total += await one_batch()
    return total / (batches * BATCH)


# -- lateness of a blocked acquire -------------------------------------------------------


async def lateness(acquire: Callable[[], Awaitable[object]], clock: Callable[[], float], n: int) -> dict[str, float]:
    """Acquire ``n`` times in a row from a 100/s, burst-1 limiter; lateness behind
    ``first + k / 100`` in microseconds, and the rate achieved."""
    times = []
    for _ in range(n):
        await acquire()
        times.append(clock())
    first = times[0]
    late = sorted((t - (first + k / RATE)) * 1e6 for k, t in enumerate(times))
    return {
        "median_us": statistics.median(late),
        "p99_us": late[int(0.99 * (len(late) - 1))],
        "max_us": late[-1],
        "rate_ratio": (n - 1) / (times[-1] - first) / RATE,
    }


async def _late_baseline(n: int) -> dict[str, float]:
    """The event loop alone: sleep until each ideal time (the floor for any limiter)."""
    import anyio

    start: list[float] = []

    async def tick() -> None:
        now = anyio.current_time()
        if not start:
            start.append(now)
            return
        start[0] += 1 / RATE
        await anyio.sleep(start[0] - now)

    return await lateness(tick, anyio.current_time, n)


async def _late_wirestate(algorithm: str, n: int) -> dict[str, float]:
    import anyio

    from engine.ratelimit import RateLimit

    limiter = RateLimit.per(1.0 / RATE, 1, algorithm=algorithm).limiter()  # type: ignore[arg-type]
    return await lateness(limiter.acquire, anyio.current_time, n)


async def _late_aiolimiter(n: int) -> dict[str, float]:
    from aiolimiter import AsyncLimiter  # type: ignore[import-not-found,unused-ignore]

    limiter = AsyncLimiter(1, 1.0 / RATE)
    return await lateness(limiter.acquire, asyncio.get_running_loop().time, n)


async def _late_pyrate(buffer_ms: int, n: int) -> dict[str, float]:
    import pyrate_limiter  # type: ignore[import-not-found,unused-ignore]

    pyrate = pyrate_limiter.Limiter(pyrate_limiter.Rate(1, 1000 // RATE), buffer_ms=buffer_ms)

    async def acquire() -> object:
        return await pyrate.try_acquire_async("k")

    return await lateness(acquire, asyncio.get_running_loop().time, n)


# key -> (row name, module it needs, backend, n divisor, coroutine function of n)
LATENESS: dict[str, tuple[str, str, str, int, Callable[[int], Awaitable[dict[str, float]]]]] = {
    "baseline": ("(asyncio loop alone: sleep to each ideal time)", "engine", "asyncio", 1, _late_baseline),
    "wirestate-gcra": ("wirestate gcra (asyncio)", "engine", "asyncio", 1, lambda n: _late_wirestate("gcra", n)),
    "wirestate-sliding": ("wirestate sliding (asyncio)", "engine", "asyncio", 1, lambda n: _late_wirestate("sliding", n)),
    "baseline-trio": ("(trio loop alone: sleep to each ideal time)", "trio", "trio", 1, _late_baseline),
    "wirestate-gcra-trio": ("wirestate gcra (trio)", "trio", "trio", 1, lambda n: _late_wirestate("gcra", n)),
    "aiolimiter": ("aiolimiter", "aiolimiter", "asyncio", 1, _late_aiolimiter),
    "pyrate-50": ("pyrate-limiter (buffer_ms=50, its default)", "pyrate_limiter", "asyncio", 4, lambda n: _late_pyrate(50, n)),
    "pyrate-0": ("pyrate-limiter (buffer_ms=0)", "pyrate_limiter", "asyncio", 1, lambda n: _late_pyrate(0, n)),
}


# -- processes ---------------------------------------------------------------------------


def child(kind: str, key: str, amount: int) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    if kind == "decision":
        result: Any = asyncio.run(time_case(CASES[int(key)], amount))
    else:
        _, _, backend, divisor, fn = LATENESS[key]
        import anyio

        result = anyio.run(fn, max(10, amount // divisor), backend=backend)
    json.dump(result, sys.stdout)


def run_child(sites: list[str], kind: str, key: str, amount: int) -> Any:
    cmd = [sys.executable, __file__, *[f"--site={s}" for s in sites], "--child", kind, key, str(amount)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=_pin())
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {key}: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def _pin() -> Callable[[], None] | None:
    """Every measurement on the first CPU (as the runner's clients), when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpus[0]})


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- the "limiter decision" slot of benchmarks/micro.py -----------------------------------


def limiter_decision_ns(quick: bool) -> float:
    """ns per uncontended ``try_acquire`` (GCRA), in this process: the value for the
    "limiter decision" row of ``python -m benchmarks`` (micro.py fills the slot once
    it imports this module)."""
    return float(asyncio.run(time_case(CASES[0], 400 if quick else 2000)))


try:
    from benchmarks.micro import register
except ImportError:  # run from elsewhere without the package: the script still works
    pass
else:
    register("limiter decision")(limiter_decision_ns)


# -- report ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {}
    for dist in ("anyio", "trio", "aiolimiter", "limits", "pyrate-limiter"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def main(argv: list[str] | None = None) -> None:
    """Run both measures, each in fresh processes, and print the tables (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--site", action="append", default=[], help="a scratch venv's site-packages with the peers")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "KEY", "AMOUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for site in args.site:
        sys.path.append(site)  # after the project's own packages: ours win on a clash
    if args.child:
        kind, key, amount = args.child
        child(kind, key, int(amount))
        return

    rounds, batches, n = (3, 400, 100) if args.quick else (7, 2000, 200)
    present = [(i, case) for i, case in enumerate(CASES) if installed(case.requires)]
    samples: dict[int, list[float]] = {i: [] for i, _ in present}
    for round_no in range(rounds):  # interleaved: every case once per round
        print(f"round {round_no + 1}/{rounds}", file=sys.stderr)
        for i, _ in present:
            samples[i].append(run_child(args.site, "decision", str(i), batches))
    late = []
    for key, (name, requires, *_rest) in LATENESS.items():
        if installed(requires):
            print(f"lateness: {name}", file=sys.stderr)
            late.append({"name": name, **run_child(args.site, "lateness", key, n)})

    reference = statistics.median(samples[0])  # wirestate gcra try_acquire
    decision_rows = [
        {
            "name": case.name,
            "call": case.call,
            "ns_per_op": statistics.median(samples[i]),
            "min": min(samples[i]),
            "max": max(samples[i]),
            "ratio": statistics.median(samples[i]) / reference,
            "note": case.note,
        }
        for i, case in present
    ]
    missing = sorted({case.requires for case in CASES if not installed(case.requires)})
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    result = {"decisions": decision_rows, "lateness": late, "missing": missing, "versions": versions(),
              "rounds": rounds, "batches": batches, "load_average": load[0]}  # fmt: skip
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), {os.cpu_count()} CPUs, "
        f"load {load[0]:.2f}; " + ", ".join(f"{k} {v}" for k, v in versions().items())
    )
    print(render(result))


def render(result: dict[str, Any]) -> str:
    """The two tables (decision time, release lateness) of a run's JSON result."""
    lines = [
        f"Uncontended decision: {RATE}/s limit, batches of {BATCH}, median of {result['rounds']} rounds x "
        f"{result['batches'] * BATCH} calls (one process each)",
        "",
        "| limiter | call | ns/op (median) | min-max | x wirestate gcra try_acquire |",
        "|---|---|---:|---:|---:|",
    ]
    for row in result["decisions"]:
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(
            f"| {row['name']} | `{row['call']}`{note} | {row['ns_per_op']:.0f} | "
            f"{row['min']:.0f}-{row['max']:.0f} | {row['ratio']:.2f} |"
        )
    for name in result["missing"]:
        lines.append(f"| {name} | not installed (pip install -e '.[bench]') | | | |")
    lines += [
        "",
        f"Blocked acquire, {RATE}/s with no burst, real clock: lateness behind first + k x {1000 // RATE} ms",
        "",
        "| limiter | median µs | p99 µs | max µs | rate achieved / nominal |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["lateness"]:
        lines.append(
            f"| {row['name']} | {row['median_us']:.0f} | {row['p99_us']:.0f} | {row['max_us']:.0f} | "
            f"{row['rate_ratio']:.3f} |"
        )
    if "limits" in result["versions"]:
        lines.append("| limits | no waiting API (the caller polls) | | | |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
