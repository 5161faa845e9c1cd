"""Every async test runs on asyncio (looptime), on asyncio with the eager task
factory (3.12+, looptime), and on trio (MockClock), all on virtual time."""

import asyncio
import sys

import looptime
import pytest
import trio.testing


#: Loop passes with nothing ready before looptime jumps the clock. Its default (42)
#: leaves threads and real sockets time to report; tests on virtual time use neither
#: (memory transport, in-process simulator), and one pass halves the long simulations.
_NOOP_CYCLES = 1


def _looptime_loop() -> asyncio.AbstractEventLoop:
    return looptime.new_event_loop(start=0, noop_cycles=_NOOP_CYCLES)


def _eager_looptime_loop() -> asyncio.AbstractEventLoop:
    """A looptime loop whose tasks start eagerly: ``create_task`` runs the new
    task's first step at once, in the caller's turn (3.12+)."""
    loop = looptime.new_event_loop(start=0, noop_cycles=_NOOP_CYCLES)
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]  # 3.12+
    return loop


_BACKENDS = [pytest.param(("asyncio", {"loop_factory": _looptime_loop}), id="asyncio")]
if sys.version_info >= (3, 12):
    _BACKENDS.append(pytest.param(("asyncio", {"loop_factory": _eager_looptime_loop}), id="asyncio-eager"))
_BACKENDS.append(pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio"))


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        type=float,
        default=0.0,
        metavar="HOURS",
        help="virtual hours per seed for the seeded simulations (tests/test_harness.py); default: the suite's short runs",
    )
