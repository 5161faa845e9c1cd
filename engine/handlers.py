"""Handing messages to the application's handler, in the shape it was declared.

``handler(conn, message)`` gets each message; ``batch_handler(conn,
messages)`` every message of one socket read as a list. Either may be plain
or ``async def``; the per-read function is built once for that shape, so the
hot path has no branches on it. A handler that raises is logged and counted
(``conn.handler_errors``) and the stream goes on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from engine.config import is_async

if TYPE_CHECKING:
    from engine.host import SessionHost

__all__ = ["Deliver", "Delivery"]

log = logging.getLogger("wirestate.connection")

Message = str | bytes
Deliver = Callable[[list[Message]], Awaitable[None]]


class Delivery:
    """The connection's per-read delivery function (:attr:`deliver`)."""

    __slots__ = ("conn", "deliver")

    def __init__(self, conn: SessionHost) -> None:
        self.conn = conn
        self.deliver: Deliver = self._build()

    def failed(self, count: int) -> None:
        # A handler bug must not kill the stream, and must not pass unnoticed.
        self.conn.handler_errors += 1
        log.exception("%s: handler raised (%d message(s) affected)", self.conn.id, count)

    def _build(self, awaited: bool | None = None) -> Deliver:
        conn = self.conn
        batch = conn.setup.batch_handler
        handler = conn.setup.handler
        failed = self.failed
        if awaited is None:
            awaited = is_async(batch if batch is not None else handler)
        if batch is not None:
            if awaited:

                async def deliver_batch_async(messages: list[Message]) -> None:
                    try:
                        await batch(conn, messages)  # type: ignore[misc]
                    except Exception:
                        failed(len(messages))

                return deliver_batch_async

            async def deliver_batch(messages: list[Message]) -> None:
                try:
                    batch(conn, messages)
                except Exception:
                    failed(len(messages))

            return self._probing(deliver_batch, lambda messages: batch(conn, messages), per_message=False)

        assert handler is not None
        if awaited:

            async def deliver_each_async(messages: list[Message]) -> None:
                for message in messages:
                    try:
                        await handler(conn, message)  # type: ignore[misc]
                    except Exception:
                        failed(1)

            return deliver_each_async

        async def deliver_each(messages: list[Message]) -> None:
            for message in messages:
                try:
                    handler(conn, message)
                except Exception:
                    failed(1)

        return self._probing(deliver_each, lambda messages: handler(conn, messages[0]), per_message=True)

    def _probing(self, fast: Deliver, first_call: Callable[[list[Message]], object], *, per_message: bool) -> Deliver:
        """Wrap a plain handler's delivery to look at its first return value.

        A plain function that returns an awaitable (a lambda around an async
        call) was meant to be awaited: its messages would otherwise be lost
        without a trace. Checked once, then the plain fast path runs.
        """

        async def first_delivery(messages: list[Message]) -> None:
            self.deliver = fast
            try:
                result = first_call(messages)
            except Exception:
                self.failed(1 if per_message else len(messages))
                result = None
            if inspect.isawaitable(result):
                log.warning(
                    "%s: the handler returned an awaitable, so it is awaited from now on: declare it async def",
                    self.conn.id,
                )
                self.deliver = self._build(awaited=True)
                try:
                    await result
                except Exception:
                    self.failed(1 if per_message else len(messages))
            if per_message and len(messages) > 1:
                await self.deliver(messages[1:])

        return first_delivery
