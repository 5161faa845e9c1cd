"""Cheap task identity (public APIs only).

The connection asks "am I running in the reader task?" (``close()`` from
inside a handler must not wait for itself). anyio's ``get_current_task()``
builds a TaskInfo on every call; on asyncio ``asyncio.current_task()`` is the
same answer for less.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from transports.base import running_asyncio_loop

__all__ = ["task_identity"]


def task_identity() -> Callable[[], int]:
    """A function returning an id of the current task (bind it inside the event loop)."""
    if running_asyncio_loop() is not None:
        current = asyncio.current_task
        return lambda: id(current())
    return lambda: anyio.get_current_task().id
