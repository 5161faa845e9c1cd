"""The ``wirestate`` console script: ``wirestate demo`` and ``wirestate diagrams``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _diagrams(args: argparse.Namespace) -> int:
    from machines.diagrams import render_all, stale_files

    directory = Path(args.dir)
    if args.check:
        stale = stale_files(directory)
        if stale:
            print(f"diagrams are stale: {', '.join(stale)} in {directory}/ - run `wirestate diagrams`", file=sys.stderr)
            return 1
        print(f"diagrams in {directory}/ match the machine definitions")
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in render_all().items():
        (directory / name).write_text(content, encoding="utf-8")
        print(f"wrote {directory / name}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import importlib.util

    from engine.demo import run_demo

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print("wirestate demo --backend trio needs trio: pip install trio", file=sys.stderr)
        return 2

    return run_demo(duration=args.duration, backend=args.backend)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="wirestate", description="Keeps exchange WebSocket streams alive.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="stream from the embedded simulated exchange on 127.0.0.1, with faults")
    demo.add_argument("--duration", type=float, default=20.0, help="upper bound on the run, seconds (default 20)")
    demo.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    demo.set_defaults(run=_demo)

    diagrams = commands.add_parser("diagrams", help="write state diagrams generated from the machine definitions")
    diagrams.add_argument("--check", action="store_true", help="exit 1 when the files differ from the code")
    diagrams.add_argument("--dir", default="diagrams", help="output folder (default: diagrams)")
    diagrams.set_defaults(run=_diagrams)

    args = parser.parse_args(argv)
    if getattr(args, "duration", 1.0) <= 0:
        parser.error("--duration must be positive")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
