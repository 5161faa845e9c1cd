"""Diagrams are generated from the machine the code runs, and CI fails on drift."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from engine.cli import main
from machines.connection import STATES, TRANSITIONS, TRIGGERS
import pytest

from machines.diagrams import TABLES, connection_mermaid, mermaid
from machines.table import Table

ROOT = Path(__file__).resolve().parent.parent


def test_committed_diagrams_match_the_code(capsys: object) -> None:
    assert main(["diagrams", "--check", "--dir", str(ROOT / "diagrams")]) == 0


def test_check_fails_on_drift(tmp_path: Path) -> None:
    assert main(["diagrams", "--dir", str(tmp_path)]) == 0
    assert main(["diagrams", "--check", "--dir", str(tmp_path)]) == 0
    path = tmp_path / "connection.md"
    path.write_text(path.read_text().replace("live --> stale: silence", "live --> stale: hush"))
    assert main(["diagrams", "--check", "--dir", str(tmp_path)]) == 1


def test_diagram_lists_exactly_the_states_and_triggers_in_use() -> None:
    text = connection_mermaid()
    edges = set(re.findall(r"^\s+(\w+) --> (\w+): (\w+)", text, re.M))
    expected = set()
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            expected.add((source.value, t["dest"].value, t["trigger"]))
    assert edges == expected
    assert {e[2] for e in edges} == set(TRIGGERS)
    drawn_states = set(re.findall(r'^\s+state "(\w+)" as', text, re.M))
    assert drawn_states == {s.value for s in STATES}


def test_layer_rules_hold() -> None:
    """import-linter contracts in pyproject.toml (DESIGN section 1 layer rules)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is part of the test extra"
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_machine_is_drawn_with_exactly_its_edges(table: Table) -> None:
    text = mermaid(table)
    # one arrow per (source, dest); several triggers on it are drawn as "a | b"
    edges = {
        (source, dest, trigger)
        for source, dest, label in re.findall(r"^\s+(\w+) --> (\w+): (\w+(?: \| \w+)*)", text, re.M)
        for trigger in label.split(" | ")
    }
    expected = set()
    for t in table.transitions:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            expected.add((source.value, t["dest"].value, t["trigger"]))
    assert edges == expected
    assert set(re.findall(r'^\s+state "(\w+)" as', text, re.M)) == {s.value for s in table.states}
