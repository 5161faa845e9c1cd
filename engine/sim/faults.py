"""Exchange-wide fault counters of the simulated exchange: "the next N requests of a kind".

A :class:`Faults` is shared by every connection of one exchange: whichever
connection meets the next subscribe, login or request answer first consumes
the fault. Per-connection faults (stall, half-open, gaps, bad checksums, ping
storms) live on the session; the controls are methods of
:class:`~engine.sim.exchange.SimExchange`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Faults"]


@dataclass(slots=True)
class Faults:
    """Counts of pending one-shot faults, and how many each has fired."""

    reject_subscribes: int = 0  # the next N subscribe requests get an error
    reject_logins: int = 0  # the next N logins fail (even with a good signature)
    duplicate_responses: int = 0  # the next N request answers are sent twice
    fired: int = 0  # one-shot faults carried out so far

    def take(self, name: str) -> bool:
        """Consume one ``name`` fault if one is pending."""
        pending: int = getattr(self, name)
        if pending <= 0:
            return False
        setattr(self, name, pending - 1)
        self.fired += 1
        return True
