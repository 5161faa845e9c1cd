"""The connection machine: the stock transitions Machine, and it is the authority.

Illegal triggers raise; ``may_fire`` agrees with what the library itself says
is allowed from every state; random trigger walks never leave the table.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import Machine, MachineError

from machines.connection import (
    MACHINE,
    SESSION_STATES,
    STATES,
    TRANSITIONS,
    TRIGGERS,
    ConnectionModel,
    IllegalTransition,
    State,
)
from machines.diagrams import TABLES as TABLES_UNDER_TEST
from machines.manager import ManagerModel
from machines.subscription import SubscriptionModel, SubState
from machines.table import DirectEvent, Table


def test_the_machine_is_stock_transitions_with_every_state() -> None:
    assert isinstance(MACHINE, Machine) and MACHINE.event_cls is DirectEvent
    assert list(MACHINE.states) == [s.value for s in STATES]
    assert MACHINE.ignore_invalid_triggers is False
    assert len(MACHINE.get_transitions()) == sum(
        len(t["source"]) if isinstance(t["source"], list) else 1 for t in TRANSITIONS
    )


def test_an_illegal_trigger_raises() -> None:
    model = ConnectionModel()
    with pytest.raises(IllegalTransition, match="Can't trigger event subscribed from state disconnected"):
        model.fire("subscribed")
    assert model.state == State.DISCONNECTED.value
    assert IllegalTransition is MachineError


@pytest.mark.parametrize("state", STATES, ids=str)
def test_may_fire_agrees_with_the_library(state: State) -> None:
    model = ConnectionModel()
    model.state = state.value
    allowed = set(MACHINE.get_triggers(state.value))
    assert {t for t in TRIGGERS if model.may_fire(t)} == allowed


def test_listener_hears_source_dest_trigger_and_info() -> None:
    heard: list[tuple[Any, ...]] = []
    model = ConnectionModel(needs_auth=True, listener=lambda *a: heard.append(a))
    model.fire("connect", "why")
    model.fire("opened")
    assert heard == [
        (State.DISCONNECTED, State.CONNECTING, "connect", "why"),
        (State.CONNECTING, State.AUTHENTICATING, "opened", None),
    ]


@settings(max_examples=200, deadline=None)
@given(needs_auth=st.booleans(), steps=st.lists(st.sampled_from(TRIGGERS), max_size=40))
def test_random_walks_stay_in_the_table(needs_auth: bool, steps: list[str]) -> None:
    model = ConnectionModel(needs_auth=needs_auth)
    for trigger in steps:
        before = model.state
        if model.may_fire(trigger):
            model.fire(trigger)
            assert model.state != before or trigger in ()  # every transition moves
        else:
            with pytest.raises(IllegalTransition):
                model.fire(trigger)
            assert model.state == before
    if model.state in {s.value for s in SESSION_STATES}:
        assert model.may_fire("lost") and model.may_fire("close")


def test_no_decision_flag_shadows_a_state() -> None:
    """The flags the refit removed stay gone: closing, started, done are machine states."""
    from engine.connection import Connection

    shadows = {"_close_requested", "_closing", "_session_end", "_started", "_done", "_setting_up", "_peer_gone", "_delivering"}
    assert not shadows & set(Connection.__slots__)


@pytest.mark.parametrize("table", TABLES_UNDER_TEST, ids=lambda t: t.name)
def test_may_fire_agrees_with_the_library_for_every_machine(table: Table) -> None:
    for state in table.states:
        allowed = set(table.machine.get_triggers(state.value))
        assert {t for t in table.triggers if (t, state.value) in table.allowed} == allowed


def test_subscription_and_manager_models_raise_on_illegal_triggers() -> None:
    sub = SubscriptionModel()
    with pytest.raises(IllegalTransition):
        sub.fire("acked")
    sub.fire("send")
    sub.fire("acked")
    assert sub.state == SubState.SUBSCRIBED.value
    manager = ManagerModel()
    with pytest.raises(IllegalTransition):
        manager.fire("stopped")
    assert manager.may_fire("start") and not manager.may_fire("shutdown")


@settings(max_examples=150, deadline=None)
@given(needs_auth=st.booleans(), steps=st.lists(st.sampled_from(TRIGGERS), max_size=30))
def test_direct_events_behave_like_the_stock_path(needs_auth: bool, steps: list[str]) -> None:
    """DirectEvent (machines/table.py) against a plain Machine over the same table: same states,
    same results, same listener calls, the same error for an illegal trigger."""
    from machines.connection import TABLE

    stock = TABLE.build(Machine)
    heard_direct: list[Any] = []
    heard_stock: list[Any] = []
    direct_model = ConnectionModel(needs_auth=needs_auth, listener=lambda *a: heard_direct.append(a))
    stock_model = ConnectionModel(needs_auth=needs_auth, listener=lambda *a: heard_stock.append(a))
    for trigger in steps:
        outcomes = []
        for model, fire in (
            (direct_model, lambda m, t: MACHINE.events[t].trigger(m, info=None)),
            (stock_model, lambda m, t: stock.events[t].trigger(m, info=None)),
        ):
            try:
                outcomes.append(("ok", fire(model, trigger)))
            except MachineError as exc:
                outcomes.append(("error", str(exc)))
        assert outcomes[0] == outcomes[1]
        assert direct_model.state == stock_model.state
    assert heard_direct == heard_stock


@pytest.mark.parametrize("table", [t for t in TABLES_UNDER_TEST if t.name != "connection"], ids=lambda t: t.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_direct_events_behave_like_the_stock_path_on_every_other_machine(table: Table, data: st.DataObject) -> None:
    """The hook-free shortcut in DirectEvent (set the state, run after_state_change) against the
    stock path, on every machine kind: same states, results, listener calls and errors."""
    from machines.table import TableModel

    model_class = type("Model", (TableModel,), {"table": table})
    stock = table.build(Machine)
    heard: tuple[list[Any], list[Any]] = ([], [])
    direct_model = model_class(lambda *a: heard[0].append(a))
    stock_model = model_class(lambda *a: heard[1].append(a))
    for trigger in data.draw(st.lists(st.sampled_from(table.triggers), max_size=30)):
        outcomes = []
        for model, machine in ((direct_model, table.machine), (stock_model, stock)):
            try:
                outcomes.append(("ok", machine.events[trigger].trigger(model, info=trigger)))
            except MachineError as exc:
                outcomes.append(("error", str(exc)))
        assert outcomes[0] == outcomes[1]
        assert direct_model.state == stock_model.state
    assert heard[0] == heard[1]


@pytest.mark.parametrize("table", [t for t in TABLES_UNDER_TEST if t.name != "connection"], ids=lambda t: t.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fire_all_moves_exactly_the_models_a_trigger_each_would(table: Table, data: st.DataObject) -> None:
    """Table.fire_all (many models, one trigger) against firing each through the stock machine:
    the same models move, to the same states, with the same listener calls, in order."""
    from machines.table import TableModel

    model_class = type("Model", (TableModel,), {"table": table})
    stock = table.build(Machine)
    count = data.draw(st.integers(1, 6))
    heard: tuple[list[Any], list[Any]] = ([], [])
    ours = [model_class(lambda *a, i=i: heard[0].append((i, *a))) for i in range(count)]
    theirs = [model_class(lambda *a, i=i: heard[1].append((i, *a))) for i in range(count)]
    for trigger in data.draw(st.lists(st.sampled_from(table.triggers), max_size=20)):
        picked = data.draw(st.lists(st.integers(0, count - 1), unique=True))
        moved = table.fire_all([ours[i] for i in picked], trigger, info=trigger)
        expected = []
        for i in picked:
            if theirs[i].may_fire(trigger):
                stock.events[trigger].trigger(theirs[i], info=trigger)
                expected.append(i)
        assert [ours.index(m) for m in moved] == expected
        assert [m.state for m in ours] == [m.state for m in theirs]
    assert heard[0] == heard[1]
