"""The default dialer: real TCP/TLS sockets.

The one engine module that names a concrete transport; the rest of the engine
knows only the interface (:mod:`transports.base`) and the protocol module
(an import-linter contract in pyproject.toml says so).
"""

from __future__ import annotations

import ssl

from transports.base import Dialer
from transports.tcp import tcp_dialer

__all__ = ["default_dialer"]


def default_dialer(ssl_context: ssl.SSLContext | None = None) -> Dialer:
    """TCP for ``ws://``, TLS (verified by default) for ``wss://``."""
    return tcp_dialer(ssl_context)
