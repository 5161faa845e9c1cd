"""The manager machine: ``stopped → starting → running → stopping → stopped``."""

from __future__ import annotations

import enum
from typing import Any

from machines.table import Table, TableModel

__all__ = ["ManagerState", "MANAGER", "ManagerModel"]


class ManagerState(str, enum.Enum):
    """Where a manager stands."""

    STOPPED = "stopped"  # before start, after shutdown
    STARTING = "starting"  # connections dialing, logging in, subscribing
    RUNNING = "running"  # every enabled connection reached live once (or gave up)
    STOPPING = "stopping"  # shutdown: connections closing, bounded

    def __str__(self) -> str:
        return self.value


TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "start", "source": ManagerState.STOPPED, "dest": ManagerState.STARTING},
    {"trigger": "started", "source": ManagerState.STARTING, "dest": ManagerState.RUNNING},
    {"trigger": "shutdown", "source": [ManagerState.STARTING, ManagerState.RUNNING], "dest": ManagerState.STOPPING},
    {"trigger": "stopped", "source": ManagerState.STOPPING, "dest": ManagerState.STOPPED},
)

MANAGER = Table("manager", ManagerState, TRANSITIONS, ManagerState.STOPPED, "machines/manager.py")


class ManagerModel(TableModel):
    """A manager's state."""

    table = MANAGER
