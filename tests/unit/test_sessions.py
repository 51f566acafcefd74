"""Session rules: expected bars from the XNYS calendar, gaps, unexpected bars and gap repair.

The oracle for the grid is exchange_calendars itself (sessions, session minutes) and pandas' own
time-zone arithmetic, never our module.
"""

from __future__ import annotations

import datetime as dt
import warnings
from functools import cache

import exchange_calendars as xcals
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quanto.config.models import SessionRules, SyntheticSpec, WarnRule
from quanto.data.sample import load_sample_bars
from quanto.data.schemas import BAR_COLUMNS
from quanto.data.synthetic import generate_minute_bars
from quanto.validation.checks import ValidationFailed
from quanto.validation.sessions import (
    IMPUTED_VENDOR,
    check_sessions,
    expected_timestamps,
    repair_gaps,
)

ET = "America/New_York"
RULES = SessionRules()
ZERO = WarnRule()
UTC = dt.UTC


@cache
def xnys() -> xcals.ExchangeCalendar:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return xcals.get_calendar("XNYS", start="2000-01-01", end="2025-12-31")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def et(*args: int) -> dt.datetime:
    """A wall-clock time in New York, as an aware UTC datetime."""
    return pd.Timestamp(dt.datetime(*args)).tz_localize(ET).tz_convert("UTC").to_pydatetime()


@cache
def minute_bars() -> pl.DataFrame:
    """Clean synthetic minute bars, 2023-11-20..2023-11-27 (Thanksgiving holiday + a half day)."""
    spec = SyntheticSpec(bad_tick_rate=0)
    return pl.from_pandas(
        generate_minute_bars(["AAA", "BBB"], dt.date(2023, 11, 20), dt.date(2023, 11, 28), spec)
    )


def one_day(symbol: str = "AAA", day: dt.date = dt.date(2023, 11, 21)) -> pl.DataFrame:
    bars = minute_bars()
    return bars.filter(
        (pl.col("symbol") == symbol) & (pl.col("ts").dt.convert_time_zone(ET).dt.date() == day)
    )


def drop_ts(bars: pl.DataFrame, ts: list[dt.datetime]) -> pl.DataFrame:
    return bars.filter(~pl.col("ts").is_in(pl.Series(ts, dtype=pl.Datetime("ns", "UTC"))))


def minutes(start: dt.datetime, n: int) -> list[dt.datetime]:
    return [start + dt.timedelta(minutes=i) for i in range(n)]


# --- expected_timestamps -----------------------------------------------------------------------


def test_half_day_ends_at_the_early_close():
    ts = expected_timestamps("XNYS", "1min", dt.date(2023, 11, 24), dt.date(2023, 11, 24))
    assert ts.dtype == pl.Datetime("ns", "UTC")
    assert ts.len() == 210
    assert ts[0] == et(2023, 11, 24, 9, 30)
    assert ts[-1] == et(2023, 11, 24, 12, 59) == utc(2023, 11, 24, 17, 59)


def test_holiday_has_no_bars():
    assert expected_timestamps("XNYS", "1min", dt.date(2023, 7, 4), dt.date(2023, 7, 4)).len() == 0
    assert expected_timestamps("XNYS", "1d", dt.date(2023, 7, 4), dt.date(2023, 7, 4)).len() == 0
    around = expected_timestamps("XNYS", "1d", dt.date(2023, 7, 3), dt.date(2023, 7, 5))
    assert around.to_list() == [et(2023, 7, 3, 9, 30), et(2023, 7, 5, 9, 30)]


def test_dst_switch_moves_the_open_in_utc():
    fri = expected_timestamps("XNYS", "1min", dt.date(2024, 3, 8), dt.date(2024, 3, 8))
    mon = expected_timestamps("XNYS", "1min", dt.date(2024, 3, 11), dt.date(2024, 3, 11))
    assert fri[0] == utc(2024, 3, 8, 14, 30) and fri.len() == 390
    assert mon[0] == utc(2024, 3, 11, 13, 30) and mon.len() == 390
    assert mon[-1] == utc(2024, 3, 11, 19, 59)


def test_daily_bars_are_the_sessions_at_0930_et():
    got = expected_timestamps("XNYS", "1d", dt.date(2024, 2, 1), dt.date(2024, 2, 29))
    sessions = xnys().sessions_in_range("2024-02-01", "2024-02-29")
    want = (sessions + pd.Timedelta(hours=9, minutes=30)).tz_localize(ET).tz_convert("UTC")
    assert got.to_list() == [t.to_pydatetime() for t in want]
    assert len(got) == 20  # Presidents' Day 2024-02-19 is a holiday


def test_minutes_match_exchange_calendars_over_a_quarter():
    got = expected_timestamps("XNYS", "1min", dt.date(2023, 7, 1), dt.date(2023, 9, 30))
    want = xnys().sessions_minutes("2023-07-03", "2023-09-29")  # left-closed minutes = bar opens
    assert got.to_list() == [t.to_pydatetime() for t in want]


def test_five_minute_and_hourly_buckets_start_at_the_open():
    five = expected_timestamps("XNYS", "5min", dt.date(2023, 11, 22), dt.date(2023, 11, 24))
    assert five.len() == 78 + 42  # full day + half day (13:00 close)
    assert five[0] == et(2023, 11, 22, 9, 30) and five[77] == et(2023, 11, 22, 15, 55)
    assert five[-1] == et(2023, 11, 24, 12, 55)
    hour = expected_timestamps("XNYS", "1h", dt.date(2023, 11, 22), dt.date(2023, 11, 24))
    # 15:30-16:00 and 12:30-13:00 are partial last buckets, still expected.
    assert hour.to_list() == [et(2023, 11, 22, h, 30) for h in range(9, 16)] + [
        et(2023, 11, 24, h, 30) for h in range(9, 13)
    ]


def test_extended_hours_run_from_0400_to_2000_et():
    ts = expected_timestamps("XNYS", "1min", dt.date(2024, 3, 8), dt.date(2024, 3, 11), extended_hours=True)
    fri = ts.filter(ts.dt.convert_time_zone(ET).dt.date() == dt.date(2024, 3, 8))
    mon = ts.filter(ts.dt.convert_time_zone(ET).dt.date() == dt.date(2024, 3, 11))
    assert fri.len() == mon.len() == 16 * 60
    assert fri[0] == et(2024, 3, 8, 4, 0) and fri[-1] == et(2024, 3, 8, 19, 59)
    assert mon[0] == et(2024, 3, 11, 4, 0) and mon[-1] == et(2024, 3, 11, 19, 59)
    half = expected_timestamps(
        "XNYS", "1min", dt.date(2023, 11, 24), dt.date(2023, 11, 24), extended_hours=True
    )
    assert half[0] == et(2023, 11, 24, 4, 0) and half[-1] == et(
        2023, 11, 24, 16, 59
    )  # post-market ends 17:00
    hourly = expected_timestamps("XNYS", "1h", dt.date(2024, 3, 8), dt.date(2024, 3, 8), extended_hours=True)
    assert hourly.to_list() == [et(2024, 3, 8, h, 0) for h in range(4, 20)]
    daily = expected_timestamps("XNYS", "1d", dt.date(2024, 3, 8), dt.date(2024, 3, 8), extended_hours=True)
    assert daily.to_list() == [et(2024, 3, 8, 9, 30)]  # daily bars ignore extended hours


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="timeframe"):
        expected_timestamps("XNYS", "2d", dt.date(2024, 1, 2), dt.date(2024, 1, 3))
    with pytest.raises(ValueError, match="calendar"):
        expected_timestamps("NOPE", "1min", dt.date(2024, 1, 2), dt.date(2024, 1, 3))
    with pytest.raises(ValueError, match="extended hours"):
        expected_timestamps("XLON", "1min", dt.date(2024, 1, 2), dt.date(2024, 1, 3), extended_hours=True)


# --- check_sessions on clean data --------------------------------------------------------------


def test_clean_synthetic_minutes_have_no_gaps_and_no_unexpected_bars():
    bars = minute_bars()
    out = check_sessions(bars, "1min", RULES, ZERO)
    assert out.gaps.height == 0
    assert out.flags.height == 0
    assert out.quarantined.height == 0
    assert out.bars.equals(bars)
    assert out.counters["gaps"] == 0 and out.counters["unexpected_bars"] == 0


def test_real_sample_daily_bars_have_no_gaps():
    bars = pl.from_pandas(load_sample_bars(["AAPL", "IBM"], dt.date(2005, 1, 1), dt.date(2013, 1, 1)))
    out = check_sessions(bars, "1d", RULES, ZERO)
    assert out.gaps.height == 0 and out.flags.height == 0 and out.bars.height == bars.height


def test_market_closures_of_2001_and_2012_are_never_gaps():
    # The calendar knows 9/11 (closed 2001-09-11..14) and Hurricane Sandy (2012-10-29/30).
    for day in ("2001-09-11", "2001-09-14", "2012-10-29", "2012-10-30"):
        assert not xnys().is_session(day)
    for year in (2001, 2012):
        bars = pl.from_pandas(load_sample_bars(["IBM"], dt.date(year, 1, 1), dt.date(year + 1, 1, 1)))
        out = check_sessions(bars, "1d", RULES, ZERO)
        assert out.gaps.height == 0 and out.flags.height == 0


def test_nothing_is_flagged_before_a_listing_or_after_the_last_bar():
    bars = minute_bars()
    late = bars.filter((pl.col("symbol") == "AAA") | (pl.col("ts") >= et(2023, 11, 22, 11, 0)))
    late = late.filter((pl.col("symbol") == "BBB") | (pl.col("ts") < et(2023, 11, 24, 10, 0)))
    out = check_sessions(late, "1min", RULES, ZERO)
    assert out.gaps.height == 0 and out.flags.height == 0


def test_disabled_rules_return_bars_unchanged():
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 10, 0), 3))
    out = check_sessions(bars, "1min", SessionRules(enabled=False), ZERO)
    assert out.bars.equals(bars) and out.flags.height == 0 and out.gaps.height == 0


# --- gaps and repair ---------------------------------------------------------------------------


def test_three_missing_minutes_make_one_filled_gap():
    day = one_day()
    gone = minutes(utc(2023, 11, 21, 14, 31), 3)
    bars = drop_ts(day, gone)
    out = check_sessions(bars, "1min", RULES, ZERO)
    assert out.gaps.to_dicts() == [
        {
            "symbol": "AAA",
            "gap_start": gone[0],
            "gap_end": gone[-1],
            "missing_bars": 3,
            "action": "fill",
        }
    ]
    assert out.flags.to_dicts() == [
        {"symbol": "AAA", "ts": gone[0], "rule": "gap", "reason": "3 bars missing 14:31–14:33 UTC (filled)"}
    ]

    repaired, audit = repair_gaps(out.bars, out.gaps, "1min")
    assert repaired.columns == BAR_COLUMNS and repaired.schema == bars.schema
    assert repaired["ts"].to_list() == day["ts"].to_list()
    imputed = repaired.filter(pl.col("imputed"))
    prev_close = day.filter(pl.col("ts") == utc(2023, 11, 21, 14, 30))["close"][0]
    assert imputed["ts"].to_list() == gone
    for col in ("open", "high", "low", "close"):
        assert imputed[col].to_list() == [prev_close] * 3
    assert imputed["volume"].to_list() == [0.0] * 3
    assert imputed["vwap"].null_count() == 3 and imputed["trades"].null_count() == 3
    assert set(imputed["vendor"]) == {"synthetic"} and set(imputed["timeframe"]) == {"1min"}

    assert audit.height == 15
    assert audit.schema == pl.Schema(
        {
            "symbol": pl.String,
            "ts": pl.Datetime("ns", "UTC"),
            "column": pl.String,
            "old": pl.Float64,
            "new": pl.Float64,
            "method": pl.String,
            "rule": pl.String,
        }
    )
    assert audit["column"].to_list() == ["open", "high", "low", "close", "volume"] * 3
    assert audit["ts"].to_list() == [t for t in gone for _ in range(5)]
    assert audit["old"].null_count() == 15
    assert audit["new"].to_list() == [prev_close] * 4 + [0.0] + [prev_close] * 4 + [0.0] + [
        prev_close
    ] * 4 + [0.0]
    assert set(audit["method"]) == {"carry_forward"} and set(audit["rule"]) == {"gap"}

    # Repairing twice changes nothing; the repaired bars pass the session rules without flags.
    again, audit2 = repair_gaps(repaired, out.gaps, "1min")
    assert again.equals(repaired) and audit2.height == 0
    rechecked = check_sessions(repaired, "1min", RULES, ZERO)
    assert rechecked.gaps.height == 0 and rechecked.flags.height == 0


def test_thirty_missing_minutes_are_tagged_for_review_and_never_filled():
    gone = minutes(et(2023, 11, 21, 11, 0), 30)
    bars = drop_ts(one_day(), gone)
    out = check_sessions(bars, "1min", RULES, ZERO)
    assert out.gaps["action"].to_list() == ["review"]
    assert out.gaps["missing_bars"].to_list() == [30]
    assert out.flags["reason"][0] == "30 bars missing 16:00–16:29 UTC (tagged for review)"
    repaired, audit = repair_gaps(out.bars, out.gaps, "1min")
    assert repaired.equals(out.bars) and audit.height == 0


@pytest.mark.parametrize(("missing", "action"), [(4, "fill"), (5, "review"), (1, "fill")])
def test_max_fill_bars_boundary(missing: int, action: str):
    rules = SessionRules(max_fill_bars=5)
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 13, 0), missing))
    out = check_sessions(bars, "1min", rules, ZERO)
    assert out.gaps["missing_bars"].to_list() == [missing]
    assert out.gaps["action"].to_list() == [action]


def test_repair_off_tags_every_gap_for_review():
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 13, 0), 1))
    out = check_sessions(bars, "1min", SessionRules(repair=False), ZERO)
    assert out.gaps["action"].to_list() == ["review"]


def test_gaps_never_span_the_overnight_break():
    bars = minute_bars().filter(pl.col("symbol") == "BBB")
    gone = minutes(et(2023, 11, 21, 15, 58), 2) + minutes(et(2023, 11, 22, 9, 30), 2)
    out = check_sessions(drop_ts(bars, gone), "1min", RULES, ZERO)
    assert out.gaps.select("gap_start", "gap_end", "missing_bars").rows() == [
        (gone[0], gone[1], 2),
        (gone[2], gone[3], 2),
    ]
    repaired, audit = repair_gaps(out.bars, out.gaps, "1min")
    assert repaired["ts"].to_list() == bars["ts"].to_list() and audit.height == 20
    # The next morning's bars carry the previous evening's close forward.
    last_close = bars.filter(pl.col("ts") == et(2023, 11, 21, 15, 57))["close"][0]
    assert repaired.filter(pl.col("imputed"))["close"].to_list() == [last_close] * 4


def test_daily_gap_is_filled_on_calendar_sessions():
    bars = pl.from_pandas(load_sample_bars(["IBM"], dt.date(2012, 10, 1), dt.date(2012, 11, 30)))
    gone = [et(2012, 10, 26, 9, 30), et(2012, 10, 31, 9, 30)]  # around the Sandy closure
    out = check_sessions(drop_ts(bars, gone), "1d", RULES, ZERO)
    assert out.gaps.select("gap_start", "gap_end", "missing_bars", "action").rows() == [
        (gone[0], gone[1], 2, "fill")
    ]
    assert out.flags["reason"].to_list() == ["2 bars missing 2012-10-26–2012-10-31 (filled)"]
    repaired, audit = repair_gaps(out.bars, out.gaps, "1d")
    assert repaired["ts"].to_list() == bars["ts"].to_list()
    assert audit.height == 10


def test_vendor_can_be_marked_as_imputed():
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 13, 0), 2))
    out = check_sessions(bars, "1min", RULES, ZERO)
    repaired, _ = repair_gaps(out.bars, out.gaps, "1min", source_vendor_column_kept=False)
    assert repaired.filter(pl.col("imputed"))["vendor"].to_list() == [IMPUTED_VENDOR] * 2


def test_repair_with_the_wrong_calendar_grid_raises():
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 13, 0), 2))
    out = check_sessions(bars, "1min", RULES, ZERO)
    with pytest.raises(ValueError, match="grid"):
        repair_gaps(out.bars, out.gaps, "5min")


# --- unexpected bars and zero volume -----------------------------------------------------------


def _extra_bar(bars: pl.DataFrame, ts: dt.datetime) -> pl.DataFrame:
    row = bars.head(1).with_columns(pl.lit(ts).cast(pl.Datetime("ns", "UTC")).alias("ts"))
    return pl.concat([bars, row]).sort("symbol", "ts")


@pytest.mark.parametrize(
    "ts",
    [et(2023, 11, 21, 3, 0), et(2023, 11, 23, 10, 0), et(2023, 11, 24, 13, 30)],
    ids=["0300_et", "thanksgiving", "after_early_close"],
)
def test_bar_outside_the_sessions_is_unexpected(ts: dt.datetime):
    bars = _extra_bar(minute_bars().filter(pl.col("symbol") == "AAA"), ts)
    out = check_sessions(bars, "1min", RULES, ZERO)
    assert out.flags.select("symbol", "ts", "rule").rows() == [("AAA", ts, "unexpected_bar")]
    assert "not an expected XNYS 1min bar" in out.flags["reason"][0]
    assert out.gaps.height == 0 and out.bars.height == bars.height


def test_unexpected_bar_quarantine_moves_the_row_out():
    ts = et(2023, 11, 21, 3, 0)
    bars = _extra_bar(one_day(), ts)
    rules = SessionRules(unexpected_bar=WarnRule(policy="quarantine"))
    out = check_sessions(bars, "1min", rules, ZERO)
    assert out.quarantined.columns == [*BAR_COLUMNS, "rule", "reason"]
    assert out.quarantined.select("ts", "rule").rows() == [(ts, "unexpected_bar")]
    assert out.bars.equals(one_day()) and out.flags.height == 0
    assert out.bars.height + out.quarantined.height == bars.height


def test_daily_bar_on_a_holiday_is_unexpected():
    bars = pl.from_pandas(load_sample_bars(["IBM"], dt.date(2012, 6, 1), dt.date(2012, 8, 1)))
    bars = _extra_bar(bars, et(2012, 7, 4, 9, 30))
    out = check_sessions(bars, "1d", RULES, ZERO)
    assert out.flags.select("ts", "rule").rows() == [(et(2012, 7, 4, 9, 30), "unexpected_bar")]


def test_zero_volume_in_regular_hours_is_flagged():
    ts = et(2023, 11, 21, 10, 0)
    bars = one_day().with_columns(
        pl.when(pl.col("ts") == ts).then(0.0).otherwise(pl.col("volume")).alias("volume")
    )
    out = check_sessions(bars, "1min", RULES, ZERO)
    assert out.flags.select("ts", "rule").rows() == [(ts, "zero_volume_rth")]
    quarantined = check_sessions(bars, "1min", RULES, WarnRule(policy="quarantine"))
    assert quarantined.quarantined.select("ts", "rule").rows() == [(ts, "zero_volume_rth")]
    # The row left, so its slot is a one-bar gap the repair may fill (volume 0, imputed).
    assert quarantined.gaps["missing_bars"].to_list() == [1]


def test_zero_volume_does_not_apply_to_daily_bars():
    bars = pl.from_pandas(load_sample_bars(["IBM"], dt.date(2012, 1, 1), dt.date(2012, 2, 1)))
    bars = bars.with_columns(pl.lit(0.0).alias("volume"))
    out = check_sessions(bars, "1d", RULES, ZERO)
    assert out.flags.height == 0


@pytest.mark.parametrize("rule", ["gap", "unexpected_bar", "zero_volume_rth"])
def test_fail_policy_raises_naming_the_rule(rule: str):
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 11, 0), 2))
    bars = _extra_bar(bars, et(2023, 11, 21, 3, 0))
    bars = bars.with_columns(
        pl.when(pl.col("ts") == et(2023, 11, 21, 10, 0)).then(0.0).otherwise(pl.col("volume")).alias("volume")
    )
    fail = WarnRule(policy="fail")
    rules = SessionRules(**{rule: fail}) if rule != "zero_volume_rth" else RULES
    zero = fail if rule == "zero_volume_rth" else ZERO
    with pytest.raises(ValidationFailed, match=rf"rule '{rule}' \(policy fail\) failed on 1"):
        check_sessions(bars, "1min", rules, zero)


def test_gap_quarantine_policy_acts_as_warn():
    bars = drop_ts(one_day(), minutes(et(2023, 11, 21, 11, 0), 2))
    out = check_sessions(bars, "1min", SessionRules(gap=WarnRule(policy="quarantine")), ZERO)
    assert out.flags["rule"].to_list() == ["gap"] and out.quarantined.height == 0
    assert out.bars.equals(bars)


def test_timeframe_mismatch_raises():
    with pytest.raises(ValueError, match="timeframe"):
        check_sessions(one_day(), "5min", RULES, ZERO)


# --- property ----------------------------------------------------------------------------------


@cache
def three_days() -> pl.DataFrame:
    """Three complete sessions of one symbol; deletions come from the middle one."""
    return minute_bars().filter(
        (pl.col("symbol") == "AAA")
        & pl.col("ts")
        .dt.convert_time_zone(ET)
        .dt.date()
        .is_between(dt.date(2023, 11, 20), dt.date(2023, 11, 22))
    )


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 389), min_size=1, max_size=120))
def test_random_deletions_are_reported_and_repaired_exactly(deleted_minutes: set[int]):
    bars = three_days()
    middle = bars.filter(pl.col("ts").dt.convert_time_zone(ET).dt.date() == dt.date(2023, 11, 21))["ts"]
    deleted = {middle[i] for i in deleted_minutes}
    holed = drop_ts(bars, sorted(deleted))
    out = check_sessions(holed, "1min", RULES, ZERO)

    gaps = out.gaps.rows(named=True)
    assert sum(g["missing_bars"] for g in gaps) == len(deleted)
    for t in deleted:
        assert sum(g["gap_start"] <= t <= g["gap_end"] for g in gaps) == 1
    for g in gaps:  # a gap is exactly a run of deleted minutes
        n = int((g["gap_end"] - g["gap_start"]) / dt.timedelta(minutes=1)) + 1
        assert n == g["missing_bars"]

    huge = SessionRules(max_fill_bars=10_000)
    out = check_sessions(holed, "1min", huge, ZERO)
    repaired, audit = repair_gaps(out.bars, out.gaps, "1min")
    assert repaired["ts"].to_list() == bars["ts"].to_list()
    assert repaired.filter(pl.col("imputed"))["ts"].to_list() == sorted(deleted)
    assert audit.height == 5 * len(deleted)


def test_repair_merges_gaps_of_several_symbols_in_order():
    bars = minute_bars()
    gone = {"AAA": minutes(et(2023, 11, 22, 10, 0), 2), "BBB": minutes(et(2023, 11, 20, 15, 0), 3)}
    holed = bars.filter(
        ~(
            (pl.col("symbol") == "AAA")
            & pl.col("ts").is_in(pl.Series(gone["AAA"], dtype=pl.Datetime("ns", "UTC")))
        )
        & ~(
            (pl.col("symbol") == "BBB")
            & pl.col("ts").is_in(pl.Series(gone["BBB"], dtype=pl.Datetime("ns", "UTC")))
        )
    )
    out = check_sessions(holed, "1min", RULES, ZERO)
    assert out.gaps.select("symbol", "missing_bars").rows() == [("AAA", 2), ("BBB", 3)]
    # Input order does not matter to the repair; the output is sorted by (symbol, ts).
    repaired, audit = repair_gaps(out.bars.reverse(), out.gaps, "1min")
    assert repaired.select("symbol", "ts").equals(bars.select("symbol", "ts"))
    assert repaired.filter(~pl.col("imputed")).equals(holed)
    assert audit.select("symbol").unique(maintain_order=True)["symbol"].to_list() == ["AAA", "BBB"]
    assert audit.height == 25


def test_five_minute_bars_on_the_grid_have_no_gaps():
    bars = (
        minute_bars()
        .filter(pl.col("ts").dt.minute() % 5 == 0)
        .with_columns(pl.lit("5min").alias("timeframe"))
    )
    out = check_sessions(bars, "5min", RULES, ZERO)
    assert out.gaps.height == 0 and out.flags.height == 0
    off_grid = _extra_bar(bars, et(2023, 11, 21, 10, 1))
    assert check_sessions(off_grid, "5min", RULES, ZERO).flags["rule"].to_list() == ["unexpected_bar"]


def test_extended_hours_rules_expect_pre_and_post_market_bars():
    grid = expected_timestamps("XNYS", "1min", dt.date(2024, 3, 8), dt.date(2024, 3, 11), extended_hours=True)
    template = one_day().head(1)
    bars = pl.concat(
        [template.with_columns(pl.lit(t).cast(pl.Datetime("ns", "UTC")).alias("ts")) for t in grid]
    )
    rules = SessionRules(extended_hours=True)
    assert check_sessions(bars, "1min", rules, ZERO).flags.height == 0
    # Regular-hours-only rules see the pre- and post-market bars as unexpected.
    assert check_sessions(bars, "1min", RULES, ZERO).flags.height == 2 * (16 - 6.5) * 60
    pre = drop_ts(bars, minutes(et(2024, 3, 11, 5, 0), 2))
    out = check_sessions(pre, "1min", rules, ZERO)
    assert out.gaps.select("gap_start", "missing_bars").rows() == [(et(2024, 3, 11, 5, 0), 2)]
    # Zero volume outside regular hours is normal; inside it is flagged.
    quiet = bars.with_columns(pl.lit(0.0).alias("volume"))
    flagged = check_sessions(quiet, "1min", rules, ZERO).flags
    assert set(flagged["rule"]) == {"zero_volume_rth"} and flagged.height == 2 * 390
    repaired, _ = repair_gaps(out.bars, out.gaps, "1min", extended_hours=True)
    assert repaired["ts"].to_list() == bars["ts"].to_list()
