"""A ``transitions`` Machine that does per trigger only the work a table asks for.

Stock ``transitions`` spends ~5 µs on every trigger of a plain machine: a
``partial`` and a pass through ``Machine._process``, about a dozen disabled
log calls, three ``get_state`` lookups, and a walk over every callback hook
(prepare, before, after, enter, exit, finalize) even when all are empty. A
connection fires five transitions to open and close, so that overhead was a
measurable share of handshake latency.

:class:`LeanMachine` plugs into the library's documented extension points
(``event_cls``, ``transition_cls``): the same ``Event``/``Transition``/
``State``/``Condition`` objects, the same ``EventData`` handed to the same
callbacks in the same order, conditions checked the same way; only hooks
that are empty are skipped. Anything it does not specialise (queued machines,
``prepare_event``/``finalize_event``/``on_exception``, invalid triggers)
goes through the stock code unchanged. tests/test_machines.py drives stock
and lean machines through the same random trigger sequences and compares
states, results and callback logs.
"""

from __future__ import annotations

import itertools
from typing import Any

from transitions import EventData, Machine, State
from transitions.core import Event, Transition

__all__ = ["LeanMachine"]


_PLAIN_ENTER = State.enter
_PLAIN_EXIT = State.exit


class _LeanTransition(Transition):  # type: ignore[misc]  # transitions is untyped
    def execute(self, event_data: EventData) -> bool:
        machine = event_data.machine
        if self.prepare:
            machine.callbacks(self.prepare, event_data)
        for condition in self.conditions:
            if not condition.check(event_data):
                return False
        if machine.before_state_change or self.before:
            machine.callbacks(itertools.chain(machine.before_state_change, self.before), event_data)
        if self.dest:  # None: an internal transition, no state change
            self._change_state(event_data)
        if self.after or machine.after_state_change:
            machine.callbacks(itertools.chain(self.after, machine.after_state_change), event_data)
        return True

    def _change_state(self, event_data: EventData) -> None:
        machine = event_data.machine
        states = machine.states  # keyed by name: the machine runs on string states
        if self.source not in states or self.dest not in states:
            return super()._change_state(event_data)  # (the library's own error)
        source = states[self.source]
        # Skipped only when it would do nothing: a plain State without callbacks
        # (state features and custom state classes do their work in enter/exit).
        if source.on_exit or type(source).exit is not _PLAIN_EXIT:
            source.exit(event_data)
        dest = states[self.dest]  # type: ignore[index]  # (checked above)
        setattr(event_data.model, machine.model_attribute, dest.value)
        event_data.state = dest
        if dest.on_enter or type(dest).enter is not _PLAIN_ENTER:
            dest.enter(event_data)
        if dest.final:
            machine.callbacks(machine.on_final, event_data)


class _LeanEvent(Event):  # type: ignore[misc]
    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        machine = self.machine
        if machine.has_queue or machine.prepare_event or machine.finalize_event or machine.on_exception:
            return bool(super().trigger(model, *args, **kwargs))
        value = getattr(model, machine.model_attribute)
        state = machine.states.get(value) if type(value) is str else None
        candidates = self.transitions.get(state.name) if state is not None else None
        if not candidates:
            # Not a plain string state, unknown, or no transition from here: the
            # library's own handling (errors, warnings, Enum states).
            return bool(super().trigger(model, *args, **kwargs))
        event_data = EventData(state, self, machine, model, args=args, kwargs=kwargs)
        for transition in candidates:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                break
        return bool(event_data.result)


class LeanMachine(Machine):  # type: ignore[misc]
    """A :class:`transitions.Machine` whose triggers skip the hooks a table leaves empty.

    Use it like ``Machine``; it is meant for string states (Enum states work,
    but the name lookups below assume ``states`` is keyed by the model's value).
    """

    event_cls = _LeanEvent
    transition_cls = _LeanTransition
