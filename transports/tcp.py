"""TCP and TLS byte streams over anyio (real sockets)."""

from __future__ import annotations

import ssl

import anyio
from anyio.abc import ByteStream

from transports.base import URL, Dialer

__all__ = ["dial_tcp", "tcp_dialer"]


async def dial_tcp(url: URL, *, ssl_context: ssl.SSLContext | None = None) -> ByteStream:
    """Open a TCP connection to ``url``; TLS for ``wss://``.

    Certificates are verified by default (``ssl.create_default_context()``);
    pass your own context to pin a CA or (knowingly) relax checks.
    """
    if not url.secure:
        return await anyio.connect_tcp(url.host, url.port)
    context = ssl_context if ssl_context is not None else ssl.create_default_context()
    # WebSocket servers commonly drop TCP without TLS close_notify: don't treat that as an attack.
    return await anyio.connect_tcp(
        url.host,
        url.port,
        tls=True,
        ssl_context=context,
        tls_hostname=url.host,
        tls_standard_compatible=False,
    )


def tcp_dialer(ssl_context: ssl.SSLContext | None = None) -> Dialer:
    """A :data:`~transports.base.Dialer` for real sockets."""

    async def dial(url: URL) -> ByteStream:
        return await dial_tcp(url, ssl_context=ssl_context)

    return dial
