"""``wirestate demo`` end to end: a real process, real sockets on 127.0.0.1, the real clock.

stdout is a pipe here, so the demo prints plain lines (no live table). The
asyncio run goes through the whole script (about 17 s); trio runs once with a
short ``--duration`` (the bound ends it early, closing with 1000, exit 0), and
the whole script on trio too when ``WIRESTATE_DEMO_FULL=1`` is set. One short
run takes rich's terminal path (``FORCE_COLOR``): the live table, redrawn.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IDS = {"public#1", "public#2", "public#3", "private#1"}
#: "  [  3.07s] public#1: live -> reconnecting on lost (...)"
EVENT = re.compile(r"^  \[\s*[\d.]+s\] (\S+): (\w+) -> (\w+) on (\w+)(?: \((.*)\))?$")


def run_demo(*args: str, timeout: float = 60.0, **env: str) -> tuple[int, list[str], str, float]:
    """``python -m engine.cli demo ARGS``: (exit code, stdout lines, stderr, seconds); killed after ``timeout``."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "demo", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"demo still running after {timeout} s; stdout:\n{out}\nstderr:\n{err}") from None
    return proc.returncode, out.splitlines(), err, time.monotonic() - started


def events(lines: list[str]) -> list[tuple[int, str, str, str, str, str]]:
    """(line number, connection, source, dest, trigger, reason) of every state-change line."""
    found = []
    for n, line in enumerate(lines):
        match = EVENT.match(line)
        if match:
            cid, source, dest, trigger, reason = match.groups()
            found.append((n, cid, source, dest, trigger, reason or ""))
    return found


def line_of(lines: list[str], prefix: str, after: int = -1) -> int:
    """The number of the first line after ``after`` starting with ``prefix``."""
    for n, line in enumerate(lines):
        if n > after and line.startswith(prefix):
            return n
    raise AssertionError(f"no line starting with {prefix!r} after line {after}:\n" + "\n".join(lines))


def table(lines: list[str], after: int) -> dict[str, list[str]]:
    """The first plain table printed after line ``after``: connection id -> its columns."""
    header = line_of(lines, "    connection  state", after)
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        cells = line.split(maxsplit=5)
        rows[cells[0]] = cells[1:]
    return rows


def check_start(lines: list[str]) -> int:
    """Four connections (3 public, sharded 2+2+1, and 1 private that logs in first); returns the 'live' line."""
    assert lines[0].startswith("simulated exchange listening on ws://127.0.0.1:")
    connecting = line_of(lines, "--- connecting")
    live = line_of(lines, "--- 4 connections live: public#1, public#2, public#3, private#1", connecting)
    early = [e for e in events(lines) if connecting < e[0] < live]
    assert {e[1] for e in early} == IDS
    private = [(e[2], e[3], e[4]) for e in early if e[1] == "private#1"]
    assert private == [
        ("disconnected", "connecting", "connect"),
        ("connecting", "authenticating", "opened"),  # the connector logs in...
        ("authenticating", "subscribing", "authenticated"),  # ...before any subscribe
        ("subscribing", "live", "subscribed"),
    ]
    for cid in IDS - {"private#1"}:
        assert ("connecting", "subscribing", "opened") in [(e[2], e[3], e[4]) for e in early if e[1] == cid]
    rows = table(lines, live)
    assert set(rows) == IDS
    assert {cid: (row[0], row[1]) for cid, row in rows.items()} == {
        "public#1": ("live", "2"),
        "public#2": ("live", "2"),
        "public#3": ("live", "1"),
        "private#1": ("live", "1"),
    }
    assert all(float(row[2]) > 0 for row in rows.values()), rows  # msg/s: every connection streams
    return live


def check_drop(lines: list[str], after: int) -> int:
    """One connection reconnects after the reset; the others keep their sessions. Returns the outcome line."""
    start = line_of(lines, "--- fault 1/3: drop one connection", after)
    outcome = line_of(lines, "--- drop: ", start)
    during = [e for e in events(lines) if start < e[0] < outcome]
    assert {e[1] for e in during} and len({e[1] for e in during}) == 1, during  # only the victim moved
    victim = during[0][1]
    assert (during[0][2], during[0][3], during[0][4]) == ("live", "reconnecting", "lost")
    assert "connection broken" in during[0][5] or "closed by peer" in during[0][5]
    assert (during[-1][3], during[-1][4]) == ("live", "subscribed")
    assert lines[outcome] == f"--- drop: {victim} reconnected (session 2); the other 3 kept their sessions"
    rows = table(lines, outcome)
    assert {cid: row[3] for cid, row in rows.items()} == {cid: "2" if cid == victim else "1" for cid in IDS}
    return outcome


def test_demo_runs_every_step_and_ends_by_itself() -> None:
    code, lines, err, seconds = run_demo("--duration", "40")
    text = "\n".join(lines)
    assert code == 0, f"{text}\n{err}"
    assert "Traceback" not in err, err
    assert "not seen within" not in text and "stopped after its" not in text, text
    assert seconds < 30, f"the demo took {seconds:.1f} s"
    assert {e[1] for e in events(lines)} == IDS  # 4 connections, and no others, ever

    live = check_start(lines)
    dropped = check_drop(lines, live)

    # the stall: every connection goes stale, then loses the session, reconnects, is live again
    stall = line_of(lines, "--- fault 2/3: stall", dropped)
    recovered = line_of(lines, "--- stall: every connection went stale, reconnected", stall)
    during = [e for e in events(lines) if stall < e[0] < recovered]
    for cid in IDS:
        mine = [(e[2], e[3], e[4]) for e in during if e[1] == cid]
        assert mine[:2] == [("live", "stale", "silence"), ("stale", "reconnecting", "lost")], (cid, mine)
        assert mine[-1] == ("subscribing", "live", "subscribed"), (cid, mine)
    assert any("pong_timeout" in e[5] for e in during)

    # the 429: refused with Retry-After, waits that long, comes back
    rejected = line_of(lines, "--- fault 3/3: HTTP 429 with Retry-After: 2", recovered)
    back = line_of(lines, "--- 429: ", rejected)
    during = [e for e in events(lines) if rejected < e[0] < back]
    refusals = [e for e in during if "handshake rejected with HTTP 429, Retry-After 2 s" in e[5]]
    assert len(refusals) == 1 and (refusals[0][2], refusals[0][3], refusals[0][4]) == ("connecting", "reconnecting", "lost")
    victim = refusals[0][1]
    assert lines[back] == f"--- 429: {victim} was refused, waited the 2 s the server asked for, and is live again"
    assert table(lines, back)[victim][4].startswith("handshake rejected with HTTP 429")

    # the rotation: a second private#1 socket logs in and subscribes, then the old one closes with 1000
    rotation = line_of(lines, "--- then a rotation: private#1", back)
    rotated = line_of(lines, "--- rotation: ", rotation)
    assert lines[rotated] == (
        "--- rotation: private#1 runs on a new socket (1 accepted), logged in and subscribed before the old one"
        " closed with 1000; it is live"
    )
    during = [(e[2], e[3], e[4], e[5]) for e in events(lines) if rotation < e[0] < rotated]
    assert {e[1] for e in events(lines) if rotation < e[0] < rotated} == {"private#1"}  # nobody else moved
    assert [d[:3] for d in during] == [
        ("disconnected", "connecting", "connect"),  # the replacement...
        ("connecting", "authenticating", "opened"),  # ...logs in...
        ("authenticating", "subscribing", "authenticated"),
        ("subscribing", "live", "subscribed"),  # ...and subscribes, while the old one streams on
        ("live", "closing", "close"),  # then the old one closes
        ("closing", "disconnected", "closed"),
    ]
    assert during[4][3] == "user close: rotated"

    # the clean shutdown, then the summary
    shutdown = line_of(lines, "--- shutting down: every connection closes with 1000", rotated)
    closed = line_of(lines, "--- closed", shutdown)
    closing = [(e[1], e[2], e[3], e[4]) for e in events(lines) if shutdown < e[0] < closed]
    assert sorted(closing) == sorted(
        [(cid, "live", "closing", "close") for cid in IDS] + [(cid, "closing", "disconnected", "closed") for cid in IDS]
    )
    assert {cid: row[0] for cid, row in table(lines, closed).items()} == dict.fromkeys(IDS, "disconnected")
    summary = lines[-1]
    assert re.fullmatch(
        r"done: \d+ messages over 4 connections \(3 public \+ 1 private\), \d+ state changes, \d+ sessions, "
        r"1 handshake rejected, in \d+\.\d s",
        summary,
    ), summary


def test_demo_on_trio_ends_within_a_short_duration() -> None:
    """On trio, a bound shorter than the script: it stops after the drop, closes with 1000, exit 0, in time."""
    code, lines, err, seconds = run_demo("--duration", "7", "--backend", "trio", timeout=40)
    text = "\n".join(lines)
    assert code == 0, f"{text}\n{err}"
    assert "Traceback" not in err, err
    check_drop(lines, check_start(lines))
    assert "--- fault 2/3" not in text
    cut = line_of(lines, "--- 7 s bound reached: stopping early")
    shutdown = line_of(lines, "--- shutting down: every connection closes with 1000", cut)
    closed = line_of(lines, "--- closed", shutdown)
    closing = [(e[1], e[3], e[5]) for e in events(lines) if shutdown < e[0] < closed]
    assert sorted(closing) == sorted(
        [(cid, "closing", "user close") for cid in IDS] + [(cid, "disconnected", "close complete") for cid in IDS]
    )
    assert re.fullmatch(r"done: \d+ messages over 4 connections \(3 public \+ 1 private\), .* in [0-6]\.\d s", lines[-1]), lines[-1]
    assert seconds < 7 + 3  # (the interpreter's start-up and imports come on top of the bound)


def test_on_a_terminal_the_demo_draws_a_live_table() -> None:
    """rich's terminal path (FORCE_COLOR makes rich treat the pipe as one): a table and a log, redrawn."""
    code, lines, err, _ = run_demo("--duration", "3", FORCE_COLOR="1", TERM="xterm-256color", COLUMNS="120")
    text = "\n".join(lines)
    assert code == 0, f"{text}\n{err}"
    assert "Traceback" not in err, err
    assert "\x1b[?25l" in text  # Live hides the cursor while it redraws...
    assert text.count("state changes (last 8)") >= 5  # ...about 4 times a second
    for column in ("connection", "state", "subs", "msg/s", "sessions", "last cause"):
        assert column in text
    assert all(cid in text for cid in IDS)
    assert not any(line.startswith("--- ") or EVENT.match(line) for line in lines)  # no plain lines
    assert "done: " in lines[-1] and "over 4 connections (3 public + 1 private)" in lines[-1]


@pytest.mark.skipif(os.environ.get("WIRESTATE_DEMO_FULL") != "1", reason="the whole demo on trio too: WIRESTATE_DEMO_FULL=1")
def test_demo_runs_every_step_on_trio() -> None:
    code, lines, err, _ = run_demo("--duration", "40", "--backend", "trio")
    text = "\n".join(lines)
    assert code == 0, f"{text}\n{err}"
    assert "not seen within" not in text, text
    for step in ("--- drop: ", "--- stall: ", "--- 429: ", "--- closed"):
        line_of(lines, step)
    assert lines[-1].startswith("done: ") and "over 4 connections (3 public + 1 private)" in lines[-1]
