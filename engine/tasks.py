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
    # (module functions, shared: a closure per connection would cost ~230 bytes each)
    return _asyncio_task_id if running_asyncio_loop() is not None else _anyio_task_id


def _asyncio_task_id() -> int:
    return id(asyncio.current_task())


def _anyio_task_id() -> int:
    return anyio.get_current_task().id
