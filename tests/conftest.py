"""Every async test runs on asyncio (looptime) and trio (MockClock), both on virtual time."""

import looptime
import pytest
import trio.testing


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"loop_factory": lambda: looptime.new_event_loop(start=0)}), id="asyncio"),
        pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param
