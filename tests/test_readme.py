"""The README's examples run as written against `wirestate sim` and end by themselves.

Every ```python block that calls ``anyio.run(`` is a complete program: it is run
in a subprocess (real clock, 127.0.0.1 only) with WIRESTATE_URL pointing at a
``wirestate sim --port 0`` subprocess. Fragments (no ``anyio.run``) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "anyio.run(" in block]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "sim", "--port", "0", "--duration", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:\d+/ws", first)
        assert match, first
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_readme_has_its_examples() -> None:
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs_as_written(sim_url: str, index: int) -> None:
    env = {**os.environ, "WIRESTATE_URL": sim_url}
    done = subprocess.run(
        [sys.executable, "-c", EXAMPLES[index]], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    if index == 0:
        assert "message:" in done.stdout
        assert "-> live on subscribed" in done.stdout
        assert done.stdout.rstrip().endswith("stopped by user close")
    elif index == 1:
        assert "'connecting -> authenticating', 'authenticating -> subscribing', 'subscribing -> live'" in done.stdout
    else:
        assert "ticker:ETH-USD subscribed spot#2" in done.stdout
        assert "trades:BTC-USD" not in done.stdout
        assert "('spot#1', 'live', 1), ('spot#2', 'live', 2)" in done.stdout


@pytest.mark.parametrize("package", ["engine", "machines", "transports"])
def test_the_layout_table_names_every_module(package: str) -> None:
    row = next(line for line in README.read_text().splitlines() if line.startswith(f"| `{package}/`"))
    named = set(re.findall(r"`([a-z_]+\.py)`", row))
    actual = {p.name for p in (README.parent / package).glob("*.py") if p.name != "__init__.py"}
    assert named == actual
