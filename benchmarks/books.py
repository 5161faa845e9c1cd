"""Order-book micro-benchmark (issue 18): wirestate's Book against the C ``order-book`` package and SortedDict.

Same work for every book, in one run, interleaved rounds, a fresh process per
(book, round), pinned to one CPU, the garbage collector off while timing:

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

Ratios are taken within one interpreter (3.13 rows against the 3.13 C book).
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
            made.append(self._delta(symbol="BTC-USDT", bids=level if is_bid else (), asks=() if is_bid else level, seq=i))
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


def _per_op(start: int, count: int) -> float:
    return (time.perf_counter_ns() - start) / count


def measure(key: str, n: int) -> dict[str, Any]:
    """ns per operation of each measure for one book, in this process."""
    bids, asks = make_book()
    deltas = make_deltas(n)
    out: dict[str, Any] = {}
    subject = SUBJECTS[key](bids, asks)
    out["name"] = subject.name
    gc.collect()
    gc.disable()
    try:
        if isinstance(subject, WirestateDriver):
            made = subject.prepare(deltas)
            apply_delta = subject.books.apply
            book = subject.book
            start = time.perf_counter_ns()
            for delta in made:
                apply_delta(delta)
                book.best_bid
                book.best_ask
            out["apply"] = _per_op(start, n)
            assert subject.books.stats("BTC-USDT").applied == n
            return out
        apply, best, top25 = subject.apply, subject.best, subject.top25
        start = time.perf_counter_ns()
        for is_bid, price, size in deltas:
            apply(is_bid, price, size)
            best()
        out["apply"] = _per_op(start, n)
        reads = max(n // 10, 1000)
        start = time.perf_counter_ns()
        for _ in range(reads):
            top25()
        out["top25"] = _per_op(start, reads)
        fresh = SUBJECTS[key](*make_book())
        apply, top25 = fresh.apply, fresh.top25
        part = deltas[: n // 4]
        start = time.perf_counter_ns()
        for is_bid, price, size in part:
            apply(is_bid, price, size)
            top25()
        out["apply_top25"] = _per_op(start, len(part))
        if subject.checksum() is not None:
            sums = max(n // 20, 1000)
            checksum = subject.checksum
            start = time.perf_counter_ns()
            for _ in range(sums):
                checksum()
            out["checksum"] = _per_op(start, sums)
    finally:
        gc.enable()
    return out


def child(key: str, n: int) -> None:
    """Run one book's measures and print them as one JSON line."""
    print(json.dumps(measure(key, n)))


# -- the run: interleaved rounds, one process each -----------------------------------------------

_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def run_child(python: str, key: str, n: int, sites: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sites])}
    cmd = [python, "-m", "benchmarks.books", "--child", key, str(n)]
    pin = (lambda: os.sched_setaffinity(0, {_CPUS[0]})) if _CPUS else None
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, preexec_fn=pin)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def python_version(python: str) -> str:
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done.stdout.strip()


MEASURES = ("apply", "top25", "apply_top25", "checksum")


def main(argv: list[str] | None = None) -> None:
    """Run every book on each interpreter, interleaved, and print the tables (or JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--python313", help="a CPython 3.13 with order-book 1.1.0, sortedcontainers and the deps")
    parser.add_argument("--site311", action="append", default=[], help="site-packages with order-book 0.6.1 for 3.11")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--deltas", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("BOOK", "DELTAS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    rounds = args.rounds or (3 if args.quick else 5)
    n = args.deltas or (50_000 if args.quick else 200_000)
    groups: list[tuple[str, str, list[str], list[str]]] = []  # (label, python, sites, books)
    if args.python313:
        groups.append((f"CPython {python_version(args.python313)}", args.python313, [],
                       ["wirestate", "driver", "cbook", "sorted", "lazydict"]))  # fmt: skip
    groups.append((f"CPython {platform.python_version()} (project venv)", sys.executable, args.site311,
                   ["wirestate", "driver", "cbook", "sorted"]))  # fmt: skip
    cases = [(g, key) for g, (_, _, _, keys) in enumerate(groups) for key in keys]
    samples: dict[tuple[int, str], list[dict[str, Any]]] = {case: [] for case in cases}
    load_start = os.getloadavg()
    for r in range(rounds):
        shift = r % len(cases)
        for g, key in cases[shift:] + cases[:shift]:
            label, python, sites, _ = groups[g]
            out = run_child(python, key, n, sites)
            samples[(g, key)].append(out)
            print(f"round {r + 1}/{rounds} {label} {key}: {out}", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    rows = []
    for (g, key), outs in samples.items():
        good = [o for o in outs if "error" not in o]
        row: dict[str, Any] = {"group": groups[g][0], "key": key, "name": good[0]["name"] if good else key}
        if not good:
            row["error"] = outs[0]["error"]
        for m in MEASURES:
            values = [o[m] for o in good if m in o]
            if values:
                row[m] = statistics.median(values)
                row[m + "_range"] = (min(values), max(values))
        rows.append(row)
    for g in range(len(groups)):
        ref = next((r for r in rows if r["key"] == "cbook" and r["group"] == groups[g][0] and "apply" in r), None)
        for row in rows:
            if row["group"] == groups[g][0] and ref is not None:
                for m in MEASURES:
                    if m in row and m in ref:
                        row[m + "_vs_c"] = ref[m] / row[m]  # > 1: faster than the C book
    meta = {"rounds": rounds, "deltas": n, "levels_per_side": LEVELS, "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": load_end}  # fmt: skip
    if args.json:
        json.dump({"meta": meta, "rows": rows}, sys.stdout, default=str)
        print()
        return
    print(f"Order books: {LEVELS} levels per side, {n:,} single-level deltas near the top (20 % deletes), "
          f"median of {rounds} rounds (one process each, interleaved); load {load_start[0]:.2f} at start, "
          f"{load_end[0]:.2f} at end; {os.cpu_count()} CPUs")  # fmt: skip
    print("C / x: how many times faster than the C book of the same interpreter (> 1 is faster).\n")
    print("| interpreter | book | apply + best bid/ask, ns | C / x | top-25 read, ns | C / x "
          "| apply + top-25, ns | C / x | OKX checksum 25 levels, ns | C / x |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['group']} | {row['key']} | {row['error']} | | | | | | | |")
            continue
        cells = []
        for m in MEASURES:
            if m in row:
                lo, hi = row[m + "_range"]
                cells.append(f"{row[m]:,.0f} ({lo:,.0f}-{hi:,.0f})")
                cells.append(f"{row[m + '_vs_c']:.2f}" if m + "_vs_c" in row else "")
            else:
                cells += ["", ""]
        print(f"| {row['group']} | {row['name']} | " + " | ".join(cells) + " |")


# -- the "book update" slot of benchmarks/micro.py ------------------------------------------------


def book_update_ns(quick: bool) -> float:
    """ns per ``Books.apply`` of a one-level delta on a synced 1,000-level book, with a
    best bid/ask read after each (this interpreter)."""
    return float(measure("driver", 20_000 if quick else 100_000)["apply"])


try:
    from benchmarks.micro import register
except ImportError:  # run from elsewhere without the package: the script still works
    pass
else:
    register("book update")(book_update_ns)


if __name__ == "__main__":
    main()
