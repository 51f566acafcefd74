"""Microstructure and fundamental features on the bar timestamps (features/panel_sources.py), on small
hand-made frames; the microstructure and fundamental libraries are the oracles."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quanto.config.models import MICROSTRUCTURE_TIMEFRAMES, MicrostructureConfig, PipelineConfig
from quanto.data.schemas import depth_columns
from quanto.errors import InputError
from quanto.features.fundamental import FEATURES, fundamental_features
from quanto.features.microstructure import BAR_EVERY, aggregate_to_bars, microstructure_features
from quanto.features.panel_sources import (
    STATEMENT_FIELDS,
    bar_closes,
    fundamentals_by_bar,
    grid_offset,
    microstructure_by_bar,
    source_features,
)

TS = pl.Datetime("ns", "UTC")
T0 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)  # 09:30 New York
MIN = dt.timedelta(minutes=1)


def bars(symbols: list[str], opens: list[dt.datetime]) -> pl.DataFrame:
    rows = [(s, t, 100.0 + i) for s in symbols for i, t in enumerate(opens)]
    return pl.DataFrame(rows, schema={"symbol": pl.String, "ts": TS, "close": pl.Float64}, orient="row")


def quotes(rows: list[tuple[str, dt.datetime, float, float, float, float]]) -> pl.DataFrame:
    """Rows of (symbol, ts, bid_px, bid_sz, ask_px, ask_sz) in QUOTE_SCHEMA."""
    schema = {"symbol": pl.String, "ts": TS, "bid_px": pl.Float64, "bid_sz": pl.Float64,
              "ask_px": pl.Float64, "ask_sz": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(vendor=pl.lit("test"))


QUOTES = quotes(
    [
        ("A", T0 - dt.timedelta(seconds=1), 99.0, 100, 99.5, 100),  # before the first bar: history only
        ("A", T0 + dt.timedelta(seconds=10), 99.9, 300, 100.1, 100),
        ("A", T0 + dt.timedelta(seconds=50), 99.8, 200, 100.2, 200),
        ("A", T0 + MIN, 100.0, 100, 100.5, 400),  # exactly at the next bar's open: that bar's
        ("A", T0 + 3 * MIN + dt.timedelta(seconds=59), 101.0, 50, 101.2, 150),
        ("B", T0 + dt.timedelta(seconds=5), 50.0, 10, 50.1, 30),
        ("B", T0 + 2 * MIN, 50.2, 10, 50.1, 30),  # crossed: its values are NaN
    ]
)


def oracle(
    book: pl.DataFrame, keys: pl.DataFrame, levels: int, window: int, timeframe: str, offset=dt.timedelta(0)
):
    per_bar = aggregate_to_bars(
        microstructure_features(book, levels, window=window), timeframe, offset=offset
    )
    return keys.select("symbol", "ts").join(per_bar, on=["symbol", "ts"], how="left", maintain_order="left")


def test_microstructure_per_bar_equals_the_library_on_the_bar_grid():
    b = bars(["A", "B"], [T0 + k * MIN for k in range(4)])
    got = microstructure_by_bar(b, QUOTES.lazy(), MicrostructureConfig(window=2), "1min")
    want = oracle(QUOTES, b, 1, 2, "1min")
    assert got.select("symbol", "ts").equals(b.select("symbol", "ts"))  # one row per bar, in order
    assert got.columns == want.columns
    assert_frame_equal(got.drop("snapshots"), want.drop("snapshots").fill_null(float("nan")))
    per_symbol = {s: QUOTES.filter(pl.col("symbol") == s).lazy() for s in ("A", "B")}  # one scan each
    assert_frame_equal(microstructure_by_bar(b, per_symbol, MicrostructureConfig(window=2), "1min"), got)
    # A bar without snapshots has 0 of them (and NaN values); the boundary snapshot is the next bar's.
    assert got.filter(pl.col("symbol") == "A")["snapshots"].to_list() == [2, 1, 0, 1]
    first = got.row(0, named=True)
    assert first["spread_last"] == pytest.approx(100.2 - 99.8) and first["spread_mean"] == pytest.approx(0.3)
    assert first["depth_imbalance_1_last"] == 0.0  # 200 vs 200, the bar's last quote
    assert math.isnan(got.filter((pl.col("symbol") == "A") & (pl.col("snapshots") == 0))["spread_last"][0])
    # The rolling mean over 2 snapshots reaches back to the quote before the first bar.
    assert first["depth_imbalance_1_mean_2_mean"] == pytest.approx(((0 + 0.5) / 2 + (0.5 + 0) / 2) / 2)


def test_microstructure_uses_only_snapshots_up_to_the_bar_close():
    b = bars(["A"], [T0 + k * MIN for k in range(4)])
    spec = MicrostructureConfig(window=2)
    full = microstructure_by_bar(b, QUOTES, spec, "1min")
    for k in range(1, 4):
        close = T0 + k * MIN  # bar k-1 closes here: later quotes must not change it or the bars before
        early = microstructure_by_bar(b.head(k), QUOTES.filter(pl.col("ts") < close), spec, "1min")
        assert_frame_equal(early, full.head(k))


def test_hourly_bars_on_a_half_hour_grid_and_bars_off_any_grid():
    opens = [T0, T0 + 60 * MIN]  # 9:30 and 10:30 New York
    assert grid_offset(pl.Series([T0], dtype=TS), "1h") == dt.timedelta(minutes=30)
    book = quotes([("A", T0 + 29 * MIN, 10.0, 1, 10.1, 3), ("A", T0 + 59 * MIN, 10.0, 3, 10.1, 1),
                   ("A", T0 + 60 * MIN, 10.0, 2, 10.2, 2)])  # fmt: skip
    got = microstructure_by_bar(bars(["A"], opens), book, MicrostructureConfig(), "1h")
    assert got["snapshots"].to_list() == [2, 1]  # 10:00 New York falls inside the 9:30 bar
    want = oracle(book, bars(["A"], opens), 1, 50, "1h", offset=dt.timedelta(minutes=30))
    assert_frame_equal(got.drop("snapshots"), want.drop("snapshots").fill_null(float("nan")))
    with pytest.raises(
        InputError, match=r"features.microstructure: 1h bars open at offsets \['0:00:00', '0:30:00'\]"
    ):
        microstructure_by_bar(bars(["A"], [T0, T0 + 90 * MIN]), book, MicrostructureConfig(), "1h")


def depth_book(levels: int) -> pl.DataFrame:
    rows = []
    for k in range(6):
        row = {"symbol": "A", "ts": T0 + k * dt.timedelta(seconds=20), "vendor": "test"}
        for i in range(1, levels + 1):
            bid_px, bid_sz, ask_px, ask_sz = depth_columns(i)
            row |= {
                bid_px: 10.0 - 0.01 * i - 0.01 * k,
                bid_sz: 100.0 * i + k,
                ask_px: 10.0 + 0.01 * i,
                ask_sz: 80.0 * i,
            }
        rows.append(row)
    return pl.DataFrame(rows).with_columns(pl.col("ts").cast(TS))


def test_depth_levels_and_book_slope():
    book = depth_book(5)
    b = bars(["A"], [T0, T0 + MIN])
    got = microstructure_by_bar(
        b, book.lazy(), MicrostructureConfig(source="depth", levels=3, window=3), "1min"
    )
    want = oracle(book, b, 3, 3, "1min")
    assert {"book_slope_last", "depth_imbalance_3_mean", "depth_imbalance_3_mean_3_last"} <= set(got.columns)
    assert "depth_imbalance_5_last" not in got.columns  # levels 1..3 only
    assert_frame_equal(got.drop("snapshots"), want.drop("snapshots").fill_null(float("nan")))
    with pytest.raises(
        InputError, match="features.microstructure.levels is 5 but the ingested depth has 3 level"
    ):
        microstructure_by_bar(b, depth_book(3), MicrostructureConfig(source="depth", levels=5), "1min")
    every = microstructure_by_bar(b, book, MicrostructureConfig(source="depth", window=3), "1min")
    assert_frame_equal(
        every.drop("snapshots"), oracle(book, b, 5, 3, "1min").drop("snapshots").fill_null(float("nan"))
    )


QUARTER_ENDS = [dt.date(2023, 3, 31), dt.date(2023, 6, 30), dt.date(2023, 9, 30), dt.date(2023, 12, 31)]
QUARTERS = ["2023Q1", "2023Q2", "2023Q3", "2023Q4"]


def statements(filed: list[dt.datetime], keys: dict[str, str] | None = None) -> pl.DataFrame:
    """Four quarters of symbol A, quarter k filed at filed[k]; `keys` renames fields (vendor keys)."""
    keys = keys or {}
    values = {"revenue": 100.0, "net_income": 10.0, "operating_income": 20.0, "total_assets": 1000.0,
              "total_equity": 400.0, "current_assets": 500.0, "current_liabilities": 250.0}  # fmt: skip
    rows = [("A", end, when, q, keys.get(f, f), v * (1 + k / 10))
            for k, (end, when, q) in enumerate(zip(QUARTER_ENDS, filed, QUARTERS, strict=True))
            for f, v in values.items()]  # fmt: skip
    schema = {"symbol": pl.String, "period_end": pl.Date, "filed_at": TS, "fiscal_period": pl.String,
              "field": pl.String, "value": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(vendor=pl.lit("test"))


def test_fundamentals_are_visible_from_the_close_of_the_bar_they_are_filed_in():
    b = bars(["A"], [T0 + k * MIN for k in range(3)])
    early = [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 3
    filed = [*early, T0 + MIN + dt.timedelta(seconds=30)]  # the last quarter lands inside bar 1
    got = fundamentals_by_bar(b, statements(filed), "1min", "XNYS")
    want = fundamental_features(b.with_columns(pl.col("ts") + MIN), statements(filed)).with_columns(b["ts"])
    assert_frame_equal(got, want)
    # Bar 0 closes before the filing, bar 1 at its close sees it: its ROE counts four quarters.
    assert math.isnan(got["roe"][0]) and got["roe"][1] == pytest.approx((10 + 11 + 12 + 13) / (400 * 1.3))
    assert got["current_ratio"][1] == pytest.approx(2.0) and got["revenue_qoq"][1] == pytest.approx(
        13 / 12 - 1
    )


def test_vendor_statement_keys_become_the_library_fields():
    renamed = {
        v: k for k, v in STATEMENT_FIELDS.items()
    }  # revenue -> revenues, net_income -> net_income_loss
    filed = [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 4
    b = bars(["A"], [T0])
    got = fundamentals_by_bar(b, statements(filed, renamed), "1min", "XNYS")
    want = fundamentals_by_bar(b, statements(filed), "1min", "XNYS")
    assert_frame_equal(got, want)
    assert got["net_margin"][0] == pytest.approx(0.1) and got["roa"][0] == pytest.approx(46 / 1300)


def test_daily_bars_close_at_the_session_close():
    opens = pl.Series(
        [dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC), dt.datetime(2024, 7, 3, 13, 30, tzinfo=dt.UTC),
         dt.datetime(2024, 7, 4, 13, 30, tzinfo=dt.UTC)],  # a regular day, an early close, a holiday
        dtype=TS,
    )  # fmt: skip
    assert bar_closes(opens, "1d", "XNYS").to_list() == [
        dt.datetime(2024, 1, 2, 21, 0, tzinfo=dt.UTC),
        dt.datetime(2024, 7, 3, 17, 0, tzinfo=dt.UTC),  # 13:00 New York
        dt.datetime(2024, 7, 4, 13, 30, tzinfo=dt.UTC),  # no session: the open itself
    ]
    assert bar_closes(opens, "5min", "XNYS").to_list() == [t + 5 * MIN for t in opens.to_list()]
    b = bars(
        ["A"],
        [dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC), dt.datetime(2024, 1, 3, 14, 30, tzinfo=dt.UTC)],
    )
    filed = [dt.datetime(2023, 12, 1, tzinfo=dt.UTC)] * 3 + [dt.datetime(2024, 1, 2, 20, 59, tzinfo=dt.UTC)]
    assert not math.isnan(fundamentals_by_bar(b, statements(filed), "1d", "XNYS")["roe"][0])  # before 16:00
    filed[-1] = dt.datetime(2024, 1, 2, 21, 1, tzinfo=dt.UTC)  # after the close: the next session's
    assert fundamentals_by_bar(b, statements(filed), "1d", "XNYS")["roe"].is_nan().to_list() == [True, False]


def pipeline(**features) -> dict:
    universe = {"vendor": "lake", "source": "polygon", "symbols": ["A", "B"], "timeframe": "1min",
                "start": "2024-01-02", "end": "2024-01-03"}  # fmt: skip
    return {"name": "t", "universe": universe, "features": {"names": ["logret_1"], **features}}


def test_source_features_join_both_families_onto_every_bar():
    cfg = PipelineConfig.model_validate(pipeline(microstructure={"window": 2}, fundamentals=True))
    assert cfg.features.lake_datasets() == ("quotes", "fundamentals")
    b = bars(["A", "B"], [T0 + k * MIN for k in range(4)])
    filed = [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 4
    out = source_features(b.to_pandas(), cfg, snapshots=QUOTES, statements=statements(filed))
    assert isinstance(out, pd.DataFrame) and len(out) == b.height
    assert {"spread_last", "snapshots", *FEATURES} <= set(out.columns)
    assert out[["symbol", "ts"]].equals(b.select("symbol", "ts").to_pandas())
    assert out.loc[out["symbol"] == "B", "roe"].isna().all()  # B has no statements


def test_config_needs_the_lake_intraday_bars_and_depth_for_levels():
    assert set(MICROSTRUCTURE_TIMEFRAMES) == set(BAR_EVERY)
    bad = pipeline(fundamentals=True)
    bad["universe"] = {"vendor": "sample", "symbols": ["IBM"], "start": "2010-01-01", "end": "2011-01-01"}
    with pytest.raises(
        ValueError, match="features.fundamentals reads datasets .* needs universe.vendor lake"
    ):
        PipelineConfig.model_validate(bad)
    daily = pipeline(microstructure={})
    daily["universe"]["timeframe"] = "1d"
    with pytest.raises(ValueError, match="features.microstructure needs intraday bars"):
        PipelineConfig.model_validate(daily)
    with pytest.raises(ValueError, match="levels .3. applies to source: depth"):
        PipelineConfig.model_validate(pipeline(microstructure={"levels": 3}))
    cfg = PipelineConfig.model_validate(pipeline(microstructure={"source": "depth", "levels": 3}))
    assert PipelineConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # stages re-read the config
    quotes_cfg = PipelineConfig.model_validate(pipeline(microstructure={}, fundamentals=True))
    assert PipelineConfig.model_validate(quotes_cfg.model_dump(mode="json")) == quotes_cfg
