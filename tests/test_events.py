"""Typed events (engine.events) and the simulator dialect's decoder (engine.adapters.sim)."""

from __future__ import annotations

import gc
from decimal import Decimal

import msgspec
import pytest

from engine.adapters import sim as sim_adapter
from engine.events import (
    Book,
    BookSnapshot,
    Error,
    ErrorKind,
    Fill,
    Kline,
    OrderUpdate,
    SubscriptionChanged,
    Ticker,
    Trade,
)
from engine.sim import dialect
from engine.sim.market import Quote
from engine.sim.market import Trade as SimTrade


def test_money_stays_the_exchanges_strings_with_exact_decimal_views() -> None:
    trade = Trade(symbol="BTC-USD", price="0.1", size="0.2000", side="buy", ts=1.5, received=2.0, connection="c#1")
    assert trade.price == "0.1" and trade.size == "0.2000"  # what checksums are computed over
    assert trade.price_decimal + trade.size_decimal == Decimal("0.3000")  # (0.1 + 0.2 != 0.3 in floats)
    ticker = Ticker(symbol="ETH-USD", bid="3000.10", ask="3000.20")
    assert ticker.ask_decimal - ticker.bid_decimal == Decimal("0.10")
    assert ticker.last_decimal is None
    fill = Fill(symbol="BTC-USD", order_id="42", price="1.5", size="2", side="sell", fee="0.001")
    assert fill.fee_decimal == Decimal("0.001")
    assert OrderUpdate(symbol="X", order_id="1", status="new", filled="0.5").filled_decimal == Decimal("0.5")
    kline = Kline(symbol="X", interval="1m", start=60.0, open="1", high="2", low="0.5", close="1.25", volume="10")
    assert kline.close_decimal == Decimal("1.25")


def test_every_event_says_where_and_when() -> None:
    trade = Trade(symbol="BTC-USD", price="1", size="1", ts=1.5, seq=7, received=2.0, connection="spot#1")
    assert (trade.connection, trade.symbol, trade.ts, trade.received, trade.seq) == ("spot#1", "BTC-USD", 1.5, 2.0, 7)


def test_events_are_frozen_hashable_values_untracked_by_the_gc() -> None:
    a = Trade(symbol="BTC-USD", price="1", size="1")
    b = Trade(symbol="BTC-USD", price="1", size="1")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.price = "2"  # type: ignore[misc]
    snapshot = BookSnapshot(symbol="BTC-USD", bids=(("1.0", "2"),), asks=(("1.1", "3"),), seq=5)
    for event in (a, snapshot, Error(kind=ErrorKind.DECODE, message="x", raw=b"\x00")):
        assert not gc.is_tracked(event)
    book = Book(symbol="BTC-USD", bids=(("1.0", "2"), ("0.9", "1")), asks=())
    assert book.best_bid == ("1.0", "2") and book.best_ask is None


def test_fields_are_keyword_only_and_required_ones_are_required() -> None:
    with pytest.raises(TypeError):
        Trade("BTC-USD", "1", "1")  # type: ignore[misc, call-arg, arg-type]
    with pytest.raises(TypeError):
        Trade(symbol="BTC-USD", price="1")  # type: ignore[call-arg]


def test_events_encode_and_decode_as_json() -> None:
    trade = Trade(symbol="BTC-USD", price="1.50", size="2", side="buy", ts=1.0, seq=3, received=4.0, connection="c")
    assert msgspec.json.decode(msgspec.json.encode(trade), type=Trade) == trade
    change = SubscriptionChanged(subscription=["trades", "BTC-USD"], source="subscribing", dest="subscribed", trigger="acked")
    assert msgspec.json.decode(msgspec.json.encode(change))["dest"] == "subscribed"


# -- the simulator's dialect ---------------------------------------------------------------------


def test_sim_data_messages_decode_into_typed_events() -> None:
    text = dialect.encode(dialect.ticker_message("BTC-USD", Quote("49990.12", "49995.12"), 4, 12.5))
    ticker = sim_adapter.decode(text, "sim#1", 13.0)
    assert ticker == Ticker(
        symbol="BTC-USD", bid="49990.12", ask="49995.12", seq=4, ts=12.5, received=13.0, connection="sim#1"
    )
    text = dialect.encode(dialect.trade_message("ETH-USD", SimTrade("3001.50", "0.1250", "sell"), 9, 1.0))
    trade = sim_adapter.decode(text.encode(), "sim#1", 2.0)  # binary frames decode the same
    assert trade == Trade(
        symbol="ETH-USD", price="3001.50", size="0.1250", side="sell", seq=9, ts=1.0, received=2.0, connection="sim#1"
    )


def test_replies_are_not_events_and_exchange_errors_are() -> None:
    ack = dialect.encode({"event": "subscribed", "channel": "trades", "symbols": ["BTC-USD"], "id": 1})
    assert sim_adapter.decode(ack) is None
    assert sim_adapter.decode('{"event":"pong","id":3}') is None
    refused = '{"event":"error","id":2,"code":404,"message":"unknown symbol(s): XRP-USD"}'
    error = sim_adapter.decode(refused, "sim#1", 5.0)
    assert isinstance(error, Error)
    assert (error.kind, error.code, error.raw, error.message) == (
        ErrorKind.EXCHANGE, 404, refused, "unknown symbol(s): XRP-USD",
    )  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    [
        '{"channel":"trades","symbol":"BTC-USD","price":',  # cut short
        '{"channel":"trades","symbol":"BTC-USD","price":3001.5,"size":"1","side":"buy","seq":1,"ts":1}',  # a float price
        '{"channel":"candles","symbol":"BTC-USD"}',  # unknown channel
        "[1, 2, 3]",
        b"\xff\xfe",
    ],
)
def test_anything_else_is_a_decode_error_keeping_the_raw_message(raw: str | bytes) -> None:
    error = sim_adapter.decode(raw, "sim#1", 7.0)
    assert isinstance(error, Error)
    assert error.kind is ErrorKind.DECODE and error.raw == raw
    assert (error.connection, error.received) == ("sim#1", 7.0)
    assert error.message
