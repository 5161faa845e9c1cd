"""LeanMachine behaves exactly like a stock transitions Machine.

The connection machine runs on :class:`machines.lean.LeanMachine`, which skips
hooks a table leaves empty. These tests drive a stock ``Machine`` and a
``LeanMachine`` over the same tables (the connection table, and a table that
uses every hook transitions offers) with the same trigger sequences, and
compare states, results, raised errors and the full callback log.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import EventData, Machine, MachineError, State
from transitions.extensions.states import Error, Timeout, add_state_features

from machines.connection import (
    MACHINE,
    STATES,
    TRANSITIONS,
    TRIGGERS,
    ConnectionModel,
    build_machine,
)
from machines.lean import LeanMachine


class _Recorder:
    """A model that logs every callback with what it saw."""

    def __init__(self, flag: bool) -> None:
        self.flag = flag
        self.log: list[tuple[Any, ...]] = []

    def hook(self, name: str) -> Any:
        def record(event: EventData) -> None:
            transition = event.transition
            self.log.append(
                (
                    name,
                    event.event.name,
                    event.state.name,
                    None if transition is None else (transition.source, transition.dest),
                    tuple(sorted(event.kwargs.items())),
                    self.state,  # type: ignore[attr-defined]
                )
            )

        return record

    def is_flag(self, event: EventData) -> bool:
        self.log.append(("condition", event.event.name, self.state))  # type: ignore[attr-defined]
        return self.flag

    def boom(self, event: EventData) -> None:
        if event.kwargs.get("explode"):
            raise RuntimeError("callback failed")


# Every hook transitions has, on a small machine with an internal transition,
# a conditional pair, a final state and a callback that can raise.
_HOOKED_STATES = [
    {"name": "a", "on_enter": ["enter_a"], "on_exit": ["exit_a"]},
    {"name": "b", "on_enter": ["enter_b"]},
    {"name": "c", "on_exit": ["exit_c"]},
    {"name": "z", "final": True, "on_enter": ["enter_z"]},
]
_HOOKED_TRANSITIONS = [
    {"trigger": "go", "source": "a", "dest": "b", "prepare": "prep_go", "before": "before_go", "after": "after_go"},
    {"trigger": "go", "source": "b", "dest": "c", "conditions": "is_flag"},
    {"trigger": "go", "source": "b", "dest": "a", "unless": "is_flag", "after": "boom"},
    {"trigger": "stay", "source": ["a", "b", "c"], "dest": None, "after": "after_stay"},
    {"trigger": "back", "source": "c", "dest": "a", "before": "boom"},
    {"trigger": "end", "source": ["b", "c"], "dest": "z"},
    {"trigger": "loop", "source": "c", "dest": "c", "after": "after_loop"},
]
_HOOK_NAMES = (
    "enter_a", "exit_a", "enter_b", "exit_c", "enter_z", "prep_go", "before_go", "after_go",
    "after_stay", "after_loop", "before_any", "after_any", "on_final_cb",
)  # fmt: skip


def _hooked(cls: type[Machine], flag: bool) -> _Recorder:
    model = _Recorder(flag)
    for name in _HOOK_NAMES:
        setattr(model, name, model.hook(name))
    cls(
        model=model,
        states=_HOOKED_STATES,
        transitions=_HOOKED_TRANSITIONS,
        initial="a",
        auto_transitions=False,
        send_event=True,
        before_state_change="before_any",
        after_state_change="after_any",
        on_final="on_final_cb",
    )
    return model


def _step(model: Any, trigger: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    try:
        result: Any = getattr(model, trigger)(**kwargs)
    except MachineError as exc:
        result = ("MachineError", str(exc))
    except RuntimeError as exc:
        result = ("RuntimeError", str(exc))
    return (result, model.state)


_TRIGGER_STEPS = st.lists(
    st.tuples(st.sampled_from(["go", "stay", "back", "end", "loop"]), st.booleans()), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(flag=st.booleans(), steps=_TRIGGER_STEPS)
def test_lean_machine_matches_stock_on_every_hook(flag: bool, steps: list[tuple[str, bool]]) -> None:
    stock, lean = _hooked(Machine, flag), _hooked(LeanMachine, flag)
    for trigger, explode in steps:
        kwargs = {"explode": True} if explode else {}
        assert _step(lean, trigger, kwargs) == _step(stock, trigger, kwargs)
        assert lean.log == stock.log
    assert lean.log == stock.log


def test_the_hooked_table_exercises_what_it_claims() -> None:
    # (a guard for the property test above: the hooks really fire)
    model = _hooked(LeanMachine, flag=True)
    model.go()  # a -> b: prepare, before, exit_a, enter_b, after
    model.go()  # b -> c: condition true
    model.stay()
    model.end()  # c -> z: final
    names = [entry[0] for entry in model.log]
    for expected in ("prep_go", "before_any", "before_go", "exit_a", "enter_b", "after_go", "after_any",
                     "condition", "exit_c", "after_stay", "enter_z", "on_final_cb"):  # fmt: skip
        assert expected in names
    assert model.state == "z"


class _Listened:
    def __init__(self, needs_auth: bool) -> None:
        self.heard: list[tuple[Any, ...]] = []
        self.model = ConnectionModel(needs_auth=needs_auth, listener=lambda *a: self.heard.append(a))


@settings(max_examples=300, deadline=None)
@given(needs_auth=st.booleans(), steps=st.lists(st.sampled_from(TRIGGERS), max_size=30))
def test_connection_table_runs_the_same_on_stock_and_lean(needs_auth: bool, steps: list[str]) -> None:
    stock_machine = build_machine(Machine)
    lean, stock = _Listened(needs_auth), _Listened(needs_auth)
    for trigger in steps:
        moved = lean.model.fire(trigger, "why")
        # The stock machine, driven the way ConnectionModel.fire drives the shared one.
        event = stock_machine.events[trigger]
        stock_moved = stock.model.state in event.transitions and bool(event.trigger(stock.model, reason="why"))
        assert moved == stock_moved
        assert lean.model.state == stock.model.state
        assert lean.heard == stock.heard


def test_connection_machine_is_lean_and_keeps_its_states() -> None:
    assert isinstance(MACHINE, LeanMachine)
    assert list(MACHINE.states) == [s.value for s in STATES]
    assert len(MACHINE.get_transitions()) == sum(
        len(t["source"]) if isinstance(t["source"], list) else 1 for t in TRANSITIONS
    )


def test_lean_machine_keeps_the_stock_error_for_an_invalid_trigger() -> None:
    model = _hooked(LeanMachine, flag=False)
    with pytest.raises(MachineError, match="Can't trigger event back from state a"):
        model.back()


class _AuditedState(State):
    """A custom state_cls (a documented extension point) whose work is in enter/exit."""

    log: list[tuple[str, str]] = []

    def enter(self, event_data: EventData) -> None:
        _AuditedState.log.append(("enter", self.name))
        super().enter(event_data)

    def exit(self, event_data: EventData) -> None:
        _AuditedState.log.append(("exit", self.name))
        super().exit(event_data)


@pytest.mark.parametrize("base", [Machine, LeanMachine])
def test_custom_state_class_enter_and_exit_still_run(base: type[Machine]) -> None:
    class Audited(base):  # type: ignore[misc,valid-type]
        state_cls = _AuditedState

    machine = Audited(states=["a", "b"], transitions=[["go", "a", "b"]], initial="a", auto_transitions=False)
    _AuditedState.log = []
    machine.go()
    assert machine.state == "b"
    assert _AuditedState.log == [("exit", "a"), ("enter", "b")]


@pytest.mark.parametrize("base", [Machine, LeanMachine])
def test_state_features_still_work(base: type[Machine]) -> None:
    @add_state_features(Timeout)
    class WithTimeout(base):  # type: ignore[misc,valid-type]
        pass

    machine = WithTimeout(
        states=["a", {"name": "b", "timeout": 30, "on_timeout": lambda: None}],
        transitions=[["go", "a", "b"]],
        initial="a",
        auto_transitions=False,
    )
    machine.go()
    timer = machine.get_state("b").runner.get(id(machine))
    assert timer is not None  # entering armed the (thread) timer
    timer.cancel()  # never waited on

    @add_state_features(Error)
    class WithErrors(base):  # type: ignore[misc,valid-type]
        pass

    dead_end = WithErrors(states=["a", "dead"], transitions=[["go", "a", "dead"]], initial="a", auto_transitions=False)
    with pytest.raises(MachineError, match="Error state"):
        dead_end.go()


@pytest.mark.parametrize("base", [Machine, LeanMachine])
def test_bad_destination_and_enum_on_the_model_fail_as_in_stock(base: type[Machine]) -> None:
    machine = base(states=["a", "b"], transitions=[["go", "a", "nowhere"]], initial="a", auto_transitions=False)
    with pytest.raises(ValueError, match="nowhere"):
        machine.go()

    class Letter(str, enum.Enum):
        A = "a"

    machine = base(states=["a", "b"], transitions=[["go", "a", "b"]], initial="a", auto_transitions=False)
    machine.state = Letter.A  # an Enum member where the machine stores strings
    with pytest.raises(ValueError):
        machine.go()
