"""Typed events the engine hands to the application."""

from __future__ import annotations

from dataclasses import dataclass

from engine.causes import Cause
from machines.connection import State

__all__ = ["StateChanged"]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """One transition of a connection's state machine.

    ``connection`` is the slot's logical id, stable across reconnects; ``at``
    is the injected clock's time of the change. ``cause`` is the typed cause
    (:mod:`engine.causes`) on transitions that have one (``lost``,
    ``give_up``, ``close``, ``closed``); ``reason`` is readable text, and
    ``delay`` the wait the reconnect policy chose (on ``lost`` when it will
    retry), already capped.
    """

    connection: str
    source: State
    dest: State
    trigger: str
    reason: str
    at: float
    cause: Cause | None = None
    delay: float | None = None

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"[{self.at:10.3f}] {self.connection}: {self.source} -> {self.dest} on {self.trigger}{why}"
