"""Microstructure features: hand-computed values, OFI branches, lookahead, per-symbol independence,
and bar aggregation boundaries."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quanto.data.schemas import SchemaError, depth_columns
from quanto.features.microstructure import aggregate_to_bars, imbalance_depths, microstructure_features

T0 = dt.datetime(2024, 1, 2, 15, 0, tzinfo=dt.UTC)
NAN = float("nan")


def _book(symbol: str, snaps: list[tuple[list, list, list, list]], t0=T0, step=dt.timedelta(seconds=1)):
    """Depth frame from (bid_px, bid_sz, ask_px, ask_sz) lists, one tuple per snapshot."""
    rows = []
    for k, (bp, bs, ap, asz) in enumerate(snaps):
        row = {"symbol": symbol, "ts": t0 + k * step}
        for i in range(len(bp)):
            b_px, b_sz, a_px, a_sz = depth_columns(i + 1)
            row |= {b_px: bp[i], b_sz: bs[i], a_px: ap[i], a_sz: asz[i]}
        rows.append(row)
    df = pl.DataFrame(rows)
    return df.with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")), pl.col(pl.Int64).cast(pl.Float64))


# A 3-snapshot, 3-level book with values exact in binary floating point.
HAND = [
    ([10.00, 9.75, 9.50], [4, 2, 2], [10.50, 10.75, 11.00], [2, 2, 4]),
    ([10.25, 10.00, 9.75], [1, 3, 2], [10.50, 10.75, 11.00], [5, 2, 4]),  # bid up, ask same
    ([10.00, 9.75, 9.50], [6, 1, 1], [10.25, 10.50, 10.75], [3, 5, 2]),  # bid down, ask down
]


def _ols(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def test_hand_computed_three_level_book():
    f = microstructure_features(_book("X", HAND), 3, window=2)
    assert f.columns == [
        "symbol",
        "ts",
        "mid",
        "spread",
        "rel_spread",
        "depth_imbalance_1",
        "depth_imbalance_3",
        "ofi",
        "depth_imbalance_1_mean_2",
        "depth_imbalance_3_mean_2",
        "book_slope_bid",
        "book_slope_ask",
        "book_slope",
    ]
    approx = lambda xs: pytest.approx(xs, nan_ok=True, rel=1e-12)  # noqa: E731
    assert f["mid"].to_list() == approx([10.25, 10.375, 10.125])
    assert f["spread"].to_list() == approx([0.5, 0.25, 0.25])
    assert f["rel_spread"].to_list() == approx([0.5 / 10.25, 0.25 / 10.375, 0.25 / 10.125])
    imb1 = [(4 - 2) / 6, (1 - 5) / 6, (6 - 3) / 9]
    imb3 = [(8 - 8) / 16, (6 - 11) / 17, (8 - 10) / 18]
    assert f["depth_imbalance_1"].to_list() == approx(imb1)
    assert f["depth_imbalance_3"].to_list() == approx(imb3)
    # snapshot 1: bid up (+qb_t = 1), ask same (-qa_t + qa_t-1 = -5 + 2); snapshot 2: bid down
    # (-qb_t-1 = -1), ask down (-qa_t = -3).
    assert f["ofi"].to_list() == approx([NAN, 1 - 5 + 2, -1 - 3])
    assert f["depth_imbalance_1_mean_2"].to_list() == approx(
        [NAN, (imb1[0] + imb1[1]) / 2, (imb1[1] + imb1[2]) / 2]
    )
    assert f["depth_imbalance_3_mean_2"].to_list() == approx(
        [NAN, (imb3[0] + imb3[1]) / 2, (imb3[1] + imb3[2]) / 2]
    )
    # Snapshot 0 by hand: bid x = cum size 4, 6, 8 against 10, 9.75, 9.5 → sxy = -1, sxx = 8.
    assert f["book_slope_bid"][0] == pytest.approx(-0.125)
    # ask x = 2, 4, 8 against 10.5, 10.75, 11 → sxy = 1.5, sxx = 168/9.
    assert f["book_slope_ask"][0] == pytest.approx(1.5 * 9 / 168)
    for k, (bp, bs, ap, asz) in enumerate(HAND):
        bid, ask = _ols(np.cumsum(bs), bp), _ols(np.cumsum(asz), ap)
        assert f["book_slope_bid"][k] == pytest.approx(bid)
        assert f["book_slope_ask"][k] == pytest.approx(ask)
        assert f["book_slope"][k] == pytest.approx((abs(bid) + abs(ask)) / 2)


@pytest.mark.parametrize(
    ("bid_t", "ask_t", "expected"),
    [
        # previous top: bid 10.00 x 3, ask 10.50 x 7. The other side repeats price and size → 0.
        ((10.25, 4.0), (10.50, 7.0), 4.0),  # bid up: +qb_t
        ((10.00, 4.0), (10.50, 7.0), 4.0 - 3.0),  # bid same: +qb_t - qb_t-1
        ((9.75, 4.0), (10.50, 7.0), -3.0),  # bid down: -qb_t-1
        ((10.00, 3.0), (10.25, 2.0), -2.0),  # ask down: -qa_t
        ((10.00, 3.0), (10.50, 2.0), -2.0 + 7.0),  # ask same: -qa_t + qa_t-1
        ((10.00, 3.0), (10.75, 2.0), 7.0),  # ask up: +qa_t-1
        ((10.25, 4.0), (10.75, 2.0), 4.0 + 7.0),  # both move away from each other
    ],
)
def test_ofi_indicator_branches(bid_t, ask_t, expected):
    quotes = pl.DataFrame(
        {
            "symbol": ["S", "S"],
            "ts": [T0, T0 + dt.timedelta(seconds=1)],
            "bid_px": [10.00, bid_t[0]],
            "bid_sz": [3.0, bid_t[1]],
            "ask_px": [10.50, ask_t[0]],
            "ask_sz": [7.0, ask_t[1]],
            "vendor": ["v", "v"],
        }
    )
    f = microstructure_features(quotes, 1, window=1)
    assert math.isnan(f["ofi"][0])  # no previous snapshot
    assert f["ofi"][1] == pytest.approx(expected)


def test_book_slope_on_linear_book():
    bid_sz, ask_sz = [10.0, 30.0, 20.0, 40.0], [5.0, 15.0, 25.0, 5.0]
    bid_px = [100.0 - 0.002 * c for c in np.cumsum(bid_sz)]
    ask_px = [100.1 + 0.003 * c for c in np.cumsum(ask_sz)]
    f = microstructure_features(_book("L", [(bid_px, bid_sz, ask_px, ask_sz)]), 4)
    assert f["book_slope_bid"][0] == pytest.approx(-0.002, rel=1e-9)
    assert f["book_slope_ask"][0] == pytest.approx(0.003, rel=1e-9)
    assert f["book_slope"][0] == pytest.approx(0.0025, rel=1e-9)
    assert f.columns[5:7] == ["depth_imbalance_1", "depth_imbalance_3"]
    assert "depth_imbalance_4" in f.columns


def test_undefined_values_are_nan_never_inf():
    snaps = [
        ([10.0, 9.0], [1.0, 1.0], [11.0, 12.0], [1.0, 1.0]),  # fine
        ([11.5, 9.0], [1.0, 1.0], [11.0, 12.0], [1.0, 1.0]),  # crossed: everything NaN
        ([None, None], [None, None], [None, None], [None, None]),  # empty book
        ([10.0, 9.0], [0.0, 0.0], [11.0, 12.0], [0.0, 0.0]),  # zero sizes: imbalance and slope NaN
        ([10.0, 9.0], [2.0, 1.0], [None, None], [None, None]),  # one-sided: no mid, imbalance +1
        ([0.0, 0.0], [2.0, 1.0], [0.0, 0.0], [1.0, 1.0]),  # zero prices: no mid, no rel_spread
    ]
    f = microstructure_features(_book("U", snaps), 2, window=2)
    values = f.drop("symbol", "ts")
    assert not any(np.isinf(values[c].to_numpy()).any() for c in values.columns)
    assert values.null_count().sum_horizontal().item() == 0  # NaN, not null
    crossed = values.row(1, named=True)
    # Every per-snapshot value is NaN; only the rolling mean still sees the window's defined rows.
    assert all(math.isnan(v) for k, v in crossed.items() if "_mean_" not in k)
    empty = values.row(2, named=True)
    assert math.isnan(empty["mid"]) and math.isnan(empty["depth_imbalance_1"])
    zero = values.row(3, named=True)
    assert zero["mid"] == 10.5 and math.isnan(zero["depth_imbalance_2"]) and math.isnan(zero["book_slope"])
    one_sided = values.row(4, named=True)
    assert math.isnan(one_sided["mid"]) and one_sided["depth_imbalance_1"] == 1.0
    assert math.isnan(one_sided["ofi"]) and math.isnan(one_sided["book_slope_ask"])
    assert math.isnan(values["rel_spread"][5])
    # ofi needs a valid top of book now and before: the snapshot after the crossed one has none.
    assert f["ofi"].is_nan().to_list() == [True] * 6
    # The rolling mean averages the defined imbalances in the window (row 1 is crossed).
    assert f["depth_imbalance_1_mean_2"][1] == pytest.approx(0.0)


def _random_book(symbol: str, n: int, levels: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    mid = 100 + np.cumsum(rng.choice([-0.01, 0.0, 0.01], n))
    snaps = []
    for k in range(n):
        half = 0.01 * rng.integers(1, 3)
        bp = [mid[k] - half - 0.01 * i for i in range(levels)]
        ap = [mid[k] + half + 0.01 * i for i in range(levels)]
        snaps.append(
            (bp, list(rng.integers(1, 500, levels) * 1.0), ap, list(rng.integers(1, 500, levels) * 1.0))
        )
    step = dt.timedelta(milliseconds=int(rng.integers(100, 5000)))
    return _book(symbol, snaps, step=step)


def test_no_lookahead_truncation_leaves_earlier_values_unchanged():
    depth = pl.concat([_random_book("A", 300, 5, 1), _random_book("B", 200, 5, 2)])
    full = microstructure_features(depth, 5, window=20)
    for cut in (T0 + dt.timedelta(seconds=30), T0 + dt.timedelta(seconds=200)):
        part = microstructure_features(depth.filter(pl.col("ts") <= cut), 5, window=20)
        assert part.height > 0
        assert_frame_equal(part, full.filter(pl.col("ts") <= cut))
        bars_full = aggregate_to_bars(full, "1min")
        bars_part = aggregate_to_bars(part, "1min")
        # Bars that closed before the cut are identical.
        closed = pl.col("ts") + pl.duration(minutes=1) <= cut
        assert_frame_equal(bars_part.filter(closed), bars_full.filter(closed))


def test_symbols_are_independent_and_input_order_does_not_matter():
    a, b = _random_book("A", 120, 3, 3), _random_book("B", 80, 3, 4)
    mixed = pl.concat([a, b]).sample(fraction=1.0, shuffle=True, seed=5)
    together = microstructure_features(mixed, 3, window=10)
    for sym, alone in (("A", a), ("B", b)):
        assert_frame_equal(
            together.filter(pl.col("symbol") == sym), microstructure_features(alone, 3, window=10)
        )
    # The first snapshot of B has no OFI even though A's rows precede it.
    assert math.isnan(together.filter(pl.col("symbol") == "B")["ofi"][0])


def test_rolling_mean_warm_up_and_window():
    f = microstructure_features(_random_book("W", 30, 3, 6), 3, window=5)
    mean = f["depth_imbalance_1_mean_5"].to_numpy()
    assert np.isnan(mean[:4]).all()
    imb = f["depth_imbalance_1"].to_numpy()
    expected = pd.Series(imb).rolling(5).mean().to_numpy()
    np.testing.assert_allclose(mean[4:], expected[4:], rtol=1e-12)


def test_pandas_and_quotes_inputs():
    quotes = pd.DataFrame(
        {
            "symbol": ["Q"] * 3,
            "ts": pd.date_range("2024-01-02 15:00", periods=3, freq="s", tz="America/New_York"),
            "bid_px": [10.0, np.nan, 10.0],
            "bid_sz": [3.0, np.nan, 1.0],
            "ask_px": [10.5, 10.5, 10.5],
            "ask_sz": [1.0, 2.0, 3.0],
            "vendor": ["v"] * 3,
        }
    )
    f = microstructure_features(quotes, levels=5)  # a quotes frame is level 1 whatever `levels` says
    assert f.columns == [
        "symbol",
        "ts",
        "mid",
        "spread",
        "rel_spread",
        "depth_imbalance_1",
        "ofi",
        "depth_imbalance_1_mean_50",
    ]
    assert f.schema["ts"] == pl.Datetime("ns", "UTC")
    assert f["ts"][0] == dt.datetime(2024, 1, 2, 20, 0, tzinfo=dt.UTC)
    assert f["depth_imbalance_1"].to_list() == pytest.approx([0.5, -1.0, -0.5])
    assert f["mid"][1] != f["mid"][1]  # NaN: no bid
    assert (
        imbalance_depths(1) == (1,) and imbalance_depths(2) == (1, 2) and imbalance_depths(10) == (1, 3, 10)
    )


def test_bad_input_is_refused():
    book = _book("X", HAND)
    with pytest.raises(SchemaError, match="bid_px_4"):
        microstructure_features(book, 4)
    with pytest.raises(SchemaError, match="ts"):
        microstructure_features(book.with_columns(pl.col("ts").dt.replace_time_zone(None)), 3)
    with pytest.raises(ValueError, match="window"):
        microstructure_features(book, 3, window=0)
    with pytest.raises(ValueError, match="levels"):
        microstructure_features(book, 0)
    with pytest.raises(ValueError, match="timeframe"):
        aggregate_to_bars(microstructure_features(book, 3), "1d")


def test_aggregation_bar_boundaries():
    at = lambda h, m, s, us=0: dt.datetime(2024, 1, 2, h, m, s, us, tzinfo=dt.UTC)  # noqa: E731
    times = [at(15, 0, 0), at(15, 0, 30), at(15, 0, 59, 999_999), at(15, 1, 0), at(15, 4, 59), at(15, 29, 59)]
    times += [at(15, 30, 0)]
    features = pl.DataFrame(
        {
            "symbol": ["A"] * len(times),
            "ts": times,
            "x": [1.0, 2.0, NAN, 4.0, 5.0, 6.0, 7.0],
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")))
    one = aggregate_to_bars(features, "1min")
    assert one["ts"].to_list() == [at(15, 0, 0), at(15, 1, 0), at(15, 4, 0), at(15, 29, 0), at(15, 30, 0)]
    assert one["snapshots"].to_list() == [3, 1, 1, 1, 1]
    # The 15:00 bar: last snapshot (15:00:59.999999) is undefined; the mean skips it.
    assert math.isnan(one["x_last"][0]) and one["x_mean"][0] == pytest.approx(1.5)
    assert one["x_last"][1] == 4.0  # 15:01:00 opens the next bar, not the end of the previous one
    five = aggregate_to_bars(features, "5min")
    assert five["ts"].to_list() == [at(15, 0, 0), at(15, 25, 0), at(15, 30, 0)]
    assert five["x_last"].to_list() == [5.0, 6.0, 7.0]
    assert five["x_mean"][0] == pytest.approx((1 + 2 + 4 + 5) / 4)
    hour = aggregate_to_bars(features, "1h")
    assert hour["ts"].to_list() == [at(15, 0, 0)] and hour["snapshots"][0] == len(times)
    # A 9:30 ET session grid: hourly bars open at :30, so 15:29:59 and 15:30:00 fall apart.
    half = aggregate_to_bars(features, "1h", offset=dt.timedelta(minutes=30))
    assert half["ts"].to_list() == [at(14, 30, 0), at(15, 30, 0)]
    assert half["snapshots"].to_list() == [6, 1]
    assert half.schema["ts"] == pl.Datetime("ns", "UTC")


def test_aggregated_features_join_onto_bars():
    depth = pl.concat([_random_book("A", 200, 3, 7), _random_book("B", 200, 3, 8)])
    per_bar = aggregate_to_bars(microstructure_features(depth, 3, window=10), "1min")
    bars = per_bar.select("symbol", "ts").with_columns(pl.lit(1.0).alias("close"))
    joined = bars.join(per_bar, on=["symbol", "ts"], how="left")
    assert joined.height == bars.height
    assert per_bar.select(pl.struct("symbol", "ts").is_unique().all()).item()
    # Every snapshot is counted in exactly one bar.
    assert per_bar["snapshots"].sum() == depth.height
