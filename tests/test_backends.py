"""The backends of tests/conftest.py: virtual time on each, eager tasks where asked."""

import asyncio
import sys
import time
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_an_hour_of_virtual_time_passes_at_once(anyio_backend: object) -> None:
    wall, start = time.monotonic(), anyio.current_time()
    await anyio.sleep(3600)
    assert anyio.current_time() - start == pytest.approx(3600)
    assert time.monotonic() - wall < 5


async def test_eager_backend_runs_a_new_task_at_once(anyio_backend: object, request: pytest.FixtureRequest) -> None:
    backend_id = request.node.callspec.id
    if not backend_id.startswith("asyncio"):
        pytest.skip("asyncio task factories only")
    eager = backend_id.startswith("asyncio-eager")
    loop = asyncio.get_running_loop()
    if eager:
        assert loop.get_task_factory() is asyncio.eager_task_factory  # type: ignore[attr-defined]
    else:
        assert loop.get_task_factory() is None
    steps: list[str] = []

    async def child() -> None:
        steps.append("child ran")

    task = loop.create_task(child())
    steps.append("creator went on")
    await task
    first = ["child ran", "creator went on"] if eager else ["creator went on", "child ran"]
    assert steps == first


def test_eager_backend_only_where_asyncio_has_it(request: pytest.FixtureRequest) -> None:
    conftest = Path(__file__).with_name("conftest.py")
    (module,) = [p for p in request.config.pluginmanager.get_plugins() if getattr(p, "__file__", None) == str(conftest)]
    ids = [param.id for param in module._BACKENDS]
    expected = ["asyncio", "asyncio-eager", "trio"] if sys.version_info >= (3, 12) else ["asyncio", "trio"]
    assert ids == expected
