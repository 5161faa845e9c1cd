"""The subscription machine: one per subscription key in the manager's ledger.

``inactive`` (desired, not yet sent) → ``subscribing`` (sent, waiting for the
ack) → ``subscribed``; a reject or no answer → ``failed``; a drop of its
connection → ``resubscribing`` (desired again on the next session) →
``subscribed``; a subscription silent past its own ``stale_after`` →
``resubscribing`` too (sent again alone), as does one whose order book must
start over (``resync``); ``unsubscribing`` → ``unsubscribed``. Fired on ledger events,
never per message.
"""

from __future__ import annotations

import enum
from typing import Any

from machines.table import Table, TableModel

__all__ = ["SubState", "SUBSCRIPTION", "SubscriptionModel"]


class SubState(str, enum.Enum):
    """Where one subscription stands."""

    INACTIVE = "inactive"  # in the desired set, not sent yet (its connection not live)
    SUBSCRIBING = "subscribing"  # subscribe sent, waiting for the ack
    SUBSCRIBED = "subscribed"  # acked: data flows
    UNSUBSCRIBING = "unsubscribing"  # unsubscribe sent, waiting for the ack
    UNSUBSCRIBED = "unsubscribed"  # gone from the exchange and from the desired set
    FAILED = "failed"  # rejected or unanswered; kept with its error until retried or dropped
    RESUBSCRIBING = "resubscribing"  # its connection dropped: to be sent again on the next session

    def __str__(self) -> str:
        return self.value


_WANTED = [SubState.INACTIVE, SubState.FAILED, SubState.UNSUBSCRIBED, SubState.RESUBSCRIBING]

TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "send", "source": _WANTED, "dest": SubState.SUBSCRIBING},
    {"trigger": "acked", "source": SubState.SUBSCRIBING, "dest": SubState.SUBSCRIBED},
    {"trigger": "rejected", "source": SubState.SUBSCRIBING, "dest": SubState.FAILED},
    {"trigger": "connection_lost", "source": [SubState.SUBSCRIBING, SubState.SUBSCRIBED], "dest": SubState.RESUBSCRIBING},
    # silent past its own stale_after on a connection that is otherwise fine: sent again alone
    {"trigger": "stale", "source": SubState.SUBSCRIBED, "dest": SubState.RESUBSCRIBING},
    # its order book must start over from a snapshot the exchange sends only on subscribing
    {"trigger": "resync", "source": SubState.SUBSCRIBED, "dest": SubState.RESUBSCRIBING},
    {"trigger": "unsubscribe", "source": SubState.SUBSCRIBED, "dest": SubState.UNSUBSCRIBING},
    {"trigger": "unsubscribed", "source": SubState.UNSUBSCRIBING, "dest": SubState.UNSUBSCRIBED},
    {"trigger": "unsubscribe_failed", "source": SubState.UNSUBSCRIBING, "dest": SubState.SUBSCRIBED},
    # not on the exchange (never sent, failed, or its connection is gone): dropped without a message
    {"trigger": "drop", "source": [SubState.INACTIVE, SubState.FAILED, SubState.RESUBSCRIBING], "dest": SubState.UNSUBSCRIBED},
)

SUBSCRIPTION = Table("subscription", SubState, TRANSITIONS, SubState.INACTIVE, "machines/subscription.py")


class SubscriptionModel(TableModel):
    """One subscription's state; the ledger keeps one per key."""

    table = SUBSCRIPTION
