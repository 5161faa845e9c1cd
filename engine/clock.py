"""The engine's clock: the running event loop's own time, read cheaply.

``anyio.current_time()`` looks the backend up on every call (~0.5 us); the
engine reads the clock on every transition and every socket read, so it binds
the backend's clock function once. It is the same clock anyio reads (and the
one virtual-time test loops drive), so deadlines and sleeps agree with it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio

from transports.base import running_asyncio_loop

__all__ = ["Clock", "loop_clock"]

#: seconds as a float, monotonic, in the event loop's time base
Clock = Callable[[], float]


def loop_clock() -> Clock:
    """The running backend's clock function (call from inside the event loop)."""
    loop = running_asyncio_loop()
    if loop is not None:
        return loop.time
    trio = sys.modules.get("trio")  # running under trio means it is imported
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return trio.current_time  # type: ignore[no-any-return]
    return anyio.current_time
