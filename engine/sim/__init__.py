"""In-process simulated exchange: a WebSocket server for tests and ``wirestate demo``.

See :mod:`engine.sim.exchange` for the API and the wire dialect.
"""

from engine.sim.exchange import SimExchange, SimStats

__all__ = ["SimExchange", "SimStats"]
