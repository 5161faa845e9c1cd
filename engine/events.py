"""Typed events the engine hands to the application."""

from __future__ import annotations

from dataclasses import dataclass

from machines.connection import State

__all__ = ["StateChanged"]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """One transition of a connection's state machine.

    ``connection`` is the slot's logical id, stable across reconnects; ``at``
    is the injected clock's time of the change.
    """

    connection: str
    source: State
    dest: State
    trigger: str
    reason: str
    at: float

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"[{self.at:10.3f}] {self.connection}: {self.source} -> {self.dest} on {self.trigger}{why}"
