"""The seeded simulation harness (issue 19): hours of virtual time under seeded faults, invariants after every step.

Across seeds and backends the suite simulates over 1,000 virtual hours
(4 seeds x 130 h on asyncio and on trio, more on 3.12+ with the eager
backend); ``pytest --soak HOURS tests/test_harness.py`` runs each seed for
HOURS instead. A failing seed is printed by hypothesis (``seed=...``) and
in the error (``rerun: wirestate simulate --seed N --hours H``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.harness import InvariantViolation, Report, Scenario, run_simulation, simulate

HOURS = 130.0


@pytest.fixture
def hours(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--soak")) or HOURS


@pytest.mark.anyio
@settings(
    max_examples=4, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
async def test_seeded_simulation_keeps_every_invariant(seed: int, hours: float) -> None:
    report = await simulate(Scenario(seed=seed, hours=hours))
    assert report.steps == int(hours * 3600 / 600) or report.steps == int(hours * 3600 / 600) - 1
    assert sum(report.faults.values()) >= hours / 3  # faults really happened (one per ~1.5 h)
    assert len(report.faults) == 6  # of every kind
    assert report.delivered > hours * 10 and report.sessions > 6


def test_a_seed_replays_exactly_on_asyncio() -> None:
    first = run_simulation(Scenario(seed=11, hours=40))
    again = run_simulation(Scenario(seed=11, hours=40))
    assert first == again and first.trail == again.trail
    other = run_simulation(Scenario(seed=12, hours=40))
    assert other.trail != first.trail


_trio_runs: list[Report] = []


@settings(max_examples=2, derandomize=True, deadline=None, database=None)
@given(run=st.integers(0, 1))
def test_a_seed_replays_exactly_on_trio_where_its_scheduler_is_seeded(run: int) -> None:
    """Trio shuffles its run queue on purpose; hypothesis seeds that shuffle per example, so two
    examples running the same seed must agree exactly."""
    _trio_runs.append(run_simulation(Scenario(seed=11, hours=40), backend="trio"))
    if len(_trio_runs) == 2:
        assert _trio_runs[0] == _trio_runs[1]


def test_a_violation_names_the_seed_the_time_and_the_rerun_command() -> None:
    def at_most_eight_sockets(manager: Any, sim: Any) -> str | None:
        return f"{sim.accepted} sockets accepted" if sim.accepted > 8 else None

    def run() -> InvariantViolation:
        with pytest.raises(InvariantViolation) as caught:
            run_simulation_with(Scenario(seed=5, hours=50), at_most_eight_sockets)
        return caught.value

    first, again = run(), run()
    text = str(first)
    assert text.startswith("seed 5: invariant violated at ") and "sockets accepted" in text
    assert "rerun: wirestate simulate --seed 5 --hours 50" in text
    assert "fault:" in text  # what happened last
    assert (first.seed, first.at, text) == (again.seed, again.at, str(again))  # it reproduces exactly


def run_simulation_with(scenario: Scenario, invariant: Any) -> Report:
    import anyio
    import looptime

    return anyio.run(
        lambda: simulate(scenario, invariants=[invariant]),
        backend="asyncio",
        backend_options={"loop_factory": lambda: looptime.new_event_loop(start=0, noop_cycles=1)},
    )


def test_scenario_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        Scenario(seed=1, faults=("meteor",))
    with pytest.raises(ValueError, match="positive"):
        Scenario(seed=1, hours=0)


def test_wirestate_simulate_runs_a_seed_and_says_what_happened(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["simulate", "--seed", "3", "--hours", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("seed 3: 5 h, 30 steps, faults: ") and "trail " in out
    assert main(["simulate", "--seed", "3", "--hours", "5"]) == 0
    assert capsys.readouterr().out == out  # the same seed, the same run
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--seed", "3", "--hours", "-1"])
    assert exited.value.code == 2
    assert "--hours" in capsys.readouterr().err
