"""``wirestate sim``: serve the simulated exchange on 127.0.0.1 until Ctrl-C.

Also home of :func:`run_interruptible`, the Ctrl-C handling that ``wirestate
demo`` and ``wirestate sim`` share: the same on asyncio and trio.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from engine.errors import ConnectionClosed
from engine.sim.dialect import CHANNELS
from engine.sim.exchange import SimExchange

__all__ = ["run_interruptible", "run_sim"]

#: Data messages per second per (channel, symbol) stream, unless ``--rate`` says otherwise.
_RATE = 4.0


def _only_interrupts(group: BaseExceptionGroup[BaseException]) -> bool:
    # On trio a Ctrl-C lands in whichever task runs: a connection's task may
    # take it, and the code waiting on that connection then sees it closed.
    # Such ConnectionClosed errors are the interrupt's echo, not failures.
    match, rest = group.split(KeyboardInterrupt)
    if match is None:
        return False
    if rest is None:
        return True
    _, other = rest.split(ConnectionClosed)
    return other is None


def run_interruptible(func: Callable[..., Awaitable[Any]], *args: Any, backend: str = "asyncio") -> Any:
    """``anyio.run(func, *args, backend=backend)``; raises KeyboardInterrupt alone on Ctrl-C.

    On trio a Ctrl-C surfaces from inside task groups, wrapped in a
    ``BaseExceptionGroup``; on asyncio it is a bare ``KeyboardInterrupt``. A
    group holding only KeyboardInterrupts becomes one bare KeyboardInterrupt,
    so callers catch one thing on both backends. A group with any other error
    in it propagates unchanged (an interrupt must not hide a real failure).
    """
    try:
        return anyio.run(_on_signal_cancel, func, args, backend=backend)
    except BaseExceptionGroup as group:
        if _only_interrupts(group):
            raise KeyboardInterrupt from None
        raise


async def _on_signal_cancel(func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> Any:
    """Run ``func``; a SIGINT cancels it (a clean shutdown), then raises KeyboardInterrupt.

    Without this, Python raises KeyboardInterrupt wherever the main thread
    happens to be: on trio that can be between entering a task group and the
    code that exits it, which corrupts trio's task tree. A signal receiver
    turns Ctrl-C into an ordinary cancellation instead.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGINT"):
        return await func(*args)  # (signal handlers only in the main thread)
    interrupted = False
    result: Any = None
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(watch)
            result = await func(*args)
            tg.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    return result


def _dialect_summary(sim: SimExchange, url: str, options: dict[str, Any]) -> str:
    symbols = ", ".join(sim.symbols)
    channels = "|".join(f'"{c}"' for c in CHANNELS)
    rate = options.get("rate", _RATE)
    credentials = options.get("credentials")
    login = (
        f"HMAC-SHA256 signed for {len(credentials)} key(s): signature = hex HMAC(secret, \"login\\n{{key}}\\n{{timestamp}}\\n{{nonce}}\")"
        if credentials
        else "any non-empty key"
    )
    extras = []
    if options.get("lifetime") is not None:
        extras.append(f"connections closed {options['lifetime']:g} s after opening")
    low, high = options.get("response_delay", (0.0, 0.0))
    if high > 0:
        extras.append(f"order answers delayed {low:g}-{high:g} s (out of order)")
    return "\n".join(
        [
            f"simulated exchange serving {url} (127.0.0.1 only; any path is accepted)",
            'dialect: one JSON object per text frame; "id" is echoed as sent',
            f'  {{"op":"subscribe","channel":{channels},"symbols":["{sim.symbols[0]}"],"id":1}}'
            ' -> {"event":"subscribed",...,"id":1}, then data',
            '  {"op":"unsubscribe",...}  {"op":"login","key":"...","timestamp":...,"nonce":"...","signature":"..."}'
            '  {"op":"ping","id":2}',
            f'  after login: channels "orders"|"fills" and {{"op":"place_order","symbol":...,"side":"buy","price":"1.00","size":"1"}};'
            f" login: {login}",
            f"  symbols: {symbols}; data: {rate:g} messages/s per (channel, symbol) stream, the same frames for every"
            ' subscriber, "seq" exchange-wide; books: snapshot then deltas (prev_seq/seq, CRC32 checksum);'
            f" REST snapshot: GET {url.replace('ws://', 'http://').removesuffix('/ws')}/book?symbol={sim.symbols[0]}",
            "  a bad request gets an error event (code 400/401/404)" + "".join(f"; {e}" for e in extras),
            "Ctrl-C stops it",
        ]
    )


async def _serve(port: int, duration: float | None, options: dict[str, Any]) -> int:
    async with SimExchange(**{"rate": _RATE, **options}) as sim:
        try:
            bound = await sim.listen_tcp(port)
        except OSError as exc:
            print(f"wirestate sim: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(_dialect_summary(sim, f"ws://127.0.0.1:{bound}/ws", options), flush=True)
        with anyio.move_on_after(math.inf if duration is None else duration):
            await anyio.sleep_forever()
    return 0


def run_sim(port: int, duration: float | None = None, backend: str = "asyncio", **options: Any) -> int:
    """Serve the simulated exchange on 127.0.0.1:``port`` (0: a free one) until Ctrl-C or ``duration``.

    ``options`` go to :class:`~engine.sim.exchange.SimExchange` (``rate``,
    ``seed``, ``symbols``, ``book_depth``, ``credentials``, ``lifetime``,
    ``response_delay``, ...). Prints the ``ws://`` URL and a summary of the
    dialect, then ``stopped`` at the end. Returns the exit code: 0, also on
    Ctrl-C; 1 when the port cannot be bound.
    """
    try:
        code = int(run_interruptible(_serve, port, duration, options, backend=backend))
    except KeyboardInterrupt:
        code = 0
    if code == 0:
        print("stopped", flush=True)
    return code
