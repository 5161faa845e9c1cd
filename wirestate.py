"""wirestate: keeps real-time exchange WebSocket streams alive.

The one import a user needs; it re-exports the public API of the ``engine``,
``machines`` and ``transports`` packages (which stay importable on their own)::

    import wirestate
    setup = wirestate.ConnectionSetup(url="wss://...", handler=on_message)
    async with wirestate.Connection(setup) as conn: ...

Typed causes are in ``wirestate.causes``; the simulated exchange for your own
tests is ``wirestate.SimExchange``.
"""

from engine import *  # noqa: F403  (the public API, as listed in engine.__all__)
from engine import __all__ as _engine_all
from engine.sim import SimExchange

__all__ = [*_engine_all, "SimExchange"]
