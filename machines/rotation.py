"""The rotation machine: make-before-break replacement of one managed connection.

``steady`` (one connection) → ``opening`` (a replacement dials, logs in and
subscribes beside it) → ``overlapping`` (both stream; what both deliver
reaches the handler once) → ``draining`` (the old one closes with 1000; the
replacement's late copies are still matched) → ``steady``. A replacement
that cannot come up, or an old connection that went down meanwhile, aborts
back to ``steady`` and the old connection carries on. Fired on rotation
events, never per message.
"""

from __future__ import annotations

import enum
from typing import Any

from machines.table import Table, TableModel

__all__ = ["ROTATION", "RotationModel", "RotationState"]


class RotationState(str, enum.Enum):
    """Where one slot's rotation stands."""

    STEADY = "steady"  # one connection, no rotation under way
    OPENING = "opening"  # the replacement is connecting, logging in, subscribing
    OVERLAPPING = "overlapping"  # both are live: duplicates are matched and dropped
    DRAINING = "draining"  # the old one is closing; the replacement's late copies still matched

    def __str__(self) -> str:
        return self.value


TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "begin", "source": RotationState.STEADY, "dest": RotationState.OPENING},
    {"trigger": "joined", "source": RotationState.OPENING, "dest": RotationState.OVERLAPPING},
    {"trigger": "abort", "source": [RotationState.OPENING, RotationState.OVERLAPPING], "dest": RotationState.STEADY},
    {"trigger": "cut", "source": RotationState.OVERLAPPING, "dest": RotationState.DRAINING},
    {"trigger": "settled", "source": RotationState.DRAINING, "dest": RotationState.STEADY},
)

ROTATION = Table("rotation", RotationState, TRANSITIONS, RotationState.STEADY, "machines/rotation.py")


class RotationModel(TableModel):
    """One slot's rotation state."""

    table = ROTATION
