"""The connection state machine (DESIGN section 2).

One stock :class:`transitions.Machine` is built from :data:`STATES` and
:data:`TRANSITIONS` and shared by every connection: building a Machine per
connection costs far more than a transition. Models are driven through the
machine's public events (``MACHINE.events[trigger].trigger(model)``) rather
than ``add_model``, which binds ~30 callables onto every model (~10 KiB per
connection, measured) and keeps a list that must be scanned on removal.

The machine is the authority: a trigger the current state does not allow
raises :class:`transitions.MachineError` (``ignore_invalid_triggers`` is off).
Code that fires on purpose only when allowed asks :meth:`ConnectionModel.may_fire`
first, so the speculation is visible where it happens.

Triggers fire on connection events, never per message. Diagrams in
``diagrams/`` are generated from these same tables.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

from transitions import EventData, Machine, MachineError

__all__ = [
    "ConnectionModel",
    "IllegalTransition",
    "MACHINE",
    "State",
    "STATES",
    "TRANSITIONS",
    "TRIGGERS",
    "Listener",
    "build_machine",
    "state_of",
]

# transitions logs every callback of every trigger at INFO; an application
# that turns INFO on wants our one line per state change, not that chatter.
# Only when nobody configured that logger (its level is still NOTSET).
_TRANSITIONS_LOG = logging.getLogger("transitions")
if _TRANSITIONS_LOG.level == logging.NOTSET:
    _TRANSITIONS_LOG.setLevel(logging.WARNING)

#: raised by :meth:`ConnectionModel.fire` for a trigger the state does not allow (a bug)
IllegalTransition = MachineError


class State(str, enum.Enum):
    """Observable phases of one connection slot."""

    DISCONNECTED = "disconnected"  # not running: before start, after close or give-up
    CONNECTING = "connecting"  # dialing + WebSocket handshake
    AUTHENTICATING = "authenticating"  # connector running (login before any subscribe)
    SUBSCRIBING = "subscribing"  # subscriber running, waiting for acks
    LIVE = "live"  # streaming; traffic within the deadline
    STALE = "stale"  # silent past traffic_timeout; ping sent, waiting for the grace
    RECONNECTING = "reconnecting"  # lost: the old socket winds down, then the policy's wait
    CLOSING = "closing"  # user close: close handshake under a bounded timeout

    def __str__(self) -> str:
        return self.value


STATES: tuple[State, ...] = tuple(State)
# value -> member: a dict lookup instead of an Enum call on every transition
_BY_VALUE: dict[str, State] = {state.value: state for state in STATES}


def state_of(value: str) -> State:
    """The :class:`State` whose value is ``value`` (what the machine stores on a model)."""
    return _BY_VALUE[value]


#: states in which a session (one socket) is in progress
SESSION_STATES = frozenset({State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE, State.STALE})
_SESSION = [State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE, State.STALE]

#: The transition table: the single source of truth for code and diagrams.
TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "connect", "source": State.DISCONNECTED, "dest": State.CONNECTING},
    {"trigger": "opened", "source": State.CONNECTING, "dest": State.AUTHENTICATING, "conditions": "needs_auth"},
    {"trigger": "opened", "source": State.CONNECTING, "dest": State.SUBSCRIBING, "unless": "needs_auth"},
    {"trigger": "authenticated", "source": State.AUTHENTICATING, "dest": State.SUBSCRIBING},
    {"trigger": "subscribed", "source": State.SUBSCRIBING, "dest": State.LIVE},
    {"trigger": "silence", "source": State.LIVE, "dest": State.STALE},
    {"trigger": "traffic", "source": State.STALE, "dest": State.LIVE},
    {"trigger": "lost", "source": _SESSION, "dest": State.RECONNECTING},
    {"trigger": "retry", "source": State.RECONNECTING, "dest": State.CONNECTING},
    {"trigger": "give_up", "source": State.RECONNECTING, "dest": State.DISCONNECTED},
    {"trigger": "close", "source": [*_SESSION, State.RECONNECTING], "dest": State.CLOSING},
    {"trigger": "closed", "source": State.CLOSING, "dest": State.DISCONNECTED},
)

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(t["trigger"] for t in TRANSITIONS))


def _sources(transition: dict[str, Any]) -> list[str]:
    source = transition["source"]
    return [s.value for s in source] if isinstance(source, list) else [source.value]


# (trigger, state value) pairs the table allows: may_fire() asks this, not the library's internals.
_ALLOWED: frozenset[tuple[str, str]] = frozenset((t["trigger"], s) for t in TRANSITIONS for s in _sources(t))

#: ``(source, dest, trigger, info)``, called after every transition; ``info`` is what fire() got.
Listener = Callable[[State, State, str, Any], None]


class ConnectionModel:
    """The per-connection model the shared machine drives.

    ``needs_auth`` selects the authenticated route out of ``connecting``;
    ``listener`` hears every transition with the ``info`` it was fired with
    (the engine passes the typed cause there: this module knows no engine types).
    Keeps default identity equality and no ``__slots__``, as ``transitions``
    requires.
    """

    def __init__(self, *, needs_auth: bool = False, listener: Listener | None = None) -> None:
        # The machine runs on plain string states (the enum values).
        self.state: str = State.DISCONNECTED.value
        self.needs_auth = needs_auth
        self.listener = listener

    def may_fire(self, trigger: str) -> bool:
        """Whether the current state has a transition on ``trigger``."""
        return (trigger, self.state) in _ALLOWED

    def fire(self, trigger: str, info: Any = None) -> None:
        """Fire ``trigger``; raises :data:`IllegalTransition` when the state does not allow it."""
        MACHINE.events[trigger].trigger(self, info=info)

    def _after_change(self, event: EventData) -> None:
        transition = event.transition
        if self.listener is not None and transition is not None:
            dest = transition.dest or transition.source  # (an internal transition stays put)
            self.listener(_BY_VALUE[transition.source], _BY_VALUE[dest], event.event.name, event.kwargs.get("info"))


def _after_change(event: EventData) -> None:
    model = event.model
    assert isinstance(model, ConnectionModel)
    model._after_change(event)


def _plain(transition: dict[str, Any]) -> dict[str, Any]:
    """A transition with its State members as plain strings."""
    plain = dict(transition)
    for key in ("source", "dest"):
        value = plain[key]
        plain[key] = [s.value for s in value] if isinstance(value, list) else value.value
    return plain


def build_machine(machine_class: type[Machine] = Machine, **extra: Any) -> Machine:
    """A Machine over the connection tables (``model=None``: models are driven through its events)."""
    return machine_class(
        model=extra.pop("model", None),
        states=[state.value for state in STATES],
        transitions=[_plain(t) for t in TRANSITIONS],
        initial=State.DISCONNECTED.value,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
        # A callable, not a method name: spares a getattr per transition.
        after_state_change=_after_change,
        **extra,
    )


#: The machine every connection model is driven by.
MACHINE: Machine = build_machine()
