"""Message ids (engine/ids.py): the per-connection counter, UUIDv7, bespoke sources."""

from __future__ import annotations

import datetime
import threading
import uuid

import anyio
import pytest
from freezegun import freeze_time

from engine.errors import ConfigError
from engine.ids import Counter, Uuid7, message_id_source, uuid7, uuid7_str


class StepClock:
    """A wall clock in nanoseconds that the test moves."""

    def __init__(self, ns: int = 1_700_000_000_000 * 1_000_000) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def timestamp_ms(value: uuid.UUID) -> int:
    return value.int >> 80


# -- the counter -----------------------------------------------------------------------


def test_counter_starts_at_one_and_counts_up() -> None:
    counter = Counter()
    assert [counter(), counter(), next(counter)] == [1, 2, 3]
    assert "next=4" in repr(counter)
    assert Counter(100)() == 100
    with pytest.raises(ConfigError):
        Counter("1")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_100_000_ids_from_concurrent_tasks_are_unique() -> None:
    counter = Counter()
    ids: list[int] = []

    async def take(n: int) -> None:
        for i in range(n):
            ids.append(counter())
            if i % 10 == 0:
                await anyio.lowlevel.checkpoint()  # interleave the tasks

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(take, 1000)
    assert len(ids) == 100_000 and len(set(ids)) == 100_000
    assert set(ids) == set(range(1, 100_001))


def test_counter_ids_from_threads_are_unique() -> None:
    counter = Counter()
    results: list[list[int]] = [[] for _ in range(8)]

    def take(out: list[int]) -> None:
        for _ in range(12_500):
            out.append(counter())

    threads = [threading.Thread(target=take, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for out in results for i in out]
    assert len(ids) == 100_000 and set(ids) == set(range(1, 100_001))


# -- UUIDv7 ----------------------------------------------------------------------------


def test_uuid7_has_version_7_variant_rfc_and_the_timestamp() -> None:
    clock = StepClock()
    value = Uuid7(clock_ns=clock)()
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert timestamp_ms(value) == clock.ns // 1_000_000
    default = uuid7()
    assert default.version == 7 and default.variant == uuid.RFC_4122
    text = uuid7_str()
    assert len(text) == 36 and uuid.UUID(text).version == 7


def test_uuid7_sorts_by_creation_time_across_milliseconds() -> None:
    clock = StepClock()
    source = Uuid7(clock_ns=clock)
    made = []
    for _ in range(200):
        made.append(source())
        clock.ns += 250_000  # a quarter of a millisecond: several ids per millisecond
    assert made == sorted(made)
    assert [str(u) for u in made] == sorted(str(u) for u in made)
    assert [u.bytes for u in made] == sorted(u.bytes for u in made)
    assert timestamp_ms(made[-1]) - timestamp_ms(made[0]) == 49


def test_uuid7_many_within_one_millisecond_stay_in_order() -> None:
    """10,000 ids in one frozen millisecond: the 12-bit counter runs out several times
    and the timestamp is carried forward; the order never breaks."""
    clock = StepClock()
    source = Uuid7(clock_ns=clock)
    made = [source() for _ in range(10_000)]
    assert made == sorted(made) and len(set(made)) == 10_000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)
    assert timestamp_ms(made[0]) == clock.ns // 1_000_000
    assert 0 < timestamp_ms(made[-1]) - timestamp_ms(made[0]) <= 10_000 // 2048 + 1
    # the clock catching up does not send ids backwards
    clock.ns += 1_000_000
    assert source() > made[-1]


def test_uuid7_stays_monotonic_when_the_wall_clock_steps_back() -> None:
    clock = StepClock()
    source = Uuid7(clock_ns=clock)
    before = source()
    clock.ns -= 5_000_000_000  # NTP stepped the clock back 5 s
    after = source()
    assert after > before and timestamp_ms(after) == timestamp_ms(before)


def test_uuid7_within_a_millisecond_does_not_depend_on_the_random_tail() -> None:
    """Increasing the counter orders ids even when the random bits go down."""
    # the top 11 of 80 random bits start the counter (0 here); the low 62 are the tail:
    # all ones for the first id, all zeros for the second
    tails = iter([b"\x00\x1f" + b"\xff" * 8, b"\x00" * 10])
    source = Uuid7(clock_ns=StepClock(), randbytes=lambda n: next(tails))
    first, second = source(), source()
    assert first.int & (1 << 62) - 1 == (1 << 62) - 1 and second.int & (1 << 62) - 1 == 0
    assert second > first and (first.int >> 64) & 0xFFF == 0 and (second.int >> 64) & 0xFFF == 1


def test_uuid7_ids_from_threads_are_unique_and_each_thread_sees_them_rising() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(out: list[uuid.UUID]) -> None:
        for _ in range(5_000):
            out.append(uuid7())

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({u for out in results for u in out}) == 20_000
    assert all(out == sorted(out) for out in results)


def test_uuid7_reads_the_wall_clock_that_freezegun_ticks() -> None:
    source = Uuid7()  # a fresh one: the shared source never goes below the ids it made
    with freeze_time("2024-05-01 12:00:00", tick=True):
        value = source()
    stamp = datetime.datetime.fromtimestamp(timestamp_ms(value) / 1000, tz=datetime.timezone.utc)
    assert abs(stamp - datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc)) < datetime.timedelta(seconds=5)


# -- the source a setup names ----------------------------------------------------------


def test_message_id_source_default_is_a_fresh_counter() -> None:
    first, second = message_id_source(None), message_id_source("counter")
    assert isinstance(first, Counter) and first is not second
    assert [first(), first(), second()] == [1, 2, 1]


def test_message_id_source_uuid7_gives_strings() -> None:
    source = message_id_source("uuid7")
    a, b = source(), source()
    assert isinstance(a, str) and isinstance(b, str) and uuid.UUID(a).version == 7 and b > a


def test_message_id_source_takes_a_bespoke_callable() -> None:
    ids = iter(["a1", "a2"])

    def bespoke() -> str:
        return next(ids)

    assert message_id_source(bespoke) is bespoke
    counter = Counter(10)
    assert message_id_source(counter) is counter


@pytest.mark.parametrize("value", ["uuid4", "", 5, object()])
def test_message_id_source_refuses_unknown_values(value: object) -> None:
    with pytest.raises(ConfigError, match="message_id"):
        message_id_source(value)  # type: ignore[arg-type]


def test_message_id_source_refuses_async_and_argument_taking_callables() -> None:
    async def async_id() -> int:
        return 1

    def needs_arg(conn: object) -> int:
        return 1

    with pytest.raises(ConfigError, match="async"):
        message_id_source(async_id)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no arguments"):
        message_id_source(needs_arg)  # type: ignore[arg-type]
