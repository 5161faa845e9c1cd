"""The seeded simulation harness' own speed: virtual hours simulated per wall-clock second.

Ten managed connections (five symbols x two channels at one subscription
per connection; half of them rotate) against the in-process simulator under
the default seeded fault schedule, for ``--hours`` virtual hours per seed on
each backend; the wall time of each run (interpreter and imports excluded)
gives hours per second. Run alone::

    .venv/bin/python -m benchmarks.harness [--hours 200] [--seeds 3]

(needs the test extra: looptime and trio drive the virtual clocks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from engine.harness import Scenario, run_simulation

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD")


def scenario(seed: int, hours: float) -> Scenario:
    return Scenario(seed=seed, hours=hours, symbols=SYMBOLS, per_connection=1)  # 10 subscriptions -> 10 connections


def measure(hours: float, seeds: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"asyncio": [], "trio": []}
    for seed in range(1, seeds + 1):
        for backend in rates:
            start = time.perf_counter()
            report = run_simulation(scenario(seed, hours), backend)
            took = time.perf_counter() - start
            rates[backend].append(hours / took)
            print(f"  {backend:7} seed {seed}: {hours / took:7.1f} virtual h/s  ({report})", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=200.0)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rates = measure(args.hours, args.seeds)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("| backend | virtual hours per wall second (median) | range |")
    print("|---|---|---|")
    for backend, values in rates.items():
        print(f"| {backend} | {statistics.median(values):.1f} | {min(values):.1f}–{max(values):.1f} |")


if __name__ == "__main__":
    main()
