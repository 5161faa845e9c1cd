"""engine.books.sync: buffering, sequence rules, checksums and per-symbol resync.

A tiny simulated exchange (:class:`Exchange`) keeps the true book of each
symbol and produces numbered deltas, full snapshots and OKX checksums; the
tests drop, reorder or corrupt what it sends and check that the driver's
book equals the exchange's at full depth whenever it says it is synced.
Async tests run on every backend on virtual time (tests/conftest.py).
"""

from __future__ import annotations

import random
from decimal import Decimal

import anyio
import pytest
from msgspec.structs import replace
from transitions import MachineError

from engine.books import BookConfig, Books, BookState, UnknownBook
from engine.books.checksum import okx_checksum, okx_crc32
from engine.books.sequence import Binance, Linked, Strict
from engine.errors import ConfigError
from engine.events import BookResynced, BookSnapshot, BookUpdate, Error, ErrorKind, Gap
from machines.book import BookModel

Level = tuple[Decimal, Decimal, str, str]


class Exchange:
    """One symbol's true book on a simulated exchange: 0.5-tick prices around 100."""

    def __init__(self, symbol: str, seed: int, levels: int = 40) -> None:
        self.symbol = symbol
        self.rng = random.Random(seed)
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.seq = 1000
        for i in range(levels):
            self._set(True, f"{99.5 - i * 0.5:.1f}", f"{self.rng.randint(1, 900) / 100:.2f}")
            self._set(False, f"{100.5 + i * 0.5:.1f}", f"{self.rng.randint(1, 900) / 100:.2f}")

    def _set(self, is_bid: bool, price: str, size: str) -> None:
        side = self.bids if is_bid else self.asks
        if Decimal(size) == 0:
            side.pop(Decimal(price), None)
        else:
            side[Decimal(price)] = (price, size)

    def delta(self, now: float, updates: int = 2) -> BookUpdate:
        """The next message: ``updates`` level changes near the top, ~20 % deletes."""
        bids, asks = [], []
        for _ in range(self.rng.randint(1, 3)):
            is_bid = self.rng.random() < 0.5
            k = min(int(self.rng.expovariate(1 / 4)), 45)
            price = f"{99.5 - k * 0.5:.1f}" if is_bid else f"{100.5 + k * 0.5:.1f}"
            size = "0" if self.rng.random() < 0.2 else f"{self.rng.randint(1, 900) / 100:.2f}"
            (bids if is_bid else asks).append((price, size))
            self._set(is_bid, price, size)
        first, self.seq = self.seq + 1, self.seq + updates
        return BookUpdate(
            symbol=self.symbol, bids=tuple(bids), asks=tuple(asks), first_seq=first, seq=self.seq, prev_seq=first - 1,
            ts=now, received=now, checksum=okx_crc32(*self.levels(25)),
        )  # fmt: skip

    def snapshot(self, now: float) -> BookSnapshot:
        bids, asks = self.levels()
        return BookSnapshot(
            symbol=self.symbol, bids=tuple(lv[2:] for lv in bids), asks=tuple(lv[2:] for lv in asks), seq=self.seq,
            ts=now, received=now, checksum=okx_crc32(bids[:25], asks[:25]),
        )  # fmt: skip

    def levels(self, n: int | None = None) -> tuple[list[Level], list[Level]]:
        bids = [(p, Decimal(self.bids[p][1]), *self.bids[p]) for p in sorted(self.bids, reverse=True)]
        asks = [(p, Decimal(self.asks[p][1]), *self.asks[p]) for p in sorted(self.asks)]
        return bids[:n], asks[:n]  # type: ignore[return-value]


def _exact(books: Books, ex: Exchange) -> bool:
    view = books(ex.symbol)
    bids, asks = ex.levels()
    return view.synced and list(view.bids) == bids and list(view.asks) == asks and view.seq == ex.seq


# -- buffering before the snapshot ----------------------------------------------------------


def test_deltas_before_the_snapshot_are_applied_in_order_after_it() -> None:
    ex = Exchange("BTC", seed=1)
    books = Books(BookConfig(sequence=Binance()))
    first = books.apply(ex.delta(1.0))  # the first delta starts the book: buffering, snapshot wanted
    assert first.need_snapshot and books.state("BTC") is BookState.BUFFERING
    books.apply(ex.delta(1.1))
    snap = ex.snapshot(1.2)  # the REST snapshot already holds the two deltas above
    # two later deltas change the same price one after the other: order matters
    later = [
        BookUpdate(symbol="BTC", bids=(("99.5", "3.00"),), first_seq=ex.seq + 1, seq=ex.seq + 2, received=1.3),
        BookUpdate(symbol="BTC", bids=(("99.5", "4.25"),), first_seq=ex.seq + 3, seq=ex.seq + 3, received=1.4),
    ]
    for delta in later:
        ex._set(True, "99.5", delta.bids[0][1])
        ex.seq = delta.seq  # type: ignore[assignment]
        assert books.apply(delta).events == ()
    assert books("BTC").bids == () and books.stats("BTC").buffered == 4
    result = books.snapshot(snap)
    assert result.events == () and not result.need_snapshot
    assert _exact(books, ex)
    assert books("BTC").best_bid == (Decimal("99.5"), Decimal("4.25"), "99.5", "4.25")
    stats = books.stats("BTC")
    assert (stats.stale, stats.applied, stats.snapshots) == (2, 2, 1)


def test_binance_allows_an_overlap_only_for_the_first_delta_after_the_snapshot() -> None:
    books = Books(BookConfig(sequence=Binance()))
    books.snapshot(BookSnapshot(symbol="BTC", bids=(("99", "1"),), asks=(("101", "1"),), seq=10))
    bridging = BookUpdate(symbol="BTC", bids=(("99", "2"),), first_seq=9, seq=12)
    assert books.apply(bridging).events == ()  # U <= 11 <= u
    assert books("BTC").seq == 12
    result = books.apply(BookUpdate(symbol="BTC", bids=(("99", "3"),), first_seq=12, seq=14))  # overlap: not Binance's
    assert result.events == (Gap(symbol="BTC", expected=13, got=12),)


def test_a_buffer_that_does_not_reach_the_snapshot_is_a_gap() -> None:
    ex = Exchange("BTC", seed=2)
    books = Books(BookConfig(sequence=Binance()))
    snap = ex.snapshot(0.0)
    ex.delta(0.1)  # lost
    books.apply(ex.delta(0.2))
    result = books.snapshot(snap)
    (gap,) = result.events
    assert gap == Gap(symbol="BTC", expected=snap.seq + 1, got=snap.seq + 3, received=0.2)  # type: ignore[operator]
    assert result.need_snapshot and books.state("BTC") is BookState.RESYNCING
    healed = books.snapshot(ex.snapshot(0.3))
    assert [type(e) for e in healed.events] == [BookResynced] and _exact(books, ex)


def test_buffer_overflow_resyncs_and_counts_what_it_dropped() -> None:
    ex = Exchange("ETH", seed=3)
    books = Books(BookConfig(sequence=Strict(), buffer_limit=3))
    for i in range(3):
        assert books.apply(ex.delta(i)).events == ()
    before_last = ex.snapshot(3.0)  # what a snapshot would say before the 4th delta
    result = books.apply(ex.delta(3.5))
    (gap,) = result.events
    assert isinstance(gap, Error) and gap.kind is ErrorKind.RESYNC and gap.symbol == "ETH" and gap.received == 3.5
    assert "ETH: 3 buffered deltas dropped: more than buffer_limit=3 before a snapshot; resyncing" == gap.message
    assert result.need_snapshot and books.state("ETH") is BookState.RESYNCING
    stats = books.stats("ETH")
    assert (stats.overflows, stats.overflowed, stats.buffered) == (1, 3, 4)
    # the newest delta was kept: a snapshot just before it is bridged by it
    healed = books.snapshot(before_last)
    (event,) = healed.events
    assert event == BookResynced(symbol="ETH", reason="overflow", seq=ex.seq, received=3.0)
    assert _exact(books, ex)


# -- per-symbol resync ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_gap_on_btc_resyncs_btc_while_eth_keeps_applying_without_a_pause() -> None:
    exchanges = {s: Exchange(s, seed=i) for i, s in enumerate(["BTC", "ETH"])}
    fetched: list[tuple[str, float]] = []

    async def fetch(symbol: str) -> BookSnapshot:  # REST: the book as of the request, answered later
        snap = exchanges[symbol].snapshot(anyio.current_time())
        await anyio.sleep(0.35)
        fetched.append((symbol, anyio.current_time()))
        return snap

    books = Books(BookConfig(sequence=Binance(), fetch_snapshot=fetch))
    results: list[object] = []

    async def resync(symbol: str) -> None:
        results.append(await books.fetch(symbol))

    for symbol in exchanges:
        assert books.start(symbol).need_snapshot
        await books.fetch(symbol)
    eth_during_resync = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for step in range(20):
                await anyio.sleep(0.1)
                now = anyio.current_time()
                for symbol, ex in exchanges.items():
                    delta = ex.delta(now)
                    if symbol == "BTC" and step == 5:
                        continue  # lost on the wire: BTC's next delta is a gap
                    result = books.apply(delta)
                    if result.need_snapshot:
                        assert symbol == "BTC" and [type(e) for e in result.events] == [Gap]
                        tg.start_soon(resync, symbol)
                if books.state("BTC") is not BookState.SYNCED:
                    assert _exact(books, exchanges["ETH"])  # ETH is exact at every step meanwhile
                    eth_during_resync.append(books("ETH").seq)
    assert len(eth_during_resync) >= 3 and eth_during_resync == sorted(set(eth_during_resync))
    assert [s for s, _ in fetched] == ["BTC", "ETH", "BTC"]
    (healed,) = results[0].events  # type: ignore[attr-defined]
    assert isinstance(healed, BookResynced) and healed.symbol == "BTC" and healed.reason == "sequence"
    for ex in exchanges.values():
        assert _exact(books, ex)  # full depth, sizes and text
    assert (books.stats("BTC").gaps, books.stats("BTC").resyncs) == (1, 1)
    assert (books.stats("ETH").gaps, books.stats("ETH").applied) == (0, 20)


def test_a_wrong_checksum_resyncs_that_symbol_and_asks_for_a_resubscribe() -> None:
    exchanges = {s: Exchange(s, seed=10 + i) for i, s in enumerate(["BTC-USDT", "ETH-USDT"])}
    books = Books(BookConfig(sequence=Linked(), checksum=okx_checksum, resubscribe=True))
    for ex in exchanges.values():
        assert books.snapshot(ex.snapshot(0.0)).events == ()
    for t in range(5):
        for ex in exchanges.values():
            assert books.apply(ex.delta(t)) .events == ()
    btc = exchanges["BTC-USDT"]
    delta = btc.delta(5.0)
    wrong = replace(delta, bids=(*delta.bids, ("99.5", "123.45")))  # corrupted on the way
    result = books.apply(wrong)
    (gap,) = result.events
    assert isinstance(gap, Error) and gap.kind is ErrorKind.RESYNC and gap.symbol == "BTC-USDT"
    assert f"checksum mismatch at seq {delta.seq}: the exchange's {delta.checksum}, the book's " in gap.message
    assert result.resubscribe and result.need_snapshot
    assert books.state("BTC-USDT") is BookState.RESYNCING and books("BTC-USDT").bids == ()
    eth = exchanges["ETH-USDT"]
    assert books.apply(eth.delta(5.0)).events == () and _exact(books, eth)
    # the caller resubscribes; the exchange's first message is a new snapshot
    for t in (6.0, 6.1):
        assert books.apply(btc.delta(t)).events == ()  # buffered meanwhile (older than the snapshot: dropped)
    healed = books.snapshot(btc.snapshot(6.2))
    assert isinstance(healed.events[0], BookResynced) and healed.events[0].reason == "checksum"
    assert _exact(books, btc)
    assert books.apply(btc.delta(7.0)).events == () and _exact(books, btc)
    assert books.stats("BTC-USDT").checksum_failures == 1 and books.stats("ETH-USDT").checksum_failures == 0


def test_a_snapshot_with_a_wrong_checksum_is_not_trusted() -> None:
    ex = Exchange("BTC", seed=20)
    books = Books(BookConfig(checksum=okx_checksum))
    snap = ex.snapshot(0.0)
    result = books.snapshot(replace(snap, checksum=snap.checksum + 1))  # type: ignore[operator]
    assert [type(e) for e in result.events] == [Error]
    assert "checksum mismatch" in result.events[0].message  # type: ignore[union-attr]
    assert books.state("BTC") is BookState.RESYNCING
    assert books.snapshot(ex.snapshot(0.1)).events[0].reason == "checksum"  # type: ignore[union-attr]
    assert _exact(books, ex)


def test_bad_data_resyncs_only_that_symbol_and_never_raises() -> None:
    exchanges = {s: Exchange(s, seed=30 + i) for i, s in enumerate(["A", "B"])}
    books = Books(BookConfig(sequence=Strict()))
    for ex in exchanges.values():
        books.snapshot(ex.snapshot(0.0))
    bad = BookUpdate(symbol="A", bids=(("99.5", "1.0"), ("not a price", "1")), seq=exchanges["A"].seq + 1,
                     received=1.0)  # fmt: skip
    result = books.apply(bad)
    (gap,) = result.events
    assert isinstance(gap, Error) and gap.kind is ErrorKind.RESYNC and "bid price 'not a price'" in gap.message
    assert books.state("A") is BookState.RESYNCING and books.stats("A").bad_data == 1
    assert books.apply(exchanges["B"].delta(1.0)).events == () and _exact(books, exchanges["B"])


def test_a_checksum_hook_that_raises_resyncs_that_symbol() -> None:
    def broken(book: object) -> int:
        raise RuntimeError("boom")

    ex = Exchange("A", seed=40)
    books = Books(BookConfig(checksum=broken))
    books.snapshot(replace(ex.snapshot(0.0), checksum=None))
    result = books.apply(ex.delta(1.0))
    (error,) = result.events
    assert isinstance(error, Error) and "RuntimeError('boom')" in error.message


def test_random_losses_and_corruption_always_heal_to_the_exact_book() -> None:
    """Three symbols, 600 steps: deltas lost, corrupted, duplicated; snapshots arrive late.
    Whenever a symbol says it is synced, its book equals the exchange's at full depth."""
    rng = random.Random(7)
    exchanges = [Exchange(f"S{i}", seed=50 + i) for i in range(3)]
    books = Books(BookConfig(sequence=Strict(), checksum=okx_checksum, buffer_limit=4))
    snapshot_due: dict[str, int] = {}
    for ex in exchanges:
        books.start(ex.symbol)
        snapshot_due[ex.symbol] = 0
    synced_checks = 0
    for step in range(600):
        for ex in exchanges:
            if snapshot_due.get(ex.symbol) == step:
                del snapshot_due[ex.symbol]
                result = books.snapshot(ex.snapshot(step))
                if result.need_snapshot:
                    snapshot_due[ex.symbol] = step + rng.randint(1, 3)
            delta = ex.delta(step)
            roll = rng.random()
            if roll < 0.02:
                continue  # lost
            if roll < 0.04:
                delta = replace(delta, asks=(*delta.asks, ("100.5", "0.01")))  # corrupted
            result = books.apply(delta)
            if roll > 0.98:
                books.apply(delta)  # duplicated: stale, dropped
            if result.need_snapshot and ex.symbol not in snapshot_due:
                snapshot_due[ex.symbol] = step + rng.randint(1, 3)  # a resubscribe takes a while
            if books.state(ex.symbol) is BookState.SYNCED:
                assert _exact(books, ex)
                synced_checks += 1
    assert synced_checks > 1500
    totals = [books.stats(ex.symbol) for ex in exchanges]
    assert sum(s.resyncs for s in totals) >= 20
    assert all(s.gaps + s.checksum_failures + s.overflows >= s.resyncs for s in totals)


# -- the REST fetch ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fetch_failures_are_counted_and_returned_never_raised() -> None:
    calls = []

    async def fetch(symbol: str) -> BookSnapshot:
        calls.append(symbol)
        if len(calls) == 1:
            raise OSError("connection refused")
        await anyio.sleep(3600)  # never answers
        raise AssertionError("unreachable")

    books = Books(BookConfig(fetch_snapshot=fetch, fetch_timeout=2.0))
    books.start("BTC")
    first = await books.fetch("BTC")
    assert first.need_snapshot and "OSError('connection refused')" in first.error
    started = anyio.current_time()
    second = await books.fetch("BTC")
    assert second.error == "snapshot fetch for BTC timed out" and anyio.current_time() - started == pytest.approx(2.0)
    assert books.stats("BTC").fetch_failures == 2 and books.state("BTC") is BookState.BUFFERING


@pytest.mark.anyio
async def test_one_fetch_per_symbol_at_a_time_and_an_unneeded_snapshot_is_counted() -> None:
    ex = Exchange("BTC", seed=60)
    calls = []

    async def fetch(symbol: str) -> BookSnapshot:
        calls.append(symbol)
        await anyio.sleep(1.0)
        return ex.snapshot(anyio.current_time())

    books = Books(BookConfig(fetch_snapshot=fetch))
    books.start("BTC")
    results = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def one() -> None:
                results.append(await books.fetch("BTC"))

            tg.start_soon(one)
            tg.start_soon(one)
            await anyio.sleep(0.5)
            books.snapshot(ex.snapshot(anyio.current_time()))  # the stream was faster
    assert calls == ["BTC"] and books.stats("BTC").unused_snapshots == 1
    assert all(r.events == () and not r.error for r in results) and _exact(books, ex)


@pytest.mark.anyio
async def test_fetch_needs_a_fetcher() -> None:
    with pytest.raises(ConfigError, match="fetch_snapshot is not set"):
        await Books().fetch("BTC")


# -- the machine, reset, listener, config ------------------------------------------------------


def test_illegal_transitions_raise() -> None:
    model = BookModel()
    for trigger in ("gap", "checksum_failed", "overflow", "snapshot", "reset"):
        with pytest.raises(MachineError):
            model.fire(trigger)
    books = Books()
    books.start("BTC")
    with pytest.raises(MachineError):
        books.start("BTC")  # a caller bug, not a stream problem: it raises


def test_reset_drops_the_book_and_counts_the_buffer() -> None:
    ex = Exchange("BTC", seed=70)
    heard: list[tuple[str, str, str, str]] = []
    books = Books(BookConfig(), on_state=lambda s, a, b, t: heard.append((s, str(a), str(b), t)))
    books.snapshot(ex.snapshot(0.0))
    books.reset("BTC")
    assert books.state("BTC") is BookState.UNSYNCED and len(books.book("BTC")) == 0
    books.apply(ex.delta(1.0))
    books.apply(ex.delta(1.1))
    books.reset_all()
    assert books.stats("BTC").discarded == 2
    assert heard == [
        ("BTC", "unsynced", "buffering", "start"),
        ("BTC", "buffering", "synced", "snapshot"),
        ("BTC", "synced", "unsynced", "reset"),
        ("BTC", "unsynced", "buffering", "start"),
        ("BTC", "buffering", "unsynced", "reset"),
    ]
    books.remove("BTC")
    assert "BTC" not in books and books.symbols() == []
    with pytest.raises(UnknownBook, match="no book for 'BTC'"):
        books("BTC")


def test_depth_from_the_config_limits_every_book() -> None:
    ex = Exchange("BTC", seed=80)
    books = Books(BookConfig(depth=5))
    books.snapshot(ex.snapshot(0.0))
    bids, asks = ex.levels(5)
    assert list(books("BTC").bids) == bids and list(books("BTC").asks) == asks
    assert list(books("BTC", 2).asks) == asks[:2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"buffer_limit": 0}, "buffer_limit must be a positive integer"),
        ({"depth": -1}, "depth must be a positive integer"),
        ({"sequence": object()}, "sequence must be a sequence rule"),
        ({"checksum": 3}, "checksum must be callable"),
        ({"fetch_snapshot": lambda symbol: None}, "fetch_snapshot must be an async function"),
        ({"fetch_timeout": 0}, "fetch_timeout must be a positive number"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BookConfig(**kwargs)  # type: ignore[arg-type]


def test_the_book_as_an_engine_event_for_a_stream() -> None:
    ex = Exchange("BTC", seed=90)
    books = Books(BookConfig(), connection="spot#1")
    books.snapshot(ex.snapshot(4.0))
    event = books.event("BTC", 3)
    bids, asks = ex.levels(3)
    assert event.bids == tuple((lv[2], lv[3]) for lv in bids) and event.asks == tuple((lv[2], lv[3]) for lv in asks)
    assert (event.symbol, event.seq, event.ts, event.received, event.connection) == ("BTC", ex.seq, 4.0, 4.0, "spot#1")
    assert event.best_bid == (bids[0][2], bids[0][3])
