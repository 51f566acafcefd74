"""Kite binary ticker: our decoder against kiteconnect's own parser, bad packets, the protocol."""

from __future__ import annotations

import datetime as dt

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiteconnect.ticker import KiteTicker

from quanto.data.aggregate import BarAggregator
from quanto.data.kite_ticker import (
    KiteTickerProtocol,
    encode_frame,
    encode_full_packet,
    encode_index_packet,
    encode_ltp_packet,
    parse_frame,
    price_divisor,
)
from quanto.data.schemas import check_columns, depth_schema
from quanto.data.streams import TICK_SCHEMA
from quanto.errors import InputError

INFY = 408065  # NSE equity: segment 1, paise
USDINR = (1234 << 8) | 3  # CDS: segment 3
BCD = (77 << 8) | 6
NIFTY = 256265  # index: segment 9
TOKENS = {INFY: "NSE:INFY", USDINR: "CDS:USDINR24MARFUT", BCD: "BCD:EURINR", NIFTY: "NSE:NIFTY 50"}
RECEIVED = 1_709_283_600_000_000_000


def oracle(frame: bytes) -> list[dict]:
    """kiteconnect's decoder, called on an instance that never connected."""
    return KiteTicker._parse_binary(KiteTicker.__new__(KiteTicker), frame)


def epoch(value: dt.datetime | None) -> int | None:
    # kiteconnect returns naive local datetimes from epoch seconds; .timestamp() undoes it exactly.
    return None if value is None else int(value.timestamp())


def ns_to_epoch(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def full(token: int = INFY, **kw) -> bytes:
    fields = {
        "last_price": 1523.45,
        "last_traded_quantity": 12,
        "average_traded_price": 1519.8,
        "volume_traded": 2_345_678,
        "total_buy_quantity": 10_000,
        "total_sell_quantity": 12_000,
        "open": 1510.0,
        "high": 1530.5,
        "low": 1505.05,
        "close": 1508.0,
        "last_trade_time": 1_709_283_599,
        "oi": 0,
        "oi_day_high": 0,
        "oi_day_low": 0,
        "exchange_timestamp": 1_709_283_600,
        "bids": [(100, 1523.4, 3), (50, 1523.35, 1), (10, 1523.0, 1), (5, 1522.5, 2), (1, 1522.0, 1)],
        "asks": [(80, 1523.5, 2), (60, 1523.55, 4), (0, 0.0, 0), (0, 0.0, 0), (0, 0.0, 0)],
    }
    fields.update(kw)
    return encode_full_packet(token, **fields)


def assert_same_as_oracle(frame: bytes) -> None:
    want = oracle(frame)
    batch = parse_frame(frame, TOKENS, received_ns=RECEIVED)
    assert not batch.rejected
    ticks = batch.ticks.to_dicts()
    assert len(ticks) == len(want)
    depth_rows = iter(batch.depth.to_dicts())
    for got, ref in zip(ticks, want, strict=True):
        assert got["symbol"] == TOKENS[ref["instrument_token"]]
        assert got["price"] == ref["last_price"]
        assert got["mode"] == ref["mode"]
        if "ohlc" in ref:
            for k in ("open", "high", "low", "close"):
                assert got[k] == ref["ohlc"][k]
        if "volume_traded" in ref:
            assert got["volume"] == ref["volume_traded"]
            assert got["last_quantity"] == ref["last_traded_quantity"]
            assert got["average_price"] == ref["average_traded_price"]
            assert got["buy_quantity"] == ref["total_buy_quantity"]
            assert got["sell_quantity"] == ref["total_sell_quantity"]
        else:
            assert got["volume"] is None
        if "exchange_timestamp" in ref:
            assert ns_to_epoch(got["ts"]) == epoch(ref["exchange_timestamp"])
        else:
            assert got["ts"] == dt.datetime.fromtimestamp(RECEIVED / 1e9, dt.UTC)
        if "depth" in ref:
            assert got["oi"] == ref["oi"]
            assert ns_to_epoch(got["last_trade_time"]) == epoch(ref["last_trade_time"])
            book = next(depth_rows)
            assert book["symbol"] == got["symbol"] and book["ts"] == got["ts"]
            for side, ours in (("buy", "bid"), ("sell", "ask")):
                for i, level in enumerate(ref["depth"][side], 1):
                    if level["price"] == 0:  # an empty level is absent (null), not a zero price
                        assert book[f"{ours}_px_{i}"] is None and book[f"{ours}_sz_{i}"] is None
                    else:
                        assert book[f"{ours}_px_{i}"] == level["price"]
                        assert book[f"{ours}_sz_{i}"] == level["quantity"]


def test_every_packet_kind_decodes_like_kiteconnect():
    frame = encode_frame(
        [
            full(),
            full(
                USDINR,
                last_price=83.1234567,
                open=83.0,
                high=83.2,
                low=82.9,
                close=83.05,
                average_traded_price=83.1,
                bids=[(1, 83.12, 1)],
                asks=[(2, 83.13, 1)],
            ),  # fmt: skip
            full(BCD, last_price=90.1234, bids=[], asks=[]),
            full(quote_only=True),
            encode_ltp_packet(INFY, 1523.5),
            encode_index_packet(
                NIFTY, last_price=22_150.35, high=22_200.0, low=22_000.1, open=22_010.0, close=22_050.0
            ),
            encode_index_packet(
                NIFTY,
                last_price=22_150.35,
                high=22_200.0,
                low=22_000.1,
                open=22_010.0,
                close=22_050.0,
                exchange_timestamp=dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC),
            ),  # fmt: skip
        ]
    )
    assert_same_as_oracle(frame)
    batch = parse_frame(frame, TOKENS, received_ns=RECEIVED)
    check_columns(batch.ticks, TICK_SCHEMA, "ticks")
    check_columns(batch.depth, depth_schema(5), "depth")
    assert batch.depth.height == 3 and set(batch.depth["vendor"]) == {"kite"}
    assert price_divisor(USDINR) == 10_000_000 and price_divisor(BCD) == 10_000 and price_divisor(INFY) == 100


_price = st.integers(min_value=1, max_value=50_000_000).map(lambda p: p / 100)
_qty = st.integers(min_value=0, max_value=2**31)
_level = st.tuples(st.integers(1, 100_000), _price, st.integers(1, 60_000))


@settings(max_examples=40, deadline=None)
@given(
    ltp=_price,
    volume=_qty,
    qty=_qty,
    ts=st.integers(min_value=1_500_000_000, max_value=2_000_000_000),
    bids=st.lists(_level, max_size=5),
    asks=st.lists(_level, max_size=5),
)
def test_random_full_packets_match_kiteconnect(ltp, volume, qty, ts, bids, asks):
    packet = full(
        last_price=ltp,
        volume_traded=volume,
        last_traded_quantity=qty,
        exchange_timestamp=ts,
        last_trade_time=ts - 1,
        bids=bids,
        asks=asks,
    )
    assert_same_as_oracle(encode_frame([packet, encode_ltp_packet(INFY, ltp)]))


def test_heartbeat_text_and_bad_packets_are_counted_never_dropped():
    assert parse_frame(b"\x00", TOKENS).is_empty()
    status = parse_frame('{"type": "error", "data": "Invalid mode"}', TOKENS)
    assert status.status == [{"type": "error", "data": "Invalid mode"}]
    bad_text = parse_frame("{oops", TOKENS)
    assert bad_text.rejected[0].raw == "{oops" and "malformed JSON" in bad_text.rejected[0].reason

    good = full()
    unknown = encode_full_packet(999_999, last_price=1.0)
    frame = encode_frame([good, unknown, b"\x00" * 20, good])
    batch = parse_frame(frame, TOKENS, received_ns=RECEIVED)
    assert batch.ticks.height == 2 and batch.depth.height == 2
    reasons = [r.reason for r in batch.rejected]
    assert "unknown instrument token 999999" in reasons[0]
    assert "unknown packet length 20" in reasons[1]
    assert batch.rejected[0].raw == "hex:" + unknown.hex()

    cut = encode_frame([good, good])[:-50]
    batch = parse_frame(cut, TOKENS, received_ns=RECEIVED)
    assert batch.ticks.height == 1 and len(batch.rejected) == 1 and "cut short" in batch.rejected[0].reason


def test_ticks_feed_the_bar_aggregator():
    t0 = 1_709_283_600  # 09:00:00 UTC
    frames = [
        encode_frame([full(last_price=100.0, volume_traded=1000, exchange_timestamp=t0)]),
        encode_frame([full(last_price=101.0, volume_traded=1010, exchange_timestamp=t0 + 10)]),
        encode_frame([full(last_price=99.0, volume_traded=1040, exchange_timestamp=t0 + 61)]),
    ]
    agg = BarAggregator("1min", "kite")
    for f in frames:
        agg.add_tick_frame(parse_frame(f, TOKENS).ticks)
    bars = agg.flush()
    assert bars.select("symbol", "open", "close", "volume").rows() == [
        ("NSE:INFY", 100.0, 101.0, 10.0),
        ("NSE:INFY", 99.0, 99.0, 30.0),
    ]


def test_protocol_url_subscription_and_checks():
    protocol = KiteTickerProtocol(TOKENS, clock=lambda: RECEIVED)
    creds = {"api_key": "my key", "access_token": "tok/en"}
    assert protocol.url(creds) == "wss://ws.kite.trade?api_key=my%20key&access_token=tok%2Fen"
    assert protocol.display_url == "wss://ws.kite.trade"
    assert [orjson.loads(m) for m in protocol.subscribe_messages(["NSE:INFY", "NSE:NIFTY 50"], ["full"])] == [
        {"a": "subscribe", "v": [INFY, NIFTY]},
        {"a": "mode", "v": ["full", [INFY, NIFTY]]},
    ]
    with pytest.raises(InputError, match="no instrument token"):
        protocol.check(["NSE:NOPE"], ["full"])
    with pytest.raises(InputError, match="exactly one mode"):
        protocol.check(["NSE:INFY"], ["full", "ltp"])
    with pytest.raises(InputError, match="access_token"):
        protocol.url({"api_key": "k"})
    batch = protocol.parse(encode_frame([encode_ltp_packet(INFY, 1.5)]))
    assert batch.ticks["ts"].to_list() == [dt.datetime.fromtimestamp(RECEIVED / 1e9, dt.UTC)]
    assert isinstance(batch.ticks, pl.DataFrame)
