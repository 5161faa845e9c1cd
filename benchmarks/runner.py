"""The benchmark run: servers, interleaved client processes, the report.

Each measurement is one child process (``benchmarks.clients``) against a
server in another child process (``benchmarks.blast``): client and server
never share a GIL, and no client inherits another's warm state. Rounds are
interleaved (every client once per round, the starting client rotating) so
slow drift of this shared machine hits all clients alike; ratios within a
round are therefore more trustworthy than absolute rates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, load_average, source_digest
from benchmarks.report import render, summarize

__all__ = ["Case", "THROUGHPUT", "HANDSHAKE", "MEMORY", "ROUNDTRIP", "E2E", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Case:
    """One row of a table: a client id, a decode mode and how to show it."""

    client: str
    decode: str = "none"
    label: str = ""
    reference: bool = False  # the row the others in its group are divided by

    @property
    def group(self) -> str:
        """Ratios are taken within a group: raw frames vs decoded messages."""
        return "raw" if self.decode == "none" else "decoded"


_DECODE_LABEL = {"none": "", "orjson": " + orjson.loads", "typed": " + typed event (msgspec Struct)"}
_CLIENT_LABEL = {
    "raw-socket": "raw socket reads (ceiling, no parsing)",
    "websockets": "python-websockets",
    "websockets-noproxy": "python-websockets, proxy=None",
    "aiohttp": "aiohttp",
    "picows": "picows",
    "wsproto-anyio": "wsproto + anyio",
    "wirestate-fast": "wirestate fast path, per message",
    "wirestate-fast-batch": "wirestate fast path, batch",
    "wirestate-wsproto": "wirestate wsproto path, per message",
    "wirestate-fast-pending": "wirestate fast path, per message, 1 request pending",
    "wirestate-fast-batch-pending": "wirestate fast path, batch, 1 request pending",
    "wirestate-fast-pending-prefilter": "wirestate fast path, per message, 1 request pending, own response_key + response_marker",
    "e2e-picows-msgspec": "picows + msgspec Struct + list buffer (pause_reading when full)",
    "e2e-websockets-orjson": "python-websockets + orjson.loads + Struct + list buffer",
    "e2e-wirestate-adapter": "wirestate batch_handler (engine.adapters.sim) + emit_many + stream(block)",
    "e2e-wirestate-msgspec": "wirestate batch_handler (Decoder(Trade), stamped) + emit_many + stream(block)",
}


def _case(client: str, decode: str = "none", reference: bool = False) -> Case:
    return Case(client, decode, _CLIENT_LABEL[client] + _DECODE_LABEL[decode], reference)


THROUGHPUT: tuple[Case, ...] = (
    _case("raw-socket"),
    _case("websockets", reference=True),
    _case("aiohttp"),
    _case("picows"),
    _case("wsproto-anyio"),
    _case("wirestate-fast"),
    _case("wirestate-fast-batch"),
    _case("wirestate-wsproto"),
    _case("wirestate-fast-pending"),
    _case("wirestate-fast-batch-pending"),
    _case("wirestate-fast-pending-prefilter"),
    _case("websockets", "orjson", reference=True),
    _case("aiohttp", "orjson"),
    _case("picows", "orjson"),
    _case("wirestate-fast", "orjson"),
    _case("wirestate-fast-batch", "orjson"),
    _case("websockets", "typed"),
    _case("picows", "typed"),
    _case("wirestate-fast", "typed"),
    _case("wirestate-fast-batch", "typed"),
)
_PEERS = ("websockets", "aiohttp", "picows", "wsproto-anyio", "wirestate-fast", "wirestate-wsproto")
# websockets without its per-connect proxy lookup: that lookup's cost depends on
# the environment, so the handshake table shows websockets both ways.
HANDSHAKE: tuple[Case, ...] = tuple(
    _case(c, reference=c == "websockets") for c in (_PEERS[0], "websockets-noproxy", *_PEERS[1:])
)
MEMORY: tuple[Case, ...] = tuple(_case(c, reference=c == "websockets") for c in _PEERS)
#: request/response round trips against the echo server: python-websockets with a dict of
#: futures by id (the reference) and wirestate's Connection.request
ROUNDTRIP: tuple[Case, ...] = (
    Case("raw-socket", label="floor: asyncio.Protocol + hand parser + dict of futures"),
    Case("websockets", label="python-websockets + dict of futures by id", reference=True),
    Case("wirestate-fast", label="wirestate Connection.request (matcher)"),
)
#: (name, requests in flight, requests per run, quick run)
ROUNDTRIP_VARIANTS = (("sequential", 1, 5_000, 2_000), ("pipelined", 100, 50_000, 20_000))
#: end to end (benchmarks/e2e.py): socket -> typed events -> bounded buffer -> batch consumer;
#: divided by picows + msgspec, and also by python-websockets + orjson (E2E_SECOND)
E2E: tuple[Case, ...] = (
    _case("e2e-picows-msgspec", reference=True),
    _case("e2e-websockets-orjson"),
    _case("e2e-wirestate-adapter"),
    _case("e2e-wirestate-msgspec"),
)
E2E_SECOND = "e2e-websockets-orjson"
#: events the bounded buffer of every e2e client holds before it pushes back on the socket
E2E_CAPACITY = 10_000
#: the data path with a request pending, against the same client with none
PENDING_PAIRS = (
    ("wirestate-fast-pending", "wirestate-fast"),
    ("wirestate-fast-batch-pending", "wirestate-fast-batch"),
    ("wirestate-fast-pending-prefilter", "wirestate-fast"),
)


# -- processes -----------------------------------------------------------------

# Pin the server and the client to different CPUs when there are two or more:
# otherwise the scheduler sometimes puts both on one core and a run halves
# (seen as bimodal rounds on 2-core machines). Same pinning for every client.
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPU = _CPUS[-1] if len(_CPUS) >= 2 else None
CLIENT_CPU = _CPUS[0] if len(_CPUS) >= 2 else None


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def server(mode: str, messages: int = 0, lifetime: float = 900.0) -> Iterator[int]:
    """Start ``benchmarks.blast`` in its own process; yield its port; stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.blast", "--mode", mode, "--messages", str(messages),
         "--lifetime", str(lifetime)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_pin(SERVER_CPU),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server encodes its stream first, then prints the port
        if not line.startswith("PORT "):
            raise RuntimeError(f"blast server did not start (exit code {proc.poll()})")
        yield int(line.split()[1])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the server exits on stdin EOF
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_client(task: str, case: Case, port: int, timeout: float, extra: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh process; its first stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.clients", task, case.client, "--port", str(port),
           "--decode", case.decode, "--timeout", str(timeout), *extra]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 15, preexec_fn=_pin(CLIENT_CPU)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout + 15:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[0]) if lines else {"error": f"no output; stderr: {proc.stderr.strip()[-200:]}"}
    except json.JSONDecodeError:
        return {"error": f"bad output: {lines[0][:200]}"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interleaved(cases: tuple[Case, ...], rounds: int) -> Iterator[tuple[int, Case]]:
    """Every case once per round; the starting case rotates from round to round."""
    for r in range(rounds):
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            yield r, case


def _collect(
    task: str, cases: tuple[Case, ...], rounds: int, port: int, timeout: float, extra: list[str], key: str
) -> tuple[dict[Case, list[float | None]], dict[Case, str], dict[Case, list[dict[str, Any]]]]:
    """Run every case ``rounds`` times, interleaved; samples of ``key`` per case per round."""
    samples: dict[Case, list[float | None]] = {c: [None] * rounds for c in cases}
    failures: dict[Case, list[str]] = {}
    raw: dict[Case, list[dict[str, Any]]] = {c: [] for c in cases}
    # A failed round is retried in the next round, never skipped for good: the
    # tree may be mid-edit (an ImportError now can be gone a minute later).
    for r, case in _interleaved(cases, rounds):
        out = run_client(task, case, port, timeout, extra)
        raw[case].append(out)
        if "error" in out:
            failures.setdefault(case, []).append(out["error"])
            _log(f"  round {r + 1}: {case.label}: {out['error']}")
        else:
            samples[case][r] = out[key]
            _log(f"  round {r + 1}: {case.label}: {out[key]:.6g}")
    errors = {case: f"{len(errs)}/{rounds} rounds failed: {errs[0]}" for case, errs in failures.items()}
    return samples, errors, raw


def _rows(
    cases: tuple[Case, ...],
    samples: dict[Case, list[float | None]],
    errors: dict[Case, str],
) -> list[dict[str, Any]]:
    """Summaries plus ratios against each group's reference (median and per round)."""
    refs = {c.group: c for c in cases if c.reference}
    rows = []
    for case in cases:
        summary = summarize(samples[case])
        row: dict[str, Any] = {"label": case.label, "client": case.client, "decode": case.decode,
                               "samples": samples[case], "summary": summary}  # fmt: skip
        if case in errors:
            row["error"] = errors[case]
        ref = refs.get(case.group)
        ref_summary = summarize(samples[ref]) if ref else {"n": 0}
        if summary["n"] and ref_summary["n"]:
            row["ratio"] = summary["median"] / ref_summary["median"]
            row["round_ratios"] = [
                a / b if a is not None and b is not None else None
                for a, b in zip(samples[case], samples[ref])  # type: ignore[index]
            ]
        rows.append(row)
    return rows


# -- phases --------------------------------------------------------------------


def phase_throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Msgs/s of every client against one blast server."""
    cases = tuple(c for c in THROUGHPUT if _selected(c, args))
    _log(f"throughput: {len(cases)} clients × {args.rounds} rounds × {args.messages:,} messages")
    with server("blast", args.messages) as port:
        samples, errors, raw = _collect(
            "throughput", cases, args.rounds, port, args.timeout, ["--messages", str(args.messages)], "rate"
        )
    rows = _rows(cases, samples, errors)
    by_client = {(c.client, c.decode): c for c in cases}
    for row, case in zip(rows, cases):
        before = [out["messages_before_pending"] for out in raw[case] if "messages_before_pending" in out]
        if before:
            row["messages_before_pending"] = max(before)
        pair = dict(PENDING_PAIRS).get(case.client)
        other = by_client.get((pair, case.decode)) if pair else None
        if other is not None:  # rate with one request pending ÷ rate with none, per round and of medians
            mine, theirs = summarize(samples[case]), summarize(samples[other])
            if mine["n"] and theirs["n"]:
                row["vs_no_pending"] = mine["median"] / theirs["median"]
                row["vs_no_pending_rounds"] = [
                    a / b for a, b in zip(samples[case], samples[other]) if a is not None and b is not None
                ]
    return rows


def phase_e2e(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Socket -> typed events -> bounded buffer -> a consumer taking batches, against one blast server."""
    cases = tuple(c for c in E2E if _selected(c, args))
    _log(f"end to end: {len(cases)} clients × {args.rounds} rounds × {args.messages:,} messages")
    extra = ["--messages", str(args.messages), "--capacity", str(E2E_CAPACITY)]
    with server("blast", args.messages) as port:
        samples, errors, raw = _collect("e2e", cases, args.rounds, port, args.timeout, extra, "rate")
    rows = _rows(cases, samples, errors)
    second = next((c for c in cases if c.client == E2E_SECOND), None)
    for row, case in zip(rows, cases):
        batches = sorted(out["batches"] for out in raw[case] if "batches" in out)
        row["batches"] = batches[len(batches) // 2] if batches else None
        row["blocked"] = max((out.get("blocked", 0) for out in raw[case] if "error" not in out), default=0)
        if second is not None:  # also ÷ python-websockets + orjson, of medians and per round
            mine, theirs = summarize(samples[case]), summarize(samples[second])
            if mine["n"] and theirs["n"]:
                row["vs_second"] = mine["median"] / theirs["median"]
                row["vs_second_rounds"] = [
                    a / b for a, b in zip(samples[case], samples[second]) if a is not None and b is not None
                ]
    return rows


def phase_roundtrip(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Request/response round trips per second, sequential and pipelined, against one echo server."""
    cases = tuple(c for c in ROUNDTRIP if _selected(c, args))
    rows: list[dict[str, Any]] = []
    with server("echo") as port:
        for name, inflight, full, quick in ROUNDTRIP_VARIANTS:
            n = quick if args.quick else full
            _log(f"round trips, {name}: {len(cases)} clients × {args.roundtrip_rounds} rounds × {n:,} requests")
            extra = ["--messages", str(n), "--inflight", str(inflight)]
            samples, errors, raw = _collect("roundtrip", cases, args.roundtrip_rounds, port, args.timeout, extra, "rate")
            for row, case in zip(_rows(cases, samples, errors), cases):
                cpus = sorted(out["cpu_us"] for out in raw[case] if "cpu_us" in out)
                row["cpu_us"] = cpus[len(cpus) // 2] if cpus else None
                rows.append({**row, "variant": name, "inflight": inflight, "requests": n})
    return rows


def phase_handshake(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sequential connect + upgrade + hello + close latency."""
    cases = tuple(c for c in HANDSHAKE if _selected(c, args))
    _log(f"handshake: {len(cases)} clients × {args.handshake_rounds} rounds × {args.connects} connects")
    extra = ["--connects", str(args.connects), "--warmup", "10"]
    with server("hold") as port:
        medians, errors, raw = _collect("handshake", cases, args.handshake_rounds, port, args.timeout, extra, "median")
    rows = _rows(cases, medians, errors)
    for row, case in zip(rows, cases):
        every = [s for out in raw[case] for s in out.get("samples", [])]
        row["summary"] = summarize(every)  # median over all connects of all rounds
        row["round_medians"] = [m for m in medians[case] if m is not None]
        row.pop("samples", None)
        row.pop("round_ratios", None)
    ref = next((r for r, c in zip(rows, cases) if c.reference and r["summary"]["n"]), None)
    for row in rows:
        row.pop("ratio", None)
        if ref is not None and row["summary"]["n"]:
            row["ratio"] = row["summary"]["median"] / ref["summary"]["median"]  # time ratio: < 1 is faster
    return rows


def phase_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """RSS growth per idle open connection."""
    cases = tuple(c for c in MEMORY if _selected(c, args))
    _log(f"memory: {len(cases)} clients × {args.memory_rounds} rounds × {args.connections} idle connections")
    with server("hold") as port:
        samples, errors, raw = _collect(
            "memory", cases, args.memory_rounds, port, args.timeout, ["--connections", str(args.connections)],
            "kib_per_connection",
        )  # fmt: skip
    rows = _rows(cases, samples, errors)
    for row, case in zip(rows, cases):
        opens = [out["open_seconds"] for out in raw[case] if "open_seconds" in out]
        row["open_seconds"] = sorted(opens)[len(opens) // 2] if opens else 0.0
        row.pop("ratio", None)
        row.pop("round_ratios", None)
    return rows


def phase_micro(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The in-process micro-benchmarks, in their own process too."""
    cmd = [sys.executable, "-m", "benchmarks.micro", "--json", *(["--quick"] if args.quick else [])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return [{"name": "micro", "description": "", "status": f"failed: {proc.stderr.strip()[-200:]}"}]


def phase_limiter(args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks/limiter.py: decision time and release lateness against aiolimiter, limits, pyrate-limiter."""
    _log("limiter: wirestate vs aiolimiter, limits, pyrate-limiter (each measurement in its own process)")
    return _json_child([sys.executable, "-m", "benchmarks.limiter", "--json", *(["--quick"] if args.quick else [])],
                       "limiter", timeout=900)  # fmt: skip


def phase_manager(args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks/manager.py: memory per managed connection (server in its own process) and flush()."""
    _log("manager: idle managed vs plain connections, flush() of many subscriptions")
    cmd = [sys.executable, "-m", "benchmarks.manager", "--json", "--rounds", str(args.memory_rounds),
           "--connections", str(args.connections), *(["--subscriptions", "2000"] if args.quick else [])]  # fmt: skip
    return _json_child(cmd, "manager", timeout=1800)


def _json_child(cmd: list[str], name: str, timeout: float) -> dict[str, Any]:
    """Run a benchmark module that prints its result as one JSON document."""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{name}: no answer within {timeout:.0f} s"}
    for line in proc.stderr.splitlines():
        _log(f"  {line}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": f"{name} failed: {proc.stderr.strip()[-300:]}"}
    return result


def _selected(case: Case, args: argparse.Namespace) -> bool:
    return not args.clients or case.client in args.clients


PHASES = {
    "throughput": phase_throughput,
    "e2e": phase_e2e,
    "handshake": phase_handshake,
    "memory": phase_memory,
    "roundtrip": phase_roundtrip,
    "limiter": phase_limiter,
    "manager": phase_manager,
    "micro": phase_micro,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` lowers every default that is not given."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="wirestate vs its peers, in one run")
    p.add_argument("--quick", action="store_true", help="small run (~30 s on 2 cores)")
    p.add_argument("--rounds", type=int, help="throughput and e2e rounds (default 7, quick 3)")
    p.add_argument("--messages", type=int, help="messages per throughput and e2e run (default 500000, quick 200000)")
    p.add_argument("--handshake-rounds", type=int, help="default 3, quick 1")
    p.add_argument("--connects", type=int, help="timed connects per handshake round (default 200, quick 100)")
    p.add_argument("--memory-rounds", type=int, help="memory and manager rounds (default 3, quick 1)")
    # (round trips swing with the machine: the ratio of one round ranged 1.9-3.3x in one run of 3)
    p.add_argument("--roundtrip-rounds", type=int, help="round-trip rounds (default 11, quick 1)")
    p.add_argument("--connections", type=int, help="idle connections per memory run (default 1000, quick 500)")
    p.add_argument("--only", nargs="+", choices=sorted(PHASES), help="run only these phases")
    p.add_argument("--clients", nargs="+", help="run only these client ids (e.g. websockets wirestate-fast)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one client process may take")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)
    defaults = {
        "rounds": (7, 3),
        "messages": (500_000, 200_000),
        "handshake_rounds": (3, 1),
        "connects": (200, 100),
        "memory_rounds": (3, 1),
        "roundtrip_rounds": (11, 1),
        "connections": (1000, 500),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def save(result: dict[str, Any], text: str) -> Path:
    """Write ``<stamp>.json`` and ``<stamp>.md`` (and ``latest.*``) under benchmarks/results/."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result["started"]))
    for name in (stamp, "latest"):
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (RESULTS / f"{name}.md").write_text(text)
    return RESULTS / f"{stamp}.md"


def main(argv: list[str] | None = None) -> None:
    """Run the selected phases and print the report."""
    args = parse_args(argv)
    started = time.time()
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "started": started,
        "machine": describe(ROOT),
        "config": {k: getattr(args, k) for k in
                   ("quick", "rounds", "messages", "handshake_rounds", "connects", "memory_rounds", "roundtrip_rounds",
                    "connections")},
    }  # fmt: skip
    for name, phase in PHASES.items():
        if args.only and name not in args.only:
            continue
        result[name] = phase(args)
    result["seconds"] = time.perf_counter() - t0
    result["machine"]["load_average_end"] = load_average()
    result["machine"]["wirestate_sources_end"] = source_digest(ROOT)
    text = render(result)
    print(text)
    if not args.no_save:
        _log(f"saved {save(result, text)}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
