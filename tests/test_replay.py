"""Replay (transports/replay.py): a recorded session played to a fresh Connection gives the same output, byte for byte.

The session (tests/recordings.py): login, two subscriptions, data, a reset by
the sim, reconnect, login and subscriptions again, data, close. Its output is
every StateChanged and every delivered message, serialized one per line.
"""

from __future__ import annotations

import io
import sys

import anyio
import looptime
import pytest
import trio.testing

from engine import Backoff, Connection, ConnectionSetup, State
from engine.sim import SimExchange
from recordings import run_session, serialize_change, sim, subscribe
from transports.base import URL, ByteStream, Dialer
from transports.faults import At, HalfOpen, Reset, Scripted, SlowReader, Split, Stall, Step, wrap
from transports.record import Recorder
from transports.replay import Recording, RecordingError, Replayer

BOUND = 120.0


async def record() -> tuple[list[str], str]:
    """Run the session against the sim through a recorder: (output, recording text)."""
    buffer = io.StringIO()
    async with sim() as exchange:
        recorder = Recorder(buffer, connection="private")
        output = await run_session(recorder.wrap(exchange.dialer()), exchange.drop)
    return output, buffer.getvalue()


async def replay(text: str, *, strict: bool = False) -> tuple[list[str], Replayer]:
    replayer = Replayer(Recording.parse(text.splitlines(), source="test"), strict=strict)
    output = await run_session(replayer.dialer("private"), lambda: None)
    return output, replayer


@pytest.mark.anyio
async def test_a_replay_gives_the_recorded_run_byte_for_byte() -> None:
    with anyio.fail_after(BOUND):
        recorded, text = await record()
        # (not strict: the login's timestamp is the clock's, later in this second run)
        replayed, replayer = await replay(text)
    assert any(" state private live->reconnecting lost" in line for line in recorded)
    assert sum(" text " in line for line in recorded) >= 40
    assert "\n".join(replayed) == "\n".join(recorded)
    assert replayer.mismatches == []
    assert replayer.dialed == 2


def run_on(backend: str, fn: object, *args: object) -> object:
    if backend == "trio":
        options: dict[str, object] = {"clock": trio.testing.MockClock(autojump_threshold=0)}
    else:
        options = {"loop_factory": lambda: looptime.new_event_loop(start=0)}
    return anyio.run(fn, *args, backend=backend, backend_options=options)  # type: ignore[arg-type]


def test_replays_agree_across_backends_and_with_the_recording() -> None:
    """A recording replayed on asyncio and on trio (fresh loops, clocks from 0) prints the recorded run exactly.

    Recorded on either backend: the two recordings differ in the last digits of
    times (looptime rounds up to whole microseconds, trio's MockClock does not:
    the sim's 3 x 0.2 s is 0.600001 on one and 0.6000000000000001 on the other),
    so each is replayed on the other backend too.
    """
    for recorder_backend in ("asyncio", "trio"):
        recorded, text = run_on(recorder_backend, record)  # type: ignore[misc]
        assert sum(line.startswith("0.") and " state " in line for line in recorded) >= 4
        for backend in ("asyncio", "trio"):
            replayed, replayer = run_on(backend, strict_replay, text)  # type: ignore[misc]
            assert "\n".join(replayed) == "\n".join(recorded), (recorder_backend, backend)
            assert replayer.mismatches == [], backend  # the client sent exactly what it sent when recorded


async def strict_replay(text: str) -> tuple[list[str], Replayer]:
    return await replay(text, strict=True)


def test_strict_mode_names_what_the_client_sent_differently() -> None:
    _, text = run_on("asyncio", record)  # type: ignore[misc]
    # the same recording, but there the client subscribed to another symbol the first time
    altered = text.replace('"symbols\\":[\\"ETH-USD\\"]', '"symbols\\":[\\"SOL-USD\\"]', 1)
    assert altered != text
    _, replayer = run_on("trio", strict_replay, altered)  # type: ignore[misc]
    assert len(replayer.mismatches) == 1
    assert "ETH-USD" in replayer.mismatches[0] and "SOL-USD" in replayer.mismatches[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty, not a wirestate recording"),
        ("hello\n", "test:1: not JSON"),
        ('{"kind":"dial"}\n', "test:1: not a wirestate recording"),
        ('{"kind":"recording","version":9}\n', "recording version 9"),
        ('{"kind":"recording","version":1}\n{"t":"x"}\n', "test:2: 't' must be a number"),
        (
            '{"kind":"recording","version":1}\n{"t":0,"conn":"a","session":1,"kind":"frame","dir":"in","op":"text","text":"x"}\n',
            "test:2: session 1 of 'a' has no dial line",
        ),
        (
            '{"kind":"recording","version":1}\n{"t":0,"conn":"a","session":1,"kind":"dial"}\n'
            '{"t":0,"conn":"a","session":1,"kind":"frame","dir":"in","op":"text","b64":"%%"}\n',
            "test:3: 'b64' is not base64",
        ),
    ],
)
def test_bad_recordings_name_file_line_and_problem(content: str, problem: str) -> None:
    with pytest.raises(RecordingError, match=problem.replace("(", r"\(")) as info:
        Recording.parse(content.splitlines(), source="test")
    assert "\n" not in str(info.value)


def test_missing_file_is_one_line(tmp_path: object) -> None:
    with pytest.raises(RecordingError, match="no such file"):
        Recording.load(f"{tmp_path}/nope.jsonl")


def test_unknown_connection_is_refused_clearly() -> None:
    text = '{"kind":"recording","version":1}\n{"t":0,"conn":"a","session":1,"kind":"dial"}\n'
    replayer = Replayer(Recording.parse(text.splitlines()))
    with pytest.raises(RecordingError, match="no connection 'b' \\(it has 'a'\\)"):
        replayer.dialer("b")


if sys.version_info >= (3, 12):

    def test_replay_on_eager_tasks_agrees() -> None:
        import asyncio

        recorded, text = run_on("asyncio", record)  # type: ignore[misc]

        def eager() -> asyncio.AbstractEventLoop:
            loop = looptime.new_event_loop(start=0)
            loop.set_task_factory(asyncio.eager_task_factory)
            return loop

        replayed = anyio.run(replay, text, backend="asyncio", backend_options={"loop_factory": eager})[0]
        assert replayed == recorded


async def refused_then_rejected(dialer: Dialer, exchange: SimExchange | None) -> list[str]:
    """A first dial refused, a second answered 429 with Retry-After, the third one goes live."""
    t0 = anyio.current_time()
    out: list[str] = []
    changes: list[str] = []  # (apart from the messages: see tests/recordings.py)
    if exchange is not None:
        exchange.reject_next(429, [("Retry-After", "2")], b"slow down")
    setup = ConnectionSetup(
        url="ws://sim.test/ws",
        handler=lambda conn, message: out.append(f"{anyio.current_time() - t0:.6f} {message!r}"),
        subscriber=subscribe,
        generate_subscriptions=lambda: [("ticker", ["BTC-USD"])],
        backoff=Backoff(initial=1.0, maximum=8.0, jitter=False),
        on_state_change=lambda event: changes.append(serialize_change(event, t0)),
    )
    async with Connection(setup, dialer=dialer, id="public") as conn:
        await conn.wait_for(State.LIVE)
        await anyio.sleep(1)
    return [*changes, "--", *out]


def refusing_once(dialer: Dialer) -> Dialer:
    calls = [0]

    async def dial(url: URL) -> ByteStream:
        calls[0] += 1
        if calls[0] == 1:
            raise ConnectionRefusedError("refused (test)")
        return await dialer(url)

    return dial


@pytest.mark.anyio
async def test_refused_dials_and_rejected_handshakes_replay_the_same() -> None:
    buffer = io.StringIO()
    with anyio.fail_after(BOUND):
        async with sim() as exchange:
            recorder = Recorder(buffer, connection="public")
            recorded = await refused_then_rejected(recorder.wrap(refusing_once(exchange.dialer())), exchange)
        replayer = Replayer(Recording.parse(buffer.getvalue().splitlines()), strict=True)
        replayed = await refused_then_rejected(replayer.dialer("public"), None)
    text = "\n".join(recorded)
    assert "dial failed: ConnectionRefusedError: refused (test)" in text
    assert "handshake rejected with HTTP 429, Retry-After 2 s" in text
    assert "\n".join(replayed) == text
    assert replayer.mismatches == [] and replayer.dialed == 3


async def faulty_session(dialer: Dialer) -> list[str]:
    t0 = anyio.current_time()
    out: list[str] = []
    changes: list[str] = []
    setup = ConnectionSetup(
        url="ws://sim.test/ws",
        handler=lambda conn, message: out.append(f"{anyio.current_time() - t0:.6f} {message!r}"),
        subscriber=subscribe,
        generate_subscriptions=lambda: [("ticker", ["BTC-USD"]), ("trades", ["ETH-USD"])],
        traffic_timeout=10.0,
        pong_timeout=3.0,
        backoff=Backoff(initial=1.0, maximum=8.0, jitter=False),
        on_state_change=lambda event: changes.append(serialize_change(event, t0)),
    )
    async with Connection(setup, dialer=dialer, id="faulty"):
        await anyio.sleep(25)
    return [*changes, "--", *out]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fault",
    [Reset(), HalfOpen(), Stall(11.0), Split(random=True), SlowReader(max_bytes=16, delay=0.002)],
    ids=lambda fault: type(fault).__name__,
)
async def test_a_session_recorded_through_a_fault_replays_without_it(fault: object) -> None:
    """The recorder sees what the client saw (the fault inside it); the replay alone gives the same run."""
    buffer = io.StringIO()
    schedule = Scripted([Step(At(2.0), fault)])  # type: ignore[arg-type]
    with anyio.fail_after(BOUND):
        async with sim() as exchange:
            recorder = Recorder(buffer, connection="faulty")
            recorded = await faulty_session(recorder.wrap(wrap(exchange.dialer(), schedule)))
        replayer = Replayer(Recording.parse(buffer.getvalue().splitlines()))
        replayed = await faulty_session(replayer.dialer())
    assert len(schedule.fired) == 1
    assert "\n".join(replayed) == "\n".join(recorded)
    assert replayer.mismatches == []
