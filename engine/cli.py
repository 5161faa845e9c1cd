"""The ``wirestate`` console script: ``wirestate demo``, ``sim``, ``diagrams`` and ``check-config``.

A bad argument is one ``error:`` line on stderr and exit code 2; Ctrl-C ends ``demo`` and ``sim`` with exit code 0 on asyncio and trio.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["DEMO_MIN_DURATION", "SIM_PORT", "main"]

#: Shortest ``wirestate demo --duration``, seconds. The whole demo takes about
#: 20 s; a run between this and that just ends early, before every step.
DEMO_MIN_DURATION = 1.0
#: ``wirestate sim``'s port when no ``--port`` is given.
SIM_PORT = 8765


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose input errors are one line on stderr (exit code 2), usage left to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seconds(minimum: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds, >= ``minimum`` (> 0 when ``minimum`` is 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text}")
        if value < minimum or value <= 0:
            least = f"at least {minimum:g}" if minimum > 0 else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {least} s, not {value:g}")
        return value

    return parse


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, not {value}")
    return value


def _trio_missing(command: str, backend: str) -> bool:
    import importlib.util

    if backend == "trio" and importlib.util.find_spec("trio") is None:
        print(f"wirestate {command} --backend trio needs trio: pip install trio", file=sys.stderr)
        return True
    return False


def _diagrams(args: argparse.Namespace) -> int:
    from machines.diagrams import render_all, stale_files

    directory = Path(args.dir)
    if args.check:
        where = directory.resolve()
        if not directory.is_dir():
            print(
                f"no diagrams folder at {where} - run this in the repository root, point --dir at the "
                "folder, or write the diagrams with `wirestate diagrams`",
                file=sys.stderr,
            )
            return 1
        missing = [name for name in render_all() if not (directory / name).is_file()]
        stale = [name for name in stale_files(directory) if name not in missing]
        if missing:
            print(
                f"diagram files missing in {where}: {', '.join(missing)} - point --dir at the right "
                "folder, or write them with `wirestate diagrams`",
                file=sys.stderr,
            )
        if stale:
            print(f"diagrams are stale: {', '.join(stale)} in {directory}/ - run `wirestate diagrams`", file=sys.stderr)
        if missing or stale:
            return 1
        print(f"diagrams in {directory}/ match the machine definitions")
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in render_all().items():
        (directory / name).write_text(content, encoding="utf-8")
        print(f"wrote {directory / name}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if _trio_missing("demo", args.backend):
        return 2
    from engine.demo import run_demo

    return run_demo(duration=args.duration, backend=args.backend)


def _sim(args: argparse.Namespace) -> int:
    if _trio_missing("sim", args.backend):
        return 2
    from engine.sim.serve import run_sim

    options = {"rate": args.rate, "seed": args.seed, "book_depth": args.book_depth, "lifetime": args.lifetime}
    if args.symbols:
        options["symbols"] = args.symbols
    if args.credential:
        options["credentials"] = dict(args.credential)
    if args.response_delay:
        options["response_delay"] = args.response_delay
    return run_sim(port=args.port, duration=args.duration, backend=args.backend, **options)


def _simulate(args: argparse.Namespace) -> int:
    missing = [name for name in ("looptime", "trio") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"wirestate simulate: needs {' and '.join(missing)} (pip install -e '.[test]')", file=sys.stderr)
        return 2
    from engine.harness import InvariantViolation, Scenario, run_simulation

    try:
        scenario = Scenario(seed=args.seed, hours=args.hours)
    except ValueError as exc:
        print(f"wirestate simulate: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_simulation(scenario, args.backend)
    except InvariantViolation as exc:
        print(exc, file=sys.stderr)
        return 1
    print(report)
    return 0


def _sim_arguments(sim: argparse.ArgumentParser) -> None:
    """``wirestate sim``'s exchange options (see engine.sim.exchange.SimExchange)."""

    def number(text: str, least: float = 0.0) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < least:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {least:g}, not {text}")
        return value

    def depth(text: str) -> int:
        if not text.isdigit() or int(text) < 2:
            raise argparse.ArgumentTypeError(f"must be a whole number >= 2, not {text!r}")
        return int(text)

    def credential(text: str) -> tuple[str, str]:
        key, sep, secret = text.partition(":")
        if not sep or not key or not secret:
            raise argparse.ArgumentTypeError("must be KEY:SECRET")
        return key, secret

    def delay(text: str) -> tuple[float, float]:
        low, sep, high = text.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError("must be LOW:HIGH seconds")
        lo, hi = number(low), number(high)
        if lo > hi:
            raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH ({text})")
        return lo, hi

    def symbols(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",")]
        if not all(names):
            raise argparse.ArgumentTypeError(f"must be comma-separated symbol names, not {text!r}")
        return names

    sim.add_argument("--rate", type=number, default=4.0, help="messages/s of each (channel, symbol) stream (default 4)")
    sim.add_argument("--seed", type=int, default=0, help="seed of prices, books, fills and delays (default 0)")
    sim.add_argument("--symbols", type=symbols, default=None, help="comma-separated (default BTC-USD,ETH-USD)")
    sim.add_argument("--book-depth", type=depth, default=100, help="levels per side of each book (default 100)")
    sim.add_argument(
        "--credential",
        type=credential,
        action="append",
        metavar="KEY:SECRET",
        help="require HMAC-signed logins with this test key (repeatable; default: any non-empty key logs in)",
    )
    sim.add_argument("--lifetime", type=_seconds(0.0), default=None, help="close each connection after this many seconds")
    sim.add_argument(
        "--response-delay",
        type=delay,
        default=None,
        metavar="LOW:HIGH",
        help="delay each order answer by a seeded draw in [LOW, HIGH] s (answers arrive out of order)",
    )


def _check_config(args: argparse.Namespace) -> int:
    import os

    from engine.setupfile import SetupFileError, load_setups

    # "module:attribute" callbacks resolve from the current directory too, as under `python -m`
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        _, connections = load_setups(args.file)
    except SetupFileError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    count = len(connections)
    print(f"{args.file}: ok (1 exchange setup, {count} connection{'' if count == 1 else 's'})")
    return 0


def _ws_url(text: str) -> str:
    """An argparse ``type``: a ws:// or wss:// URL."""
    from transports.base import InvalidURL, parse_url

    try:
        parse_url(text)
    except InvalidURL as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _record(args: argparse.Namespace) -> int:
    from engine.recording import run_record

    return run_record(args.out, url=args.url, duration=args.duration, drop_at=args.drop_at, virtual=args.virtual)


def _replay(args: argparse.Namespace) -> int:
    from engine.recording import run_replay

    return run_replay(args.file, strict=args.strict, virtual=args.virtual)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _Parser(prog="wirestate", description="Keeps exchange WebSocket streams alive.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="stream from the embedded simulated exchange on 127.0.0.1, with faults")
    demo.add_argument(
        "--duration",
        type=_seconds(DEMO_MIN_DURATION),
        default=30.0,
        help=f"upper bound on the run, seconds (default 30, at least {DEMO_MIN_DURATION:g}; "
        "the whole demo takes about 20, a shorter run ends early)",
    )
    demo.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    demo.set_defaults(run=_demo)

    sim = commands.add_parser("sim", help="serve the simulated exchange on 127.0.0.1 until Ctrl-C")
    sim.add_argument(
        "--port", type=_port, default=SIM_PORT, help=f"port on 127.0.0.1 (default {SIM_PORT}; 0: any free one)"
    )
    sim.add_argument("--duration", type=_seconds(0.0), default=None, help="stop after this many seconds")
    sim.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    _sim_arguments(sim)
    sim.set_defaults(run=_sim)

    simulate = commands.add_parser(
        "simulate", help="a seeded simulation: a Manager under seeded faults for hours of virtual time, invariants checked"
    )
    simulate.add_argument("--seed", type=int, required=True, help="the seed (a failing one is printed by the tests)")
    simulate.add_argument("--hours", type=_seconds(0.001), default=100.0, help="virtual hours to simulate (default 100)")
    simulate.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="asyncio replays a seed exactly")
    simulate.set_defaults(run=_simulate)

    diagrams = commands.add_parser("diagrams", help="write state diagrams generated from the machine definitions")
    diagrams.add_argument("--check", action="store_true", help="exit 1 when the files differ from the code")
    diagrams.add_argument("--dir", default="diagrams", help="output folder (default: diagrams)")
    diagrams.set_defaults(run=_diagrams)

    check = commands.add_parser(
        "check-config", help="load a manager setup file (.toml or .json) and list every problem in it"
    )
    check.add_argument("file", metavar="FILE", help="the setup file: [exchange] and [[connections]] tables")
    check.set_defaults(run=_check_config)

    record = commands.add_parser(
        "record", help="record a session (the embedded simulated exchange, in memory) to a JSONL file, secrets redacted"
    )
    record.add_argument("--out", required=True, metavar="FILE", help="the recording to write")
    record.add_argument("--duration", type=_seconds(0.0), default=5.0, help="seconds to record (default 5)")
    record.add_argument("--drop-at", type=_seconds(0.0), default=None, help="reset the connection from the sim's side after this many seconds")
    record.add_argument("--virtual", action="store_true", help="on a virtual clock (needs trio): a recorded hour takes moments")
    record.add_argument(
        "url", nargs="?", type=_ws_url, default=None,
        help="a server speaking the simulator's dialect, e.g. a `wirestate sim` on 127.0.0.1 (default: the embedded one)",
    )  # fmt: skip
    record.set_defaults(run=_record)

    replay = commands.add_parser("replay", help="play a recording to a fresh connection, print its state changes and messages")
    replay.add_argument("file", metavar="FILE", help="a recording made by `wirestate record` or transports.record.Recorder")
    replay.add_argument("--strict", action="store_true", help="compare what the client sends with the recording (exit 1 on a difference)")
    replay.add_argument("--virtual", action="store_true", help="on a virtual clock (needs trio): no waiting for the recorded pace")
    replay.set_defaults(run=_replay)

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
