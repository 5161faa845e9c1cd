"""Order-book micro-benchmark (issue 18): wirestate's Book against the C ``order-book`` package and SortedDict.

Same work for every book, in one run: a fresh process per (interpreter,
round), pinned to one CPU, the garbage collector off while timing, and inside
it the books take turns every 2,000 deltas (or reads), so a load swing of
this shared machine hits them alike; ratios are taken per round:

1. **apply + best**: a 1,000-level-per-side book (0.1 price ticks, 8-decimal
   sizes, all given as the exchange's text); 200,000 single-level deltas drawn
   near the top (the distance from the best price is exponential, mean 10
   ticks), 20 % of them deletes (size ``"0"``); after every delta the best bid
   and the best ask are read. Every book parses the price and size text to
   ``Decimal`` (wirestate also keeps the text for checksums).
2. **top-25 read**: the best 25 levels per side of the same book, static
   (``Book.view(25)``, an immutable view, for wirestate; the C book's fastest
   public way for it, ``islice`` over ``items()``, or 25 ``index()`` calls,
   whichever is faster in that process).
3. **apply + top-25**: a delta, then the 25 best levels per side, every delta
   (a book whose readers want depth, not only the best level).
4. **checksum**: the OKX CRC32 over 25 levels per side, static book
   (wirestate ``okx_checksum``, the C book's ``checksum()`` with
   ``checksum_format="OKX"``).

Peers: ``order-book`` (what cryptofeed uses; 1.1.0 needs CPython 3.13,
what 3.11 gets is 0.6.1), ``sortedcontainers.SortedDict``, and a plain dict
with lazily kept best prices (the sketch DESIGN.md measured). Run the 3.13
rows from a scratch venv with the project's runtime dependencies,
``order-book`` and ``sortedcontainers`` (wirestate is imported from this tree
through ``PYTHONPATH``)::

    python3.13 -m venv /tmp/bookbench313
    /tmp/bookbench313/bin/pip install order-book==1.1.0 sortedcontainers <the project's runtime deps>
    python3.11 -m venv /tmp/bookbench311 && /tmp/bookbench311/bin/pip install order-book==0.6.1
    .venv/bin/python -m benchmarks.books --python313 /tmp/bookbench313/bin/python \\
        --site311 /tmp/bookbench311/lib/python3.11/site-packages

Ratios are taken within one interpreter and round (3.13 rows against the
3.13 C book); the dict with lazily kept best prices reads depth with
``heapq`` over the whole side (~0.4 ms), so its depth reads are timed once,
100 of them, outside the turns, and it has no apply + top-25 row.
``--quick`` runs fewer rounds and deltas; ``--json`` prints the rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LEVELS = 1000  # per side
TICK = Decimal("0.1")
MID = 10_000

Delta = tuple[bool, str, str]  # (is_bid, price text, size text)


# -- the data: the same for every book (one seed) -----------------------------------------------


def make_book(seed: int = 1) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(seed)
    bids = [(f"{MID - 0.1 * (i + 1):.1f}", f"{rng.uniform(0.001, 5):.8f}") for i in range(LEVELS)]
    asks = [(f"{MID + 0.1 * i:.1f}", f"{rng.uniform(0.001, 5):.8f}") for i in range(LEVELS)]
    return bids, asks


def make_deltas(n: int, seed: int = 2) -> list[Delta]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        is_bid = rng.random() < 0.5
        k = int(rng.expovariate(1 / 10))
        price = f"{MID - 0.1 * (k + 1):.1f}" if is_bid else f"{MID + 0.1 * k:.1f}"
        size = "0" if rng.random() < 0.2 else f"{rng.uniform(0.001, 5):.8f}"
        out.append((is_bid, price, size))
    return out


# -- the books, each behind the same four operations ------------------------------------------


class Subject:
    """One book under test: load, apply one level, best bid/ask, top 25, checksum."""

    name = ""

    def apply(self, is_bid: bool, price: str, size: str) -> None:
        raise NotImplementedError

    def best(self) -> object:
        raise NotImplementedError

    def top25(self) -> object:
        raise NotImplementedError

    def checksum(self) -> object:
        return None


class Wirestate(Subject):
    name = "wirestate Book"

    def __init__(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        from engine.books import Book
        from engine.books.checksum import okx_checksum

        self.book = Book("BTC-USDT")
        self.book.load(bids, asks)
        self._okx = okx_checksum
        self.apply = self.book.set_level  # type: ignore[method-assign,assignment]

    def best(self) -> object:
        book = self.book
        return book.best_bid, book.best_ask

    def top25(self) -> object:
        return self.book.view(25)

    def checksum(self) -> object:
        return self._okx(self.book)


class WirestateDriver(Wirestate):
    """The sans-IO driver's per-delta path: sequence check (Strict) + the book update."""

    name = "wirestate Books.apply (driver: BookUpdate, Strict rule)"

    def __init__(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        super().__init__(bids, asks)
        from engine.books import BookConfig, Books
        from engine.books.sequence import Strict
        from engine.events import BookSnapshot, BookUpdate

        self.books = Books(BookConfig(sequence=Strict()))
        self.books.snapshot(BookSnapshot(symbol="BTC-USDT", bids=tuple(bids), asks=tuple(asks), seq=0))
        self.book = self.books.book("BTC-USDT")
        self._delta = BookUpdate

    def prepare(self, deltas: list[Delta]) -> list[Any]:
        made = []
        for i, (is_bid, price, size) in enumerate(deltas, 1):
            level = ((price, size),)
            bids, asks = (level, ()) if is_bid else ((), level)
            made.append(self._delta(symbol="BTC-USDT", bids=bids, asks=asks, seq=i))
        return made


class CBook(Subject):
    def __init__(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        import importlib.metadata

        from order_book import OrderBook  # type: ignore[import-not-found,unused-ignore]

        self.name = f"C order-book {importlib.metadata.version('order-book')}"
        self.ob = OrderBook(checksum_format="OKX")
        self.ob.bids = {Decimal(p): Decimal(s) for p, s in bids}
        self.ob.asks = {Decimal(p): Decimal(s) for p, s in asks}
        self.bids, self.asks = self.ob.bids, self.ob.asks
        self._top = self._islice if self._fastest_top() == "islice" else self._index

    def apply(self, is_bid: bool, price: str, size: str) -> None:
        side = self.bids if is_bid else self.asks
        p = Decimal(price)
        s = Decimal(size)
        if s:
            side[p] = s
        elif p in side:
            del side[p]

    def best(self) -> object:
        return self.bids.index(0), self.asks.index(0)

    def _islice(self) -> object:
        return list(islice(self.bids.items(), 25)), list(islice(self.asks.items(), 25))

    def _index(self) -> object:
        b, a = self.bids.index, self.asks.index
        return [b(i) for i in range(25)], [a(i) for i in range(25)]

    def _fastest_top(self) -> str:
        if not hasattr(self.bids, "items"):  # (0.6.1 has no items())
            return "index"
        times = {}
        for name, fn in (("islice", self._islice), ("index", self._index)):
            t0 = time.perf_counter_ns()
            for _ in range(2000):
                fn()
            times[name] = time.perf_counter_ns() - t0
        return min(times, key=times.__getitem__)

    def top25(self) -> object:
        return self._top()

    def checksum(self) -> object:
        return self.ob.checksum()


class Sorted(Subject):
    name = "sortedcontainers SortedDict"

    def __init__(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        from sortedcontainers import SortedDict  # type: ignore[import-untyped,unused-ignore]

        self.bids = SortedDict({Decimal(p): Decimal(s) for p, s in bids})
        self.asks = SortedDict({Decimal(p): Decimal(s) for p, s in asks})

    def apply(self, is_bid: bool, price: str, size: str) -> None:
        side = self.bids if is_bid else self.asks
        p = Decimal(price)
        s = Decimal(size)
        if s:
            side[p] = s
        else:
            side.pop(p, None)

    def best(self) -> object:
        return self.bids.peekitem(-1), self.asks.peekitem(0)

    def top25(self) -> object:
        return self.bids.items()[-25:][::-1], self.asks.items()[:25]


class LazyDict(Subject):
    """A plain dict per side; the best price kept lazily (recomputed with max/min after it is deleted)."""

    name = "dict + lazily kept best prices"

    def __init__(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        self.bids = {Decimal(p): Decimal(s) for p, s in bids}
        self.asks = {Decimal(p): Decimal(s) for p, s in asks}
        self.best_bid: Decimal | None = max(self.bids)
        self.best_ask: Decimal | None = min(self.asks)

    def apply(self, is_bid: bool, price: str, size: str) -> None:
        p = Decimal(price)
        s = Decimal(size)
        if is_bid:
            if s:
                self.bids[p] = s
                if self.best_bid is not None and p > self.best_bid:
                    self.best_bid = p
            elif self.bids.pop(p, None) is not None and p == self.best_bid:
                self.best_bid = None
        else:
            if s:
                self.asks[p] = s
                if self.best_ask is not None and p < self.best_ask:
                    self.best_ask = p
            elif self.asks.pop(p, None) is not None and p == self.best_ask:
                self.best_ask = None

    def best(self) -> object:
        if self.best_bid is None:
            self.best_bid = max(self.bids)
        if self.best_ask is None:
            self.best_ask = min(self.asks)
        return (self.best_bid, self.bids[self.best_bid]), (self.best_ask, self.asks[self.best_ask])

    def top25(self) -> object:
        import heapq

        return heapq.nlargest(25, self.bids.items()), heapq.nsmallest(25, self.asks.items())


SUBJECTS: dict[str, Callable[..., Subject]] = {
    "wirestate": Wirestate,
    "driver": WirestateDriver,
    "cbook": CBook,
    "sorted": Sorted,
    "lazydict": LazyDict,
}


# -- one process: time the four measures -------------------------------------------------------


CHUNK = 2000  # deltas per turn: the books take turns, so a load swing hits them alike


def _apply_runner(subject: Subject, deltas: list[Delta]) -> Callable[[int, int], int]:
    """``(start, stop) -> ns`` applying ``deltas[start:stop]`` with a best bid/ask read after each."""
    if isinstance(subject, WirestateDriver):
        made = subject.prepare(deltas)
        apply_delta = subject.books.apply
        book = subject.book

        def run_driver(start: int, stop: int) -> int:
            t0 = time.perf_counter_ns()
            for delta in made[start:stop]:
                apply_delta(delta)
                book.best_bid
                book.best_ask
            return time.perf_counter_ns() - t0

        return run_driver
    apply, best = subject.apply, subject.best

    def run(start: int, stop: int) -> int:
        t0 = time.perf_counter_ns()
        for is_bid, price, size in deltas[start:stop]:
            apply(is_bid, price, size)
            best()
        return time.perf_counter_ns() - t0

    return run


def measure(keys: list[str], n: int) -> dict[str, dict[str, Any]]:
    """ns per operation of each measure for each book, the books taking turns in this process."""
    bids, asks = make_book()
    deltas = make_deltas(n)
    subjects = {key: SUBJECTS[key](bids, asks) for key in keys}
    out: dict[str, dict[str, Any]] = {key: {"name": s.name} for key, s in subjects.items()}
    readers = {k: s for k, s in subjects.items() if not isinstance(s, WirestateDriver)}
    fast_readers = {k: s for k, s in readers.items() if not isinstance(s, LazyDict)}
    summers = {k: s for k, s in readers.items() if s.checksum() is not None}
    fresh = {k: SUBJECTS[k](bids, asks) for k in fast_readers}
    runners = {k: _apply_runner(s, deltas) for k, s in subjects.items()}
    totals: dict[tuple[str, str], int] = {}
    counts: dict[tuple[str, str], int] = {}

    def turns(measure: str, group: dict[str, Any], rounds: int, ops: int, step: Callable[[str, int], int]) -> None:
        order = list(group)
        if not order:
            return  # (nothing of this kind among the subjects measured)
        for r in range(rounds):
            shift = r % len(order)
            for key in order[shift:] + order[:shift]:
                totals[key, measure] = totals.get((key, measure), 0) + step(key, r)
                counts[key, measure] = counts.get((key, measure), 0) + ops

    def timed(fn: Callable[[], object], times: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(times):
            fn()
        return time.perf_counter_ns() - t0

    def apply_top25(key: str, r: int) -> int:
        subject = fresh[key]
        apply, top25 = subject.apply, subject.top25
        t0 = time.perf_counter_ns()
        for is_bid, price, size in deltas[r * CHUNK // 4 : (r + 1) * CHUNK // 4]:
            apply(is_bid, price, size)
            top25()
        return time.perf_counter_ns() - t0

    chunks = max(n // CHUNK, 1)
    gc.collect()
    gc.disable()
    try:
        turns("apply", subjects, chunks, CHUNK, lambda k, r: runners[k](r * CHUNK, (r + 1) * CHUNK))
        turns("top25", fast_readers, chunks // 5, 500, lambda k, r: timed(readers[k].top25, 500))
        turns("apply_top25", fast_readers, chunks, CHUNK // 4, apply_top25)
        turns("checksum", summers, chunks // 5, 250, lambda k, r: timed(summers[k].checksum, 250))
        for key, subject in readers.items():  # the slow depth reads, once, not in turns
            if key not in fast_readers:
                totals[key, "top25"] = timed(subject.top25, 100)
                counts[key, "top25"] = 100
    finally:
        gc.enable()
    driver = next((s for s in subjects.values() if isinstance(s, WirestateDriver)), None)
    assert driver is None or driver.books.stats("BTC-USDT").applied == chunks * CHUNK
    for (key, m), total in totals.items():
        out[key][m] = total / counts[key, m]
    return out


def child(keys: list[str], n: int) -> None:
    """Run the books' measures in turns and print them as one JSON line."""
    print(json.dumps(measure(keys, n)))


# -- the run: a process per (interpreter, round); the books take turns inside it ---------------------

_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def run_child(python: str, keys: list[str], n: int, sites: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sites])}
    cmd = [python, "-m", "benchmarks.books", "--child", ",".join(keys), str(n)]
    pin = (lambda: os.sched_setaffinity(0, {_CPUS[0]})) if _CPUS else None
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, preexec_fn=pin)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def python_version(python: str) -> str:
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done.stdout.strip()


MEASURES = ("apply", "top25", "apply_top25", "checksum")
_HEADS = ("apply + best bid/ask", "top-25 read", "apply + top-25", "OKX checksum, 25 levels")


def _has_c_book(python: str, sites: list[str]) -> bool:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sites])}
    done = subprocess.run([python, "-c", "import order_book"], env=env, capture_output=True, timeout=60)
    return done.returncode == 0


def summarize(rounds: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Per book: median ns of each measure, and the median (and range) of the per-round ratio to the C book."""
    rows = []
    good = [r for r in rounds if "error" not in r]
    for key in keys:
        row: dict[str, Any] = {"key": key, "name": good[0][key]["name"] if good else key}
        for m in MEASURES:
            values = [r[key][m] for r in good if m in r[key]]
            if not values:
                continue
            row[m] = statistics.median(values)
            ratios = [r["cbook"][m] / r[key][m] for r in good if "cbook" in r and m in r["cbook"] and m in r[key]]
            if ratios:
                row[m + "_vs_c"] = (statistics.median(ratios), min(ratios), max(ratios))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run every book on each interpreter and print the tables (or JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--python313", help="a CPython 3.13 with order-book 1.1.0, sortedcontainers and the deps")
    parser.add_argument("--site311", action="append", default=[], help="site-packages with order-book 0.6.1 for 3.11")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--deltas", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("BOOKS", "DELTAS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0].split(","), int(args.child[1]))
        return
    rounds = args.rounds or (3 if args.quick else 5)
    n = args.deltas or (40_000 if args.quick else 200_000)
    groups: list[tuple[str, str, list[str], list[str]]] = []  # (label, python, sites, books)
    if args.python313:
        groups.append((f"CPython {python_version(args.python313)}", args.python313, [],
                       ["wirestate", "driver", "cbook", "sorted", "lazydict"]))  # fmt: skip
    here = ["wirestate", "driver", "sorted"]
    if _has_c_book(sys.executable, args.site311):
        here.insert(2, "cbook")
    groups.append((f"CPython {platform.python_version()} (project venv)", sys.executable, args.site311, here))
    results: list[list[dict[str, Any]]] = [[] for _ in groups]
    load_start = os.getloadavg()
    for r in range(rounds):
        for g, (label, python, sites, keys) in enumerate(groups):
            out = run_child(python, keys, n, sites)
            results[g].append(out)
            print(f"round {r + 1}/{rounds} {label}: {out}", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    tables = [(label, summarize(results[g], keys)) for g, (label, _, _, keys) in enumerate(groups)]
    meta = {"rounds": rounds, "deltas": n, "levels_per_side": LEVELS, "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": load_end}  # fmt: skip
    if args.json:
        json.dump({"meta": meta, "tables": tables, "raw": results}, sys.stdout, default=str)
        print()
        return
    print(f"Order books: {LEVELS} levels per side, {n:,} single-level deltas near the top (20 % deletes); "
          f"{rounds} rounds, one process per interpreter and round, the books taking turns in it every "
          f"{CHUNK:,} deltas; load {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {os.cpu_count()} CPUs.")
    print("ns: median over rounds. C / x: the C book's time over this book's, per round (median, min-max); "
          "> 1 is faster than the C book.")  # fmt: skip
    for label, rows in tables:
        print(f"\n{label}\n")
        print("| book | " + " | ".join(f"{h}, ns | C / x" for h in _HEADS) + " |")
        print("|---|" + "---:|---:|" * len(_HEADS))
        for row in rows:
            cells = []
            for m in MEASURES:
                cells.append(f"{row[m]:,.0f}" if m in row else "")
                if m + "_vs_c" in row:
                    med, lo, hi = row[m + "_vs_c"]
                    cells.append(f"{med:.2f} ({lo:.2f}-{hi:.2f})")
                else:
                    cells.append("")
            print(f"| {row['name']} | " + " | ".join(cells) + " |")
        errors = [r["error"] for r in results[[t[0] for t in tables].index(label)] if "error" in r]
        if errors:
            print(f"\n{len(errors)} round(s) failed: {errors[0]}")


# -- the "book update" slot of benchmarks/micro.py ------------------------------------------------


def book_update_ns(quick: bool) -> float:
    """ns per ``Books.apply`` of a one-level delta on a synced 1,000-level book, with a
    best bid/ask read after each (this interpreter)."""
    return float(measure(["driver"], 20_000 if quick else 100_000)["driver"]["apply"])


try:
    from benchmarks.micro import register
except ImportError:  # run from elsewhere without the package: the script still works
    pass
else:
    register("book update")(book_update_ns)


if __name__ == "__main__":
    main()
