"""Turn collected samples into the markdown tables printed and saved by the runner."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["summarize", "render"]


def _fmt_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.0f}k"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table padded so it also reads well in a terminal."""
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summarize(samples: list[float | None]) -> dict[str, Any]:
    """Median, range and coefficient of variation of the successful samples."""
    ok = [s for s in samples if s is not None]
    if not ok:
        return {"n": 0}
    mean = statistics.fmean(ok)
    return {
        "n": len(ok),
        "median": statistics.median(ok),
        "min": min(ok),
        "max": max(ok),
        "cv": statistics.pstdev(ok) / mean if len(ok) > 1 and mean else 0.0,
    }


def _ratio_cell(row: dict[str, Any]) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "—"
    per_round = [r for r in row.get("round_ratios", []) if r is not None]
    if len(per_round) > 1:
        return f"{ratio:.2f} ({min(per_round):.2f}–{max(per_round):.2f})"
    return f"{ratio:.2f}"


def render(result: dict[str, Any]) -> str:
    """The whole report: machine, throughput, handshake, memory, micro."""
    m = result["machine"]
    cfg = result["config"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    parts = [
        "# wirestate benchmarks",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}",
        f"- {m['python']}; {libs}; wirestate {m['wirestate']} (sources {m['wirestate_sources_start']})",
        f"- load average at start {m['load_average_start'][0]:.2f}, at end {m['load_average_end'][0]:.2f}; "
        f"run took {result['seconds']:.0f} s",
        *(
            [f"- **warning: wirestate's sources changed during the run** (now {m['wirestate_sources_end']}); "
             "rounds before and after the change measured different code"]
            if m["wirestate_sources_end"] != m["wirestate_sources_start"] else []
        ),  # fmt: skip
        f"- config: {cfg['rounds']} rounds × {cfg['messages']:,} messages of ~200 B; handshake "
        f"{cfg['handshake_rounds']} × {cfg['connects']} connects; memory {cfg['memory_rounds']} × "
        f"{cfg['connections']} idle connections; round trips {cfg.get('roundtrip_rounds', cfg['memory_rounds'])} rounds",
    ]

    if "throughput" in result:
        rows = []
        for row in result["throughput"]:
            s = row["summary"]
            if s["n"] == 0:
                rows.append([row["label"], "failed", "", "", "—", row.get("error", "")[:80]])
                continue
            note = row.get("error", "")[:80]
            rows.append(
                [
                    row["label"],
                    _fmt_rate(s["median"]),
                    f"{_fmt_rate(s['min'])}–{_fmt_rate(s['max'])}",
                    f"{s['cv'] * 100:.0f}%",
                    _ratio_cell(row),
                    note,
                ]
            )
        parts += [
            "",
            "## Throughput (msgs/s, each client in a fresh process per round, rounds interleaved)",
            "",
            "Ratio: median ÷ python-websockets' median (decoded rows: ÷ python-websockets + orjson.loads); "
            "in brackets the range of the same ratio taken within each round.",
            "",
            _table(["client", "median", "range", "cv", "× ref (per-round)", "note"], rows),
        ]
        pending = [r for r in result["throughput"] if "vs_no_pending" in r]
        if pending:
            parts += ["", "Data path with one request pending (never answered) ÷ the same client with none:", ""]
            for row in pending:
                rounds = row.get("vs_no_pending_rounds") or [row["vs_no_pending"]]
                parts.append(
                    f"- {row['label']}: **{row['vs_no_pending']:.2f}×** (per round {min(rounds):.2f}–{max(rounds):.2f}); "
                    f"at most {row.get('messages_before_pending', '?')} messages arrived before the request was registered"
                )

    if "e2e" in result:
        rows = []
        for row in result["e2e"]:
            s = row["summary"]
            if s["n"] == 0:
                rows.append([row["label"], "failed", "", "", "—", "", "", "", row.get("error", "")[:80]])
                continue
            second = row.get("vs_second_rounds") or []
            rows.append(
                [
                    row["label"],
                    _fmt_rate(s["median"]),
                    f"{_fmt_rate(s['min'])}–{_fmt_rate(s['max'])}",
                    f"{s['cv'] * 100:.0f}%",
                    _ratio_cell(row),
                    f"{row['vs_second']:.2f} ({min(second):.2f}–{max(second):.2f})" if second else "—",
                    str(row.get("batches") or ""),
                    str(row.get("blocked", "")),
                    row.get("error", "")[:80],
                ]
            )
        parts += [
            "",
            "## End to end: socket → typed events → bounded buffer → consumer taking batches (msgs/s)",
            "",
            "Every client decodes each message into a trade Struct, queues it in a buffer of 10,000 events that "
            "pushes back on the socket when full, and a separate consumer task takes batches and checks every "
            "event's type and seq (benchmarks/e2e.py). Ratios: ÷ picows + msgspec and ÷ python-websockets + "
            "orjson, median (per-round range).",
            "",
            _table(["client", "median", "range", "cv", "× picows+msgspec", "× websockets+orjson", "batches (median)",
                    "full (max)", "note"], rows),  # fmt: skip
        ]

    if "handshake" in result:
        rows = []
        for row in result["handshake"]:
            s = row["summary"]
            if s["n"] == 0:
                rows.append([row["label"], "failed", "", "—", row.get("error", "")[:80]])
                continue
            rounds = row["round_medians"]
            rows.append(
                [
                    row["label"],
                    f"{s['median'] * 1e3:.3f}",
                    f"{min(rounds) * 1e3:.3f}–{max(rounds) * 1e3:.3f}",
                    f"{row['ratio']:.2f}" if row.get("ratio") else "—",
                    row.get("error", "")[:80],
                ]
            )
        parts += [
            "",
            "## Handshake latency (connect + upgrade + first frame + close handshake, sequential)",
            "",
            _table(["client", "median ms", "per-round medians", "× websockets time", "note"], rows),
            "",
            "python-websockets reads proxy settings from the environment on every connect "
            f"(this run: {result.get('machine', {}).get('environment_variables', '?')} environment variables); "
            "the proxy=None row is websockets without that lookup.",
        ]

    if "memory" in result:
        rows = []
        for row in result["memory"]:
            s = row["summary"]
            if s["n"] == 0:
                rows.append([row["label"], "failed", "", "", row.get("error", "")[:80]])
                continue
            rows.append(
                [
                    row["label"],
                    f"{s['median']:.1f}",
                    f"{s['min']:.1f}–{s['max']:.1f}",
                    f"{row['open_seconds']:.2f}",
                    row.get("error", "")[:80],
                ]
            )
        parts += [
            "",
            "## Idle memory per open connection (RSS delta over N connections ÷ N)",
            "",
            _table(["client", "KiB/conn (median)", "range", "open N s", "note"], rows),
        ]

    if "roundtrip" in result:
        rows = []
        for row in result["roundtrip"]:
            s = row["summary"]
            name = f"{row['variant']} ({row['inflight']} in flight)"
            if s["n"] == 0:
                rows.append([name, row["label"], "failed", "", "", "—", "", row.get("error", "")[:80]])
                continue
            cpu = row.get("cpu_us")
            rows.append(
                [
                    name,
                    row["label"],
                    f"{s['median'] / 1e3:.1f}k",
                    f"{s['min'] / 1e3:.1f}k–{s['max'] / 1e3:.1f}k",
                    f"{s['cv'] * 100:.0f}%",
                    _ratio_cell(row),
                    f"{cpu:.1f}" if cpu is not None else "",
                    row.get("error", "")[:80],
                ]
            )
        parts += [
            "",
            "## Request/response round trips per second (echo server in its own process)",
            "",
            _table(["variant", "client", "median/s", "range", "cv", "× websockets (per-round)", "client CPU µs/req",
                    "note"], rows),  # fmt: skip
        ]

    if "limiter" in result:
        from benchmarks.limiter import render as render_limiter

        lim = result["limiter"]
        text = lim["error"] if "error" in lim else render_limiter(lim)
        parts += ["", "## Rate limiter against aiolimiter, limits, pyrate-limiter (in process)", "", text]

    if "manager" in result:
        from benchmarks.manager import render as render_manager

        man = result["manager"]
        text = man["error"] if "error" in man else render_manager(man)
        parts += ["", "## Manager: idle memory per connection (server in its own process) and flush()", "", text]

    if "micro" in result:
        rows = [
            [r["name"], f"{r['ns_per_op']:.0f}" if r.get("status") == "ok" else r.get("status", "?"), r["description"]]
            for r in result["micro"]
        ]
        parts += ["", "## Micro-benchmarks (in process)", "", _table(["operation", "ns/op", "what"], rows)]

    return "\n".join(parts) + "\n"
