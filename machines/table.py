"""One way to define a machine: a table of transitions, run by the stock ``transitions`` Machine.

Every machine kind (connection, subscription, manager) is a :class:`Table`:
states as a ``str`` Enum, transitions as dicts, one shared
:class:`transitions.Machine` for all models of that kind (built with
``model=None``: models are driven through its public events, not bound with
``add_model``, which costs ~10 KiB per model). An illegal trigger raises
:class:`transitions.MachineError`; :meth:`Table.may_fire` answers from the
table itself, for the places that fire speculatively on purpose.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from transitions import EventData, Machine
from transitions.core import Event

__all__ = ["DirectEvent", "Table", "TableModel"]

# transitions logs every callback of every trigger at INFO; an application
# that turns INFO on wants our one line per state change, not that chatter.
# Only when nobody configured that logger (its level is still NOTSET).
_TRANSITIONS_LOG = logging.getLogger("transitions")
if _TRANSITIONS_LOG.level == logging.NOTSET:
    _TRANSITIONS_LOG.setLevel(logging.WARNING)


def _values(states: Any) -> list[str]:
    return [s.value for s in states] if isinstance(states, list) else [states.value]


class TableModel:
    """A model a :class:`Table` drives: ``state`` (the value string) and an optional listener.

    Keeps default identity equality and no ``__slots__``, as ``transitions`` requires.
    """

    table: Table  # set by subclasses (class attribute)

    def __init__(self, listener: Callable[[Any, Any, str, Any], None] | None = None) -> None:
        self.state: str = self.table.initial.value
        self.listener = listener

    def may_fire(self, trigger: str) -> bool:
        """Whether the current state has a transition on ``trigger``."""
        return (trigger, self.state) in self.table.allowed

    def transitioned(self, source: Any, dest: Any, trigger: str, info: Any) -> None:
        """Called after every transition; tells the listener (override to add more)."""
        if self.listener is not None:
            self.listener(source, dest, trigger, info)

    def fire(self, trigger: str, info: Any = None) -> None:
        """Fire ``trigger``; raises :class:`transitions.MachineError` when the state does not allow it."""
        self.table.machine.events[trigger].trigger(self, info=info)


class DirectEvent(Event):
    """An Event that runs its transitions without the machine's queue wrapper, when nothing needs it.

    A documented extension point (``Machine.event_cls``), public members only:
    when the machine has no queue and no ``prepare_event``/``finalize_event``/
    ``on_exception`` hooks (ours never do), triggering is: the model's state
    (``get_model_state``), its transitions for this event, and each one's
    public ``execute`` until one succeeds, exactly what the stock path does
    inside its wrapper. A transition with no hooks at all (no prepare,
    conditions, before or after, no exit or enter callbacks, nothing before
    the state change) is what ``execute`` reduces to: set the state, then the
    machine's ``after_state_change`` callbacks. Anything else, an illegal
    trigger included (which must raise), goes through the stock path.
    """

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        machine = self.machine
        if _wrapped(machine):
            return bool(super().trigger(model, *args, **kwargs))
        state = machine.get_model_state(model)
        candidates = self.transitions.get(state.name)
        if not candidates:
            return bool(super().trigger(model, *args, **kwargs))  # (the library's own error)
        event_data = EventData(state, self, machine, model, args=args, kwargs=kwargs)
        if len(candidates) == 1 and _bare(candidates[0], state, machine):
            # What execute() does when every hook on the way is empty: set the state,
            # then the machine's after_state_change callbacks. Skips ~10 calls of empty
            # callback lists and debug logging per transition.
            transition = event_data.transition = candidates[0]
            if transition.dest:
                machine.set_state(transition.dest, model)
                event_data.update(getattr(model, machine.model_attribute))
            machine.callbacks(machine.after_state_change, event_data)
            event_data.result = True
            return True
        for transition in candidates:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                break
        return bool(event_data.result)


def _wrapped(machine: Any) -> bool:
    """Whether triggering needs the machine's wrapper: a queue, or event-wide hooks."""
    return bool(machine.has_queue or machine.prepare_event or machine.finalize_event or machine.on_exception)


def _bare(transition: Any, source: Any, machine: Any) -> bool:
    """Whether executing ``transition`` would only set the state and run ``after_state_change``."""
    if transition.prepare or transition.conditions or transition.before or transition.after:
        return False
    if machine.before_state_change or source.on_exit:
        return False
    if transition.dest:
        dest = machine.get_state(transition.dest)
        if dest.on_enter or (dest.final and machine.on_final):
            return False
    return True


#: a model type, for fire_all
M = TypeVar("M", bound="TableModel")


class _DirectMachine(Machine):  # type: ignore[misc]  # (transitions is untyped)
    """The stock Machine, triggering through :class:`DirectEvent`."""

    event_cls = DirectEvent


class Table:
    """A machine kind: its states, its transition table, and the one Machine that runs it."""

    def __init__(
        self,
        name: str,
        states: type[enum.Enum],
        transitions: Sequence[dict[str, Any]],
        initial: enum.Enum,
        source_file: str,
    ) -> None:
        self.name = name
        self.states: tuple[Any, ...] = tuple(states)
        self.by_value: dict[str, Any] = {s.value: s for s in self.states}
        self.transitions = tuple(transitions)
        self.initial = initial
        self.source_file = source_file
        self.triggers: tuple[str, ...] = tuple(dict.fromkeys(t["trigger"] for t in self.transitions))
        self.allowed: frozenset[tuple[str, str]] = frozenset(
            (t["trigger"], s) for t in self.transitions for s in _values(t["source"])
        )
        self.machine: Machine = self.build()

    def build(self, machine_class: type[Machine] = _DirectMachine, **extra: Any) -> Machine:
        """A Machine over this table (``model=None`` unless ``model=`` is given: diagrams pass one)."""
        return machine_class(
            model=extra.pop("model", None),
            states=[s.value for s in self.states],
            transitions=[self._plain(t) for t in self.transitions],
            initial=self.initial.value,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=True,
            after_state_change=self._after_change,  # a callable: spares a getattr per transition
            **extra,
        )

    def fire_all(self, models: Iterable[M], trigger: str, info: Any = None) -> list[M]:
        """Fire ``trigger`` on each model whose state allows it; returns those that moved, in order.

        For many models at once (a flush of 10,000 subscriptions): where the
        transition has no hooks at all (see :class:`DirectEvent`) it is what
        ``execute`` reduces to, set the state through the machine and tell the
        model, without an ``EventData`` per model; anything else triggers
        through the machine as :meth:`TableModel.fire` does.
        """
        machine = self.machine
        event = machine.events[trigger]
        direct = (
            not _wrapped(machine)
            and machine.after_state_change == [self._after_change]
        )
        by_value, allowed = self.by_value, self.allowed
        moved: list[M] = []
        for model in models:
            source = model.state
            if (trigger, source) not in allowed:
                continue
            candidates = event.transitions[source]  # (allowed: it has some)
            if direct and len(candidates) == 1 and _bare(candidates[0], machine.get_state(source), machine):
                dest = candidates[0].dest or source
                machine.set_state(dest, model)
                model.transitioned(by_value[source], by_value[dest], trigger, info)
            elif not event.trigger(model, info=info):
                continue  # (a condition said no)
            moved.append(model)
        return moved

    def _after_change(self, event: EventData) -> None:
        transition = event.transition
        if transition is not None:
            dest = transition.dest or transition.source  # (an internal transition stays put)
            by_value = self.by_value
            model: TableModel = event.model  # type: ignore[assignment]  # (transitions is untyped)
            model.transitioned(by_value[transition.source], by_value[dest], event.event.name, event.kwargs.get("info"))

    @staticmethod
    def _plain(transition: dict[str, Any]) -> dict[str, Any]:
        plain = dict(transition)
        for key in ("source", "dest"):
            value = plain[key]
            plain[key] = _values(value) if isinstance(value, list) else value.value
        return plain
