"""The offline `sample` vendor: real daily bars shipped in arch and bokeh_sampledata."""

from __future__ import annotations

import datetime as dt

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest

from quanto.data.sample import SAMPLE_SYMBOLS, load_sample_bars
from quanto.data.schemas import BAR_COLUMNS, conform_bars, empty_bars

CANONICAL_DTYPES = conform_bars(empty_bars()).dtypes


@pytest.fixture(scope="module")
def bars_2012() -> pd.DataFrame:
    return load_sample_bars(["SPX", "AAPL", "FB", "IXIC"], dt.date(2012, 1, 1), dt.date(2013, 1, 1))


def test_symbols_cover_both_sources():
    assert set(SAMPLE_SYMBOLS) == {"SPX", "IXIC", "AAPL", "IBM", "MSFT", "GOOG", "FB"}
    assert all(desc.strip() for desc in SAMPLE_SYMBOLS.values())


def test_canonical_columns_and_dtypes(bars_2012: pd.DataFrame):
    assert list(bars_2012.columns) == BAR_COLUMNS
    pd.testing.assert_series_equal(bars_2012.dtypes, CANONICAL_DTYPES)
    assert str(bars_2012["ts"].dt.tz) == "UTC"
    assert (bars_2012["timeframe"] == "1d").all()
    assert (bars_2012["vendor"] == "sample").all()
    assert bars_2012["vwap"].isna().all()
    assert bars_2012["trades"].isna().all()
    assert not bars_2012["imputed"].any()


def test_sorted_by_symbol_then_ts_whatever_the_request_order(bars_2012: pd.DataFrame):
    assert list(bars_2012["symbol"].unique()) == ["AAPL", "FB", "IXIC", "SPX"]
    assert not bars_2012.duplicated(["symbol", "ts"]).any()
    resorted = bars_2012.sort_values(["symbol", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(bars_2012, resorted)


def test_ts_is_0930_new_york_in_utc(bars_2012: pd.DataFrame):
    assert set(bars_2012["ts"].dt.strftime("%H:%M")) == {"13:30", "14:30"}
    local = bars_2012["ts"].dt.tz_convert("America/New_York")
    assert set(local.dt.strftime("%H:%M")) == {"09:30"}
    spx = bars_2012[bars_2012["symbol"] == "SPX"].set_index(local[bars_2012["symbol"] == "SPX"].dt.date)
    # DST began on Sunday 2012-03-11 and ended on Sunday 2012-11-04.
    assert spx.loc[dt.date(2012, 3, 9), "ts"] == pd.Timestamp("2012-03-09 14:30", tz="UTC")
    assert spx.loc[dt.date(2012, 3, 12), "ts"] == pd.Timestamp("2012-03-12 13:30", tz="UTC")
    assert spx.loc[dt.date(2012, 11, 2), "ts"] == pd.Timestamp("2012-11-02 13:30", tz="UTC")
    assert spx.loc[dt.date(2012, 11, 5), "ts"] == pd.Timestamp("2012-11-05 14:30", tz="UTC")


def test_sessions_match_the_xnys_calendar(bars_2012: pd.DataFrame):
    cal = xcals.get_calendar("XNYS", start="2012-01-01", end="2012-12-31")
    sessions = set(cal.sessions.date)
    spx_days = set(
        bars_2012.loc[bars_2012["symbol"] == "SPX", "ts"].dt.tz_convert("America/New_York").dt.date
    )
    # Includes the Hurricane Sandy closure (2012-10-29/30): no rows on those days.
    assert spx_days == sessions
    assert dt.date(2012, 10, 29) not in spx_days


def test_start_inclusive_end_exclusive():
    bars = load_sample_bars(["SPX"], dt.date(2018, 12, 24), dt.date(2018, 12, 31))
    days = list(bars["ts"].dt.tz_convert("America/New_York").dt.date)
    assert days == [
        dt.date(2018, 12, 24),
        dt.date(2018, 12, 26),
        dt.date(2018, 12, 27),
        dt.date(2018, 12, 28),
    ]
    last = load_sample_bars(["SPX"], dt.date(2018, 12, 31), dt.date(2019, 1, 1))
    assert len(last) == 1


def test_raw_unadjusted_prices_as_shipped():
    spx = load_sample_bars(["SPX"], dt.date(1999, 1, 4), dt.date(1999, 1, 5)).iloc[0]
    assert spx["open"] == pytest.approx(1229.229980)
    assert spx["volume"] == 877_000_000.0
    aapl = load_sample_bars(["AAPL"], dt.date(2000, 3, 1), dt.date(2000, 3, 2)).iloc[0]
    # bokeh's adj_close for this day is about 4.19; the bar must carry the raw close.
    assert (aapl["open"], aapl["high"], aapl["low"], aapl["close"]) == (118.56, 132.06, 118.5, 130.31)
    assert aapl["volume"] == 9_616_100.0


def test_splits_are_not_adjusted_away():
    msft = load_sample_bars(["MSFT"], dt.date(2003, 2, 14), dt.date(2003, 2, 19))
    closes = msft["close"].to_numpy()
    # 2-for-1 split effective 2003-02-18: the raw close roughly halves.
    assert closes[-1] / closes[-2] == pytest.approx(0.5, rel=0.05)


def test_vendor_oddities_reach_validation_untouched():
    ixic = load_sample_bars(["IXIC"], dt.date(2015, 5, 11), dt.date(2015, 5, 14))
    zero = ixic[ixic["volume"] == 0]
    assert list(zero["ts"]) == [pd.Timestamp("2015-05-12 13:30", tz="UTC")]


def test_full_history_ranges():
    bars = load_sample_bars(sorted(SAMPLE_SYMBOLS), dt.date(1990, 1, 1), dt.date(2030, 1, 1))
    local_day = bars["ts"].dt.tz_convert("America/New_York").dt.date
    span = local_day.groupby(bars["symbol"]).agg(["min", "max", "count"])
    assert span.loc["SPX"].tolist() == [dt.date(1999, 1, 4), dt.date(2018, 12, 31), 5031]
    assert span.loc["IXIC"].tolist() == [dt.date(1999, 1, 4), dt.date(2018, 12, 31), 5031]
    assert span.loc["AAPL"].tolist() == [dt.date(2000, 3, 1), dt.date(2013, 3, 1), 3270]
    assert span.loc["GOOG", "min"] == dt.date(2004, 8, 19)
    assert span.loc["FB", "min"] == dt.date(2012, 5, 18)
    assert np.isfinite(bars[["open", "high", "low", "close", "volume"]].to_numpy()).all()


def test_symbol_without_rows_in_range_is_absent():
    bars = load_sample_bars(["FB", "IBM"], dt.date(2005, 1, 1), dt.date(2005, 2, 1))
    assert set(bars["symbol"]) == {"IBM"}
    none = load_sample_bars(["FB"], dt.date(2005, 1, 1), dt.date(2005, 2, 1))
    assert none.empty
    assert list(none.columns) == BAR_COLUMNS
    pd.testing.assert_series_equal(none.dtypes, CANONICAL_DTYPES)


def test_unknown_symbol_names_it_and_lists_available():
    with pytest.raises(ValueError, match="NOPE") as err:
        load_sample_bars(["SPX", "NOPE"], dt.date(2010, 1, 1), dt.date(2010, 2, 1))
    message = str(err.value)
    assert all(symbol in message for symbol in SAMPLE_SYMBOLS)


def test_result_is_a_copy_not_the_cache():
    first = load_sample_bars(["IBM"], dt.date(2010, 1, 1), dt.date(2010, 2, 1))
    first["close"] = -1.0
    again = load_sample_bars(["IBM"], dt.date(2010, 1, 1), dt.date(2010, 2, 1))
    assert (again["close"] > 0).all()
