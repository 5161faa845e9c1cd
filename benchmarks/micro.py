"""Registry of in-process micro-benchmarks of engine parts.

Each entry names a hot operation of the engine and, once the part exists, a
function that times it and returns nanoseconds per operation. Entries with no
function yet print as "not yet built", so the table shows what is missing.

To add one::

    @register("matcher lookup")
    def bench_matcher(quick: bool) -> float:
        ...  # build the object, time N operations with time.perf_counter_ns
        return ns_per_op

Modules that register entries are listed in :data:`PROVIDERS`; :func:`run_all`
imports them (a provider that fails to import leaves its slots "not yet built").

``python -m benchmarks.micro`` runs them alone (``--json`` for the runner).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Micro", "MICROS", "PROVIDERS", "register", "run_all", "main"]

MicroFn = Callable[[bool], float]  # (quick) -> ns per operation


@dataclass
class Micro:
    """One micro-benchmark slot."""

    name: str
    description: str
    fn: MicroFn | None = None


#: name -> slot; the order is the table's order.
MICROS: dict[str, Micro] = {
    m.name: m
    for m in (
        Micro("limiter decision", "engine/ratelimit.py: one acquire/deny decision of the weighted limiter"),
        Micro("matcher lookup", "engine/requests.py: does an incoming message answer a pending request?"),
        Micro("book update", "engine/books/: apply one delta to a synced order book"),
    )
}


def register(name: str, description: str = "") -> Callable[[MicroFn], MicroFn]:
    """Attach ``fn`` to the slot ``name`` (creating the slot if it is new)."""

    def attach(fn: MicroFn) -> MicroFn:
        slot = MICROS.setdefault(name, Micro(name, description))
        slot.fn = fn
        if description:
            slot.description = description
        return fn

    return attach


#: modules whose import registers micro-benchmarks
PROVIDERS = ("benchmarks.limiter", "benchmarks.matcher", "benchmarks.books")


def run_all(quick: bool = False) -> list[dict[str, object]]:
    """Import the providers, run every built micro-benchmark; rows for the report."""
    for module in PROVIDERS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"micro: {module} not loaded: {exc}", file=sys.stderr)
    rows: list[dict[str, object]] = []
    for slot in MICROS.values():
        row: dict[str, object] = {"name": slot.name, "description": slot.description}
        if slot.fn is None:
            row["status"] = "not yet built"
        else:
            try:
                row["ns_per_op"] = slot.fn(quick)
                row["status"] = "ok"
            except Exception as exc:  # one broken micro must not hide the others
                row["status"] = f"error: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the micro-benchmark rows (as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description="engine micro-benchmarks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # Under ``python -m`` this file is ``__main__``; the providers register into the
    # importable ``benchmarks.micro``, so run that module's registry.
    from benchmarks import micro

    rows = micro.run_all(args.quick)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
        return
    for row in rows:
        value = f"{row['ns_per_op']:.0f} ns/op" if row["status"] == "ok" else row["status"]
        print(f"{row['name']:<20} {value:<20} {row['description']}")


if __name__ == "__main__":
    main()
