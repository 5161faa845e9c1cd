"""A managed connection's message gate: what its slot sees of each message before the handler.

Used only when a setup asks for it (``rotate_after``, ``stream_of``): the
handler is wrapped once, in the shape it was declared (per message or per
read, plain or ``async def``), so setups that need no gate pay nothing.
``admit(conn, message)`` returning False swallows the message (a duplicate
already delivered by the other connection of a rotation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from engine.config import ConnectionSetup, is_async

__all__ = ["Admit", "gated"]

Message = str | bytes
#: ``(connection, message) -> deliver it?``
Admit = Callable[[Any, Message], bool]


def gated(setup: ConnectionSetup, admit: Admit) -> ConnectionSetup:
    """``setup`` with its handler (or batch handler) behind ``admit``."""
    batch = setup.batch_handler
    if batch is not None:
        if is_async(batch):

            async def gated_batch_async(conn: Any, messages: list[Message]) -> None:
                kept = [m for m in messages if admit(conn, m)]
                if kept:
                    await batch(conn, kept)  # type: ignore[misc]

            return attrs.evolve(setup, batch_handler=gated_batch_async)

        def gated_batch(conn: Any, messages: list[Message]) -> Any:
            kept = [m for m in messages if admit(conn, m)]
            return batch(conn, kept) if kept else None

        return attrs.evolve(setup, batch_handler=gated_batch)

    handler = setup.handler
    assert handler is not None, "a managed connection always has a handler"
    if is_async(handler):

        async def gated_async(conn: Any, message: Message) -> None:
            if admit(conn, message):
                await handler(conn, message)  # type: ignore[misc]

        return attrs.evolve(setup, handler=gated_async)

    def gated_plain(conn: Any, message: Message) -> Any:
        # (returns what the handler returns: a plain function may still hand back an awaitable)
        return handler(conn, message) if admit(conn, message) else None

    return attrs.evolve(setup, handler=gated_plain)
