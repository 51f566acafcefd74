"""The offline `synthetic` vendor: seeded, realistic 1-minute bars with injected faults."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quanto.config.models import SyntheticSpec
from quanto.data.schemas import BAR_COLUMNS, conform_bars, empty_bars
from quanto.data.synthetic import FAULT_KINDS, generate_minute_bars, generate_minute_bars_with_faults

CLEAN = SyntheticSpec(seed=11, bad_tick_rate=0.0)
FAULTY = SyntheticSpec(seed=11, bad_tick_rate=0.01)


@pytest.fixture(scope="module")
def q3_bars() -> pd.DataFrame:
    """Two clean symbols over a quarter holding 2023-07-03 (half day) and 2023-07-04 (holiday)."""
    return generate_minute_bars(["AAA", "BBB"], dt.date(2023, 7, 1), dt.date(2023, 10, 1), CLEAN)


@pytest.fixture(scope="module")
def faulty() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_minute_bars_with_faults(
        ["AAA", "BBB", "CCC"], dt.date(2023, 1, 1), dt.date(2023, 3, 1), FAULTY
    )


def _local(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert("America/New_York")


def _ohlc_ok(b: pd.DataFrame) -> pd.Series:
    """Row-wise: every rule the generator promises for clean bars."""
    return (
        (b["high"] >= b[["open", "close"]].max(axis=1))
        & (b["low"] <= b[["open", "close"]].min(axis=1))
        & (b[["open", "high", "low", "close"]] > 0).all(axis=1)
        & (b["vwap"] >= b["low"])
        & (b["vwap"] <= b["high"])
        & (b["volume"] > 0)
        & (b["trades"] > 0)
    )


# --- schema -----------------------------------------------------------------------------------


def test_canonical_columns_and_dtypes(q3_bars: pd.DataFrame):
    assert list(q3_bars.columns) == BAR_COLUMNS
    pd.testing.assert_series_equal(q3_bars.dtypes, conform_bars(empty_bars()).dtypes)
    assert str(q3_bars["ts"].dt.tz) == "UTC"
    assert (q3_bars["timeframe"] == "1min").all()
    assert (q3_bars["vendor"] == "synthetic").all()
    assert not q3_bars["imputed"].any()
    assert q3_bars["vwap"].notna().all() and q3_bars["trades"].notna().all()
    assert (q3_bars["volume"] == q3_bars["volume"].round()).all()


def test_sorted_and_unique_without_faults(q3_bars: pd.DataFrame):
    assert list(q3_bars["symbol"].unique()) == ["AAA", "BBB"]
    assert not q3_bars.duplicated(["symbol", "ts"]).any()
    pd.testing.assert_frame_equal(q3_bars, q3_bars.sort_values(["symbol", "ts"]).reset_index(drop=True))


def test_empty_ranges_give_empty_canonical_frames():
    holiday = generate_minute_bars(["AAA"], dt.date(2023, 7, 4), dt.date(2023, 7, 5), FAULTY)
    backwards = generate_minute_bars(["AAA"], dt.date(2023, 7, 5), dt.date(2023, 7, 4), FAULTY)
    bars, faults = generate_minute_bars_with_faults([], dt.date(2023, 7, 5), dt.date(2023, 7, 6), FAULTY)
    for frame in (holiday, backwards, bars):
        assert frame.empty and list(frame.columns) == BAR_COLUMNS
    assert faults.empty and list(faults.columns) == ["symbol", "ts", "kind"]


# --- calendar ---------------------------------------------------------------------------------


def test_minutes_match_exchange_calendars(q3_bars: pd.DataFrame):
    cal = xcals.get_calendar("XNYS", start="2023-01-01", end="2023-12-31")
    expected = cal.sessions_minutes("2023-07-03", "2023-09-29")  # left-closed minutes = bar opens
    for _, group in q3_bars.groupby("symbol"):
        assert pd.DatetimeIndex(group["ts"]).equals(pd.DatetimeIndex(expected).as_unit("ns"))


def test_holiday_and_half_day(q3_bars: pd.DataFrame):
    aaa = q3_bars[q3_bars["symbol"] == "AAA"]
    per_day = aaa.groupby(_local(aaa["ts"]).dt.date)["ts"].agg(["min", "max", "count"])
    assert dt.date(2023, 7, 4) not in per_day.index
    assert per_day.loc[dt.date(2023, 7, 3), "count"] == 210  # half day: 09:30-13:00 ET
    assert per_day.loc[dt.date(2023, 7, 3), "max"] == pd.Timestamp("2023-07-03 16:59", tz="UTC")
    assert per_day.loc[dt.date(2023, 7, 5), "count"] == 390
    assert (per_day.drop(dt.date(2023, 7, 3))["count"] == 390).all()


def test_thanksgiving_friday_and_dst_switches():
    bars = generate_minute_bars(["AAA"], dt.date(2023, 3, 10), dt.date(2023, 11, 28), CLEAN)
    per_day = bars.groupby(_local(bars["ts"]).dt.date)["ts"].agg(["min", "max", "count"])
    assert per_day.loc[dt.date(2023, 11, 24), "max"] == pd.Timestamp("2023-11-24 17:59", tz="UTC")
    assert per_day.loc[dt.date(2023, 11, 24), "count"] == 210
    assert dt.date(2023, 11, 23) not in per_day.index
    # DST began Sunday 2023-03-12 and ended Sunday 2023-11-05.
    assert per_day.loc[dt.date(2023, 3, 10), "min"] == pd.Timestamp("2023-03-10 14:30", tz="UTC")
    assert per_day.loc[dt.date(2023, 3, 13), "min"] == pd.Timestamp("2023-03-13 13:30", tz="UTC")
    assert per_day.loc[dt.date(2023, 11, 3), "min"] == pd.Timestamp("2023-11-03 13:30", tz="UTC")
    assert per_day.loc[dt.date(2023, 11, 6), "min"] == pd.Timestamp("2023-11-06 14:30", tz="UTC")
    assert per_day.loc[dt.date(2023, 11, 6), "max"] == pd.Timestamp("2023-11-06 20:59", tz="UTC")


# --- determinism ------------------------------------------------------------------------------


def test_same_spec_same_bars_other_seed_other_bars():
    args = (["AAA", "BBB"], dt.date(2023, 5, 1), dt.date(2023, 5, 8))
    first = generate_minute_bars(*args, FAULTY)
    pd.testing.assert_frame_equal(first, generate_minute_bars(*args, FAULTY))
    other = generate_minute_bars(*args, FAULTY.model_copy(update={"seed": 12}))
    assert not np.allclose(first["close"].to_numpy()[:100], other["close"].to_numpy()[:100])


def test_adding_a_symbol_leaves_the_others_unchanged():
    start, end = dt.date(2023, 5, 1), dt.date(2023, 5, 8)
    alone, alone_faults = generate_minute_bars_with_faults(["BBB"], start, end, FAULTY)
    more, more_faults = generate_minute_bars_with_faults(["CCC", "AAA", "BBB"], start, end, FAULTY)
    pd.testing.assert_frame_equal(alone, more[more["symbol"] == "BBB"].reset_index(drop=True))
    pd.testing.assert_frame_equal(
        alone_faults, more_faults[more_faults["symbol"] == "BBB"].reset_index(drop=True)
    )


def test_bad_ticks_do_not_move_the_clean_path(faulty: tuple[pd.DataFrame, pd.DataFrame]):
    bars, faults = faulty
    clean = generate_minute_bars(["AAA", "BBB", "CCC"], dt.date(2023, 1, 1), dt.date(2023, 3, 1), CLEAN)
    key = ["symbol", "ts"]
    untouched = bars.merge(faults[key], on=key, how="left", indicator=True)
    untouched = untouched[untouched["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)
    expected = clean.merge(faults[key], on=key, how="left", indicator=True)
    expected = expected[expected["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)
    pd.testing.assert_frame_equal(untouched, expected)


def test_seeding_does_not_depend_on_python_hash_randomization():
    """Another interpreter with a different PYTHONHASHSEED must produce the very same bars."""
    script = (
        "import datetime as dt, hashlib;"
        "from quanto.config.models import SyntheticSpec;"
        "from quanto.data.synthetic import generate_minute_bars;"
        "b = generate_minute_bars(['AAA', 'ZZZ'], dt.date(2023, 5, 1), dt.date(2023, 5, 3), SyntheticSpec(seed=3));"
        "print(hashlib.sha256(b[['open','high','low','close','volume']].to_numpy().tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    here = generate_minute_bars(
        ["AAA", "ZZZ"], dt.date(2023, 5, 1), dt.date(2023, 5, 3), SyntheticSpec(seed=3)
    )
    digest = hashlib.sha256(here[["open", "high", "low", "close", "volume"]].to_numpy().tobytes()).hexdigest()
    assert out.stdout.strip() == digest


# --- realism ----------------------------------------------------------------------------------


def test_clean_bars_are_consistent(q3_bars: pd.DataFrame):
    assert _ohlc_ok(q3_bars).all()
    assert q3_bars["trades"].le(q3_bars["volume"]).all()
    first = q3_bars.groupby("symbol").head(1)
    assert (first["open"] == CLEAN.start_price).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=-(2**40), max_value=2**40),
    annual_vol=st.floats(min_value=0.01, max_value=5.0),
    start_price=st.floats(min_value=0.05, max_value=50_000.0),
)
def test_consistency_holds_for_any_spec(seed: int, annual_vol: float, start_price: float):
    spec = SyntheticSpec(seed=seed, annual_vol=annual_vol, start_price=start_price, bad_tick_rate=0.0)
    bars = generate_minute_bars(["AAA"], dt.date(2024, 2, 26), dt.date(2024, 3, 2), spec)
    assert len(bars) == 5 * 390
    assert _ohlc_ok(bars).all()


def test_volume_smile(q3_bars: pd.DataFrame):
    local = _local(q3_bars["ts"])
    minute = (local.dt.hour * 60 + local.dt.minute) - (9 * 60 + 30)
    full_days = q3_bars.groupby([q3_bars["symbol"], local.dt.date])["ts"].transform("size") == 390
    volume = q3_bars["volume"][full_days]
    minute = minute[full_days]
    first_30 = volume[minute < 30].mean()
    last_30 = volume[minute >= 360].mean()
    midday = volume[(minute >= 150) & (minute < 240)].mean()
    assert first_30 > 1.5 * midday
    assert last_30 > 1.5 * midday


def test_volatility_clusters(q3_bars: pd.DataFrame):
    aaa = q3_bars[q3_bars["symbol"] == "AAA"]
    local = _local(aaa["ts"])
    ret = np.log(aaa["close"]).diff()
    same_day = local.dt.date.eq(local.dt.date.shift())
    ret = ret[same_day]
    # Remove the intraday volatility profile first, so only clustering can create autocorrelation.
    minute_of_day = local[same_day].dt.hour * 60 + local[same_day].dt.minute
    standardized = ret / ret.groupby(minute_of_day).transform("std")
    squared = (standardized**2).reset_index(drop=True)
    assert squared.autocorr(1) > 0.05
    assert squared.autocorr(10) > 0.02


def test_annual_vol_scales_returns():
    args = (["AAA"], dt.date(2023, 1, 1), dt.date(2023, 4, 1))
    low = generate_minute_bars(*args, SyntheticSpec(seed=5, annual_vol=0.2, bad_tick_rate=0.0))
    high = generate_minute_bars(*args, SyntheticSpec(seed=5, annual_vol=0.4, bad_tick_rate=0.0))
    ratio = np.log(high["close"]).diff().std() / np.log(low["close"]).diff().std()
    assert ratio == pytest.approx(2.0, rel=0.05)
    day = _local(low["ts"]).dt.date
    daily = np.log(low.groupby(day)["close"].last()).diff().std() * np.sqrt(252)
    assert 0.1 < daily < 0.4


def test_overnight_gaps(q3_bars: pd.DataFrame):
    aaa = q3_bars[q3_bars["symbol"] == "AAA"]
    day = _local(aaa["ts"]).dt.date
    opens = aaa.groupby(day)["open"].first().iloc[1:].to_numpy()
    prior_close = aaa.groupby(day)["close"].last().iloc[:-1].to_numpy()
    assert np.mean(opens != prior_close) > 0.9


# --- faults -----------------------------------------------------------------------------------


def test_no_faults_without_bad_tick_rate(q3_bars: pd.DataFrame):
    bars, faults = generate_minute_bars_with_faults(["AAA"], dt.date(2023, 7, 1), dt.date(2023, 8, 1), CLEAN)
    assert faults.empty
    assert _ohlc_ok(bars).all()


def test_fault_frame_shape_and_share(faulty: tuple[pd.DataFrame, pd.DataFrame]):
    bars, faults = faulty
    assert list(faults.columns) == ["symbol", "ts", "kind"]
    assert str(faults["ts"].dt.tz) == "UTC"
    assert set(faults["kind"]) == set(FAULT_KINDS)
    assert not faults.duplicated(["symbol", "ts"]).any()
    n_dups = faults["kind"].isin(["duplicate_exact", "duplicate_conflict"]).sum()
    clean_rows = len(bars) - n_dups
    assert len(faults) == pytest.approx(FAULTY.bad_tick_rate * clean_rows, abs=3)


def test_bars_stay_sorted_with_duplicates_adjacent(faulty: tuple[pd.DataFrame, pd.DataFrame]):
    bars, faults = faulty
    pd.testing.assert_frame_equal(
        bars, bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    )
    dup_keys = bars.loc[bars.duplicated(["symbol", "ts"]), ["symbol", "ts"]]
    expected = faults.loc[faults["kind"].str.startswith("duplicate"), ["symbol", "ts"]]
    pd.testing.assert_frame_equal(dup_keys.reset_index(drop=True), expected.reset_index(drop=True))


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_breaks_its_rule(faulty: tuple[pd.DataFrame, pd.DataFrame], kind: str):
    bars, faults = faulty
    keys = faults.loc[faults["kind"] == kind, ["symbol", "ts"]]
    assert len(keys) > 10
    rows = bars.merge(keys, on=["symbol", "ts"])
    prices = rows[["open", "high", "low", "close"]]
    if kind == "high_below_max":
        assert (rows["high"] < rows[["open", "close"]].max(axis=1)).all()
    elif kind == "low_above_min":
        assert (rows["low"] > rows[["open", "close"]].min(axis=1)).all()
    elif kind == "non_positive_price":
        assert (prices.min(axis=1) <= 0).all()
    elif kind == "negative_volume":
        assert (rows["volume"] < 0).all()
    else:
        pairs = rows.groupby(["symbol", "ts"])
        assert (pairs.size() == 2).all()
        distinct = pairs.nunique(dropna=False)
        if kind == "duplicate_exact":
            assert (distinct == 1).all().all()
        else:
            assert (distinct["close"] == 2).all()
            # The conflicting copy is itself a plausible bar: only uniqueness is broken.
            assert _ohlc_ok(rows).all()


def test_rows_without_faults_pass_every_rule(faulty: tuple[pd.DataFrame, pd.DataFrame]):
    bars, faults = faulty
    flagged = bars.merge(faults[["symbol", "ts"]], on=["symbol", "ts"], how="left", indicator=True)["_merge"]
    assert _ohlc_ok(bars[(flagged == "left_only").to_numpy()]).all()
