"""Trades/ticks → bars: the batch function, the incremental aggregator, late data, cumulative volume."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from quanto.data.aggregate import DAY_NS, BarAggregator, timeframe_ns, trades_to_bars
from quanto.data.schemas import BAR_SCHEMA, TRADE_SCHEMA, check_columns, polars_schema

T0 = dt.datetime(2024, 3, 1, 14, 30, tzinfo=dt.UTC)
T0_NS = int(T0.timestamp()) * 1_000_000_000
S = 1_000_000_000
MIN = 60 * S


def trades(rows: list[tuple[str, int, float, float]]) -> pl.DataFrame:
    """TRADE_SCHEMA frame from (symbol, ns offset from T0, price, size)."""
    return pl.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "ts": [T0_NS + r[1] for r in rows],
            "price": [r[2] for r in rows],
            "size": [r[3] for r in rows],
            "trade_id": [None] * len(rows),
            "conditions": [None] * len(rows),
            "vendor": ["test"] * len(rows),
        },
        schema={**polars_schema(TRADE_SCHEMA), "ts": pl.Int64},
    ).with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")))


def test_trades_to_bars_ohlcv_vwap_count_and_schema():
    frame = trades(
        [
            ("AAPL", 10 * S, 100.0, 10),
            ("AAPL", 5 * S, 99.0, 30),  # earlier time, later row: it is the open
            ("AAPL", 50 * S, 102.0, 20),
            ("AAPL", 50 * S, 101.0, 40),  # same time as the 102 trade, later row: it is the close
            ("MSFT", 61 * S, 300.0, 1),
            ("AAPL", 65 * S, 98.0, 5),
        ]
    )
    bars = trades_to_bars(frame, "1min", "polygon")
    check_columns(bars, BAR_SCHEMA, "bars")
    assert bars.schema == polars_schema(BAR_SCHEMA)
    rows = bars.to_dicts()
    assert [(r["symbol"], r["ts"]) for r in rows] == [
        ("AAPL", T0),
        ("AAPL", T0 + dt.timedelta(minutes=1)),
        ("MSFT", T0 + dt.timedelta(minutes=1)),
    ]
    first = rows[0]
    assert (first["open"], first["high"], first["low"], first["close"]) == (99.0, 102.0, 99.0, 101.0)
    assert first["volume"] == 100.0
    assert first["vwap"] == pytest.approx((100 * 10 + 99 * 30 + 102 * 20 + 101 * 40) / 100)
    assert first["trades"] == 4
    assert (first["timeframe"], first["vendor"], first["imputed"]) == ("1min", "polygon", False)
    assert rows[1]["open"] == rows[1]["close"] == 98.0 and rows[1]["trades"] == 1


def test_zero_volume_bar_has_null_vwap_and_offset_grid():
    frame = trades([("X", 0, 10.0, 0.0), ("X", 61 * MIN, 11.0, 2.0)])
    bars = trades_to_bars(frame, "1h", "v", offset=dt.timedelta(minutes=30))
    # T0 is 14:30: with a 30-minute offset the hourly grid is 14:30, 15:30, ...
    assert bars["ts"].to_list() == [T0, T0 + dt.timedelta(hours=1)]
    assert bars["vwap"].to_list() == [None, 11.0]


@pytest.mark.parametrize("bad", ["1d", "0min", "5m", "", "h"])
def test_unknown_timeframes_are_refused(bad):
    with pytest.raises(ValueError, match="timeframe"):
        timeframe_ns(bad)


def test_timeframe_lengths():
    assert timeframe_ns("1min") == MIN
    assert timeframe_ns("5min") == 5 * MIN
    assert timeframe_ns("2h") == 120 * MIN


def test_aggregator_emits_closed_bars_at_the_watermark_with_grace():
    agg = BarAggregator("1min", "alpaca", grace_s=2)
    agg.add_trades(["A", "A"], [T0_NS + 1 * S, T0_NS + 59 * S], [10.0, 11.0], [1.0, 2.0])
    agg.add_trades(["A"], [T0_NS + MIN + S], [12.0], [1.0])
    assert agg.watermark_ns == T0_NS + MIN - S  # max seen - grace
    assert agg.close_until().height == 0  # the 14:30 bar ends at 14:31:00 > watermark
    agg.add_trades(["A"], np.array([T0_NS + MIN + 2 * S]).astype("datetime64[ns]"), [12.5], [1.0])
    out = agg.close_until()
    assert out["ts"].to_list() == [T0] and out["close"].to_list() == [11.0]
    assert agg.open_bars == 1
    rest = agg.flush()
    assert rest["ts"].to_list() == [T0 + dt.timedelta(minutes=1)] and rest["volume"].to_list() == [2.0]
    assert agg.close_until().height == 0 and agg.flush().height == 0


def test_explicit_watermark_and_late_trades_are_kept_not_merged():
    agg = BarAggregator("1min", "alpaca")
    agg.add_trades(["A", "B"], [T0_NS + S, T0_NS + 2 * S], [10.0, 20.0], [1.0, 1.0])
    first = agg.close_until(T0_NS + MIN)
    assert first["symbol"].to_list() == ["A", "B"]
    # A trade for the emitted 14:30 bar (and one for a 14:30 B bar, emitted too) arrive late.
    agg.add_trades(
        ["A", "B", "A"], [T0_NS + 30 * S, T0_NS + 40 * S, T0_NS + MIN + 1], [9.0, 21.0, 10.5], [5.0, 1.0, 1.0]
    )
    later = agg.flush()
    assert later["ts"].to_list() == [T0 + dt.timedelta(minutes=1)]  # no second, partial 14:30 bar
    assert agg.late == 2
    late = agg.late_trades
    assert late.columns == ["symbol", "ts", "price", "size"]
    assert sorted(late["price"].to_list()) == [9.0, 21.0]
    assert agg.take_late_trades().height == 2 and agg.late_trades.height == 0 and agg.late == 2


def test_trades_after_flush_for_flushed_bars_are_late():
    agg = BarAggregator("1min", "v")
    agg.add_trades(["A"], [T0_NS + S], [1.0], [1.0])
    assert agg.flush().height == 1
    agg.add_trades(["A"], [T0_NS + 2 * S], [2.0], [1.0])
    assert agg.flush().height == 0 and agg.late == 1


def test_add_trade_frame_matches_add_trades_and_polars_series_input():
    frame = trades([("A", S, 1.0, 1.0), ("A", 2 * S, 2.0, 3.0), ("B", MIN, 5.0, 1.0)])
    a, b = BarAggregator("1min", "v"), BarAggregator("1min", "v")
    a.add_trade_frame(frame)
    a.add_trade_frame(frame.clear())
    b.add_trades(frame["symbol"], frame["ts"].cast(pl.Datetime("us", "UTC")), frame["price"], frame["size"])
    got = a.flush()
    assert_frame_equal(got, b.flush())
    assert_frame_equal(got, trades_to_bars(frame, "1min", "v"))


# --- property: however the trades are split into micro-batches, the bars are the same ----------------

_trade = st.tuples(
    st.sampled_from(["A", "B", "C"]),
    st.integers(min_value=0, max_value=5 * MIN),
    st.integers(min_value=1, max_value=4000).map(lambda k: k / 4),  # dyadic prices: sums are exact
    st.integers(min_value=0, max_value=500).map(float),
)


def _split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({0, n, *[c % (n + 1) for c in cuts]})
    return list(zip(points[:-1], points[1:], strict=False))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_trade, min_size=1, max_size=60), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_batching_gives_the_batch_result(rows, cuts):
    frame = trades(rows)
    expected = trades_to_bars(frame, "1min", "v")
    agg = BarAggregator("1min", "v", compact_rows=7)  # fold often: exercises merging partials
    for lo, hi in _split(frame.height, cuts):
        agg.add_trade_frame(frame.slice(lo, hi - lo))
    assert_frame_equal(agg.flush(), expected)
    assert agg.late == 0


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_trade, min_size=1, max_size=60), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_time_ordered_stream_closing_after_each_batch_gives_the_batch_result(rows, cuts):
    frame = trades(rows).sort("ts", maintain_order=True)
    agg = BarAggregator("1min", "v")
    emitted = []
    for lo, hi in _split(frame.height, cuts):
        agg.add_trade_frame(frame.slice(lo, hi - lo))
        emitted.append(agg.close_until())
    emitted.append(agg.flush())
    got = pl.concat(emitted).sort("symbol", "ts")
    assert_frame_equal(got, trades_to_bars(frame, "1min", "v"))
    assert agg.late == 0


# --- cumulative-volume ticks (Kite) ----------------------------------------------------------------


def test_cumulative_volume_ticks_become_volume_deltas():
    agg = BarAggregator("1min", "kite")
    # First tick ever is the baseline (volume before we listened is unknown); a null adds nothing and
    # does not hide the running maximum; a lower cumulative figure adds nothing.
    agg.add_cumulative_volume_ticks(
        ["A", "A", "A", "A", "A", "B"],
        [T0_NS, T0_NS + S, T0_NS + MIN, T0_NS + MIN + S, T0_NS + MIN + 2 * S, T0_NS],
        [10.0, 11.0, 12.0, 9.0, 9.5, 50.0],
        [1000, 1020, None, 1050, 1040, 7],
    )
    agg.add_cumulative_volume_ticks(["A"], [T0_NS + MIN + 3 * S], [9.0], [1060])  # next batch: 1060 - 1050
    bars = agg.flush()
    a0, a1, b0 = bars.to_dicts()
    assert (a0["symbol"], a0["volume"], a0["vwap"], a0["trades"]) == ("A", 20.0, 11.0, None)
    assert (a0["open"], a0["close"]) == (10.0, 11.0)
    assert a1["volume"] == 40.0 and a1["vwap"] == pytest.approx((9.0 * 30 + 9.0 * 10) / 40)
    assert (a1["open"], a1["low"], a1["close"]) == (12.0, 9.0, 9.0)
    assert (b0["symbol"], b0["volume"], b0["vwap"]) == ("B", 0.0, None)


def test_cumulative_volume_resets_on_a_new_utc_day_and_on_request():
    agg = BarAggregator("1min", "kite")
    agg.add_cumulative_volume_ticks(["A", "A"], [T0_NS, T0_NS + S], [1.0, 1.0], [500, 600])
    next_day = T0_NS + DAY_NS
    agg.add_cumulative_volume_ticks(["A", "A"], [next_day, next_day + S], [2.0, 2.0], [30, 45])
    agg.reset_cumulative(["A"])  # e.g. after a reconnect: the next tick is a new baseline
    agg.add_cumulative_volume_ticks(["A", "A"], [next_day + MIN, next_day + MIN + S], [4.0, 4.0], [900, 901])
    # A day change inside one batch restarts the count from zero too.
    agg.add_cumulative_volume_ticks(
        ["C", "C", "C"], [T0_NS, next_day, next_day + S], [1.0, 2.0, 2.0], [100, 20, 25]
    )
    bars = agg.flush()
    assert bars.select("symbol", "volume").rows() == [
        ("A", 100.0),
        ("A", 45.0),
        ("A", 1.0),
        ("C", 0.0),
        ("C", 25.0),
    ]


def test_tick_frame_input():
    ticks = pl.DataFrame(
        {
            "symbol": ["NSE:INFY"] * 3,
            "ts": [T0, T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=2)],
            "price": [1500.0, 1501.0, 1499.5],
            "volume": [10_000.0, 10_050.0, 10_070.0],
        }
    )
    agg = BarAggregator("1min", "kite")
    agg.add_tick_frame(ticks)
    bar = agg.flush().row(0, named=True)
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]) == (
        1500.0,
        1501.0,
        1499.5,
        1499.5,
        70.0,
    )
