"""In-process simulated exchange: a WebSocket server for tests, ``wirestate demo`` and ``wirestate sim``.

See :mod:`engine.sim.exchange` for the API and :mod:`engine.sim.dialect` for the wire format.
"""

from engine.sim.auth import login_payload, sign_login
from engine.sim.exchange import SimExchange, SimStats
from engine.sim.wirelog import Entry, Transcript

__all__ = ["Entry", "SimExchange", "SimStats", "Transcript", "login_payload", "sign_login"]
