"""Expected bars from the exchange calendar, gap detection and short-gap repair with an audit trail.

The calendar (exchange_calendars) says which bar-open times should exist: `expected_timestamps`
builds that grid for a timeframe. `check_sessions` compares bars with it, per symbol, between the
symbol's first and last bar (so nothing is flagged before a listing or after the last bar):

- `gap` — a run of missing expected bars inside one session (intraday) or of missing sessions
  (daily); one flag per gap, at its first missing bar. A gap shorter than `max_fill_bars` is marked
  `fill` (when `repair` is on), longer ones `review`. Policy `quarantine` means nothing for a row
  that does not exist, so it acts as `warn`; `fail` raises.
- `unexpected_bar` — a bar whose ts is not on the grid (a holiday, 03:00 ET, off the bucket grid).
- `zero_volume_rth` — intraday only: volume 0 at a regular-hours expected bar (imputed rows excepted).

`repair_gaps` fills the `fill` gaps by carrying the last real close forward (volume 0, imputed=True)
and returns an audit row per imputed value. Everything is vectorized: the grid is numpy arithmetic
over sessions, missing bars come from jumps in grid position between consecutive bars.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import polars as pl

from quanto.config.models import SessionRules, WarnRule
from quanto.validation.checks import EXAMPLES_PER_RULE, Check, ValidationFailed, empty_flags, run_checks

DAILY = "1d"
TS_DTYPE = pl.Datetime("ns", "UTC")
# Calendars are built once for this span of years (about 0.2 s each); a request outside widens it.
CALENDAR_YEARS = (1990, 2040)
# Extended hours exist for US equity venues only: pre-market from 04:00 local time, post-market for
# 4 hours after the close (20:00 ET, or 17:00 ET after a 13:00 early close).
EXTENDED_HOURS_CALENDARS = frozenset({"XNYS", "XNAS", "XASE", "ARCX", "BATS", "IEPA"})
PRE_MARKET_OPEN = dt.timedelta(hours=4)
POST_MARKET_LENGTH = dt.timedelta(hours=4)
IMPUTED_VENDOR = "imputed"
AUDIT_COLUMNS = ("open", "high", "low", "close", "volume")
REPAIR_METHOD = "carry_forward"

_TIMEFRAME_RE = re.compile(r"^(\d+)(min|h)$")
_UNIT_NS = {"min": 60_000_000_000, "h": 3_600_000_000_000}
# Helper columns joined onto bars while checking; never leave this module.
_IDX, _SEG, _RTH = "__grid_idx", "__grid_segment", "__grid_rth"


@dataclass
class SessionOutcome:
    """What the session rules found in one timeframe's bars.

    `bars` are the accepted bars (quarantined rows removed), `flags` the warnings (symbol, ts, rule,
    reason), `gaps` one row per gap (symbol, gap_start, gap_end, missing_bars, action fill|review) and
    `quarantined` the removed rows (canonical columns + rule + reason).
    """

    bars: pl.DataFrame
    flags: pl.DataFrame
    gaps: pl.DataFrame
    quarantined: pl.DataFrame

    @property
    def counters(self) -> dict[str, int]:
        """Counts for the stage manifest."""
        rules = self.flags["rule"]
        return {
            "gaps": self.gaps.height,
            "gap_bars_missing": int(self.gaps["missing_bars"].sum()),
            "gaps_to_fill": int((self.gaps["action"] == "fill").sum()),
            "gaps_for_review": int((self.gaps["action"] == "review").sum()),
            "unexpected_bars": int((rules == "unexpected_bar").sum())
            + int((self.quarantined["rule"] == "unexpected_bar").sum()),
            "zero_volume_rth": int((rules == "zero_volume_rth").sum())
            + int((self.quarantined["rule"] == "zero_volume_rth").sum()),
            "session_quarantined": self.quarantined.height,
        }


def empty_gaps() -> pl.DataFrame:
    """A gaps frame with no rows."""
    return pl.DataFrame(
        schema={
            "symbol": pl.String,
            "gap_start": TS_DTYPE,
            "gap_end": TS_DTYPE,
            "missing_bars": pl.Int64,
            "action": pl.String,
        }
    )


def empty_audit() -> pl.DataFrame:
    """An imputation audit frame with no rows."""
    return pl.DataFrame(
        schema={
            "symbol": pl.String,
            "ts": TS_DTYPE,
            "column": pl.String,
            "old": pl.Float64,
            "new": pl.Float64,
            "method": pl.String,
            "rule": pl.String,
        }
    )


def _step_ns(timeframe: str) -> int | None:
    """Bar length in ns for an intraday timeframe (`5min`, `1h`), None for `1d`; ValueError otherwise."""
    if timeframe == DAILY:
        return None
    m = _TIMEFRAME_RE.match(timeframe)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"unknown timeframe {timeframe!r}; expected '1d' or '<n>min' / '<n>h'")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]


@lru_cache(maxsize=8)
def _calendar(name: str, first_year: int, last_year: int):
    """An exchange_calendars calendar for whole years (cached: construction is slow)."""
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        # exchange_calendars trips pandas' own deprecation warnings on construction; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        start, end = pd.Timestamp(f"{first_year}-01-01"), pd.Timestamp(f"{last_year}-12-31")
        try:
            cls = type(xcals.get_calendar(name))
        except xcals.errors.InvalidCalendarName as exc:
            raise ValueError(f"unknown exchange calendar {name!r}") from exc
        # Some calendars record holidays for a limited span only (XBOM: 1997 to the current year);
        # the calendar covers what it can, and sessions outside it are simply not expected.
        lo, hi = cls.bound_min(), cls.bound_max()
        start = max(start, lo) if lo is not None else start
        end = min(end, hi) if hi is not None else end
        return xcals.get_calendar(name, start=start, end=end)


def _grid_arrays(
    calendar: str, timeframe: str, start: dt.date, end: dt.date, extended_hours: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected bar opens (UTC ns, ascending), their session number and regular-hours flag."""
    step = _step_ns(timeframe)
    cal = _calendar(calendar, min(CALENDAR_YEARS[0], start.year), max(CALENDAR_YEARS[1], end.year))
    sched = cal.schedule
    days = sched.index
    sched = sched[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))]
    opens = pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8
    closes = pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8
    n_sessions = len(opens)
    if step is None:
        # Daily bars are stamped with the session open (the sample vendor's convention).
        return opens, np.arange(n_sessions, dtype=np.int64), np.ones(n_sessions, dtype=bool)
    session = np.arange(n_sessions, dtype=np.int64)
    if extended_hours:
        if calendar not in EXTENDED_HOURS_CALENDARS:
            raise ValueError(
                f"extended hours are defined for US equity calendars only "
                f"({sorted(EXTENDED_HOURS_CALENDARS)}), not {calendar!r}"
            )
        local_days = pd.DatetimeIndex(sched.index).tz_localize(None) + PRE_MARKET_OPEN
        # Localizing the wall-clock 04:00 picks EST or EDT per date (DST handled by tzdata).
        starts = local_days.tz_localize(cal.tz).tz_convert("UTC").as_unit("ns").asi8
        ends = closes + pd.Timedelta(POST_MARKET_LENGTH).value
        owner = session
    else:
        # A lunch break (e.g. XHKG) splits the session in two intervals; buckets restart after it.
        brk_start = pd.DatetimeIndex(sched["break_start"]).as_unit("ns")
        brk_end = pd.DatetimeIndex(sched["break_end"]).as_unit("ns")
        has_break = ~brk_start.isna()
        starts = np.concatenate([opens, brk_end.asi8[has_break]])
        ends = np.concatenate([np.where(has_break, brk_start.asi8, closes), closes[has_break]])
        owner = np.concatenate([session, session[has_break]])
        order = np.argsort(starts, kind="stable")
        starts, ends, owner = starts[order], ends[order], owner[order]
    counts = np.maximum(-((starts - ends) // step), 0)  # ceil: a partial last bucket is still a bar
    total = int(counts.sum())
    first = np.cumsum(counts) - counts
    k = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    ts = np.repeat(starts, counts) + k * step
    seg = np.repeat(owner, counts)
    rth = (ts >= opens[seg]) & (ts < closes[seg])
    return ts, seg, rth


@lru_cache(maxsize=16)
def _grid(calendar: str, timeframe: str, start: dt.date, end: dt.date, extended_hours: bool) -> pl.DataFrame:
    """The expected grid as a frame: ts, session number, regular-hours flag (cached; frames are immutable)."""
    ts, seg, rth = _grid_arrays(calendar, timeframe, start, end, extended_hours)
    return pl.DataFrame(
        {
            "ts": pl.Series("ts", ts, dtype=pl.Int64).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"),
            _SEG: pl.Series(_SEG, seg, dtype=pl.Int64),
            _RTH: pl.Series(_RTH, rth, dtype=pl.Boolean),
        }
    )


def expected_timestamps(
    calendar: str, timeframe: str, start: dt.date, end: dt.date, extended_hours: bool = False
) -> pl.Series:
    """Bar-open times (Datetime ns UTC, ascending) expected for the sessions `start <= date <= end`.

    `1d`: each session's open (09:30 ET on XNYS). Intraday (`1min`, `5min`, `1h`, any `<n>min` /
    `<n>h`): buckets from the open up to the close; the last one may be partial and is still expected;
    early closes are respected. `extended_hours` (intraday, US calendars only) widens each session
    day to 04:00 ET .. close + 4 h (20:00 ET; 17:00 ET on early-close days). Holidays have no bars.
    Raises ValueError for an unknown calendar or timeframe.
    """
    return _grid(calendar, timeframe, start, end, extended_hours and timeframe != DAILY)["ts"]


def _policy(rule: WarnRule) -> str:
    """A gap cannot be moved out of the data, so quarantine acts as warn."""
    return "warn" if rule.policy == "quarantine" else rule.policy


def _fmt_ts_expr(col: str, daily: bool) -> pl.Expr:
    return pl.col(col).dt.strftime("%Y-%m-%d" if daily else "%H:%M")


def _find_gaps(on_grid: pl.DataFrame, grid: pl.DataFrame, daily: bool, rules: SessionRules) -> pl.DataFrame:
    """Gaps from consecutive on-grid bars of each symbol (symbol, grid idx; sorted by symbol, idx)."""
    runs = on_grid.with_columns(
        __prev=pl.col(_IDX).shift(1), __same=pl.col("symbol") == pl.col("symbol").shift(1)
    ).filter(pl.col("__same") & (pl.col(_IDX) - pl.col("__prev") > 1))
    if runs.height == 0:
        return empty_gaps()
    # Only the missing positions are materialized: work is proportional to bars + missing bars.
    missing = runs.select("symbol", pl.int_ranges(pl.col("__prev") + 1, pl.col(_IDX)).alias(_IDX)).explode(
        _IDX
    )
    idx = missing[_IDX]
    missing = missing.with_columns(ts=grid["ts"].gather(idx), seg=grid[_SEG].gather(idx))
    # A gap never spans two sessions intraday (the overnight break is not missing data); daily gaps
    # are runs of missing sessions.
    new_gap = (
        (pl.col("symbol") != pl.col("symbol").shift(1))
        | (pl.col(_IDX) != pl.col(_IDX).shift(1) + 1)
        | (pl.lit(not daily) & (pl.col("seg") != pl.col("seg").shift(1)))
    ).fill_null(True)
    gaps = (
        missing.with_columns(__gap=new_gap.cum_sum())
        .group_by("__gap", maintain_order=True)
        .agg(
            pl.col("symbol").first(),
            pl.col("ts").first().alias("gap_start"),
            pl.col("ts").last().alias("gap_end"),
            pl.len().cast(pl.Int64).alias("missing_bars"),
        )
    )
    fill = (pl.col("missing_bars") < rules.max_fill_bars) & pl.lit(rules.repair)
    return gaps.select(
        "symbol",
        "gap_start",
        "gap_end",
        "missing_bars",
        pl.when(fill).then(pl.lit("fill")).otherwise(pl.lit("review")).alias("action"),
    )


def _gap_flags(gaps: pl.DataFrame, daily: bool) -> pl.DataFrame:
    """One flag per gap at its first missing bar, e.g. '3 bars missing 14:31–14:33 UTC (filled)'."""
    bars_word = pl.when(pl.col("missing_bars") == 1).then(pl.lit("bar")).otherwise(pl.lit("bars"))
    span = (
        pl.when(pl.col("missing_bars") == 1)
        .then(_fmt_ts_expr("gap_start", daily))
        .otherwise(
            pl.concat_str(_fmt_ts_expr("gap_start", daily), pl.lit("–"), _fmt_ts_expr("gap_end", daily))
        )
    )
    what = pl.when(pl.col("action") == "fill").then(pl.lit("filled")).otherwise(pl.lit("tagged for review"))
    reason = pl.format(
        "{} {} missing {}{} ({})",
        pl.col("missing_bars"),
        bars_word,
        span,
        pl.lit("" if daily else " UTC"),
        what,
    )
    return gaps.select(
        "symbol", pl.col("gap_start").alias("ts"), pl.lit("gap").alias("rule"), reason.alias("reason")
    )


def check_sessions(
    bars: pl.DataFrame, timeframe: str, rules: SessionRules, zero_volume: WarnRule, source: str = "bars"
) -> SessionOutcome:
    """Compare validated bars of one timeframe (sorted by symbol, ts; unique) with the calendar grid.

    Rules `gap`, `unexpected_bar` and `zero_volume_rth` (see the module docstring) follow their
    policies: warn → `flags`; quarantine → the row moves to `quarantined` (for `gap`: acts as warn);
    fail → raises ValidationFailed naming the rule, count and examples. Per symbol, gaps are looked
    for between its first and last *expected* bar among the accepted bars, so a stray unexpected bar
    never opens a gap and a quarantined row leaves a gap the repair can fill. With `rules.enabled`
    False the bars come back unchanged and nothing is flagged.
    """
    quarantine_schema = {**bars.schema, "rule": pl.String, "reason": pl.String}
    if not rules.enabled or bars.height == 0:
        return SessionOutcome(bars, empty_flags(), empty_gaps(), pl.DataFrame(schema=quarantine_schema))
    other = bars.filter(pl.col("timeframe") != timeframe)
    if other.height:
        raise ValueError(
            f"{source}: check_sessions({timeframe!r}) got bars of timeframe {other['timeframe'][0]!r}"
        )
    daily = timeframe == DAILY
    extended = rules.extended_hours and not daily
    # UTC dates ±1 day cover every session a bar can belong to (extended hours end past midnight UTC).
    ts_range = bars.select(pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi")).row(0)
    lo, hi = ts_range[0].date() - dt.timedelta(days=1), ts_range[1].date() + dt.timedelta(days=1)
    grid = (
        _grid(rules.calendar, timeframe, lo, hi, extended)
        .with_row_index(_IDX)
        .with_columns(pl.col(_IDX).cast(pl.Int64))
    )
    tagged = bars.join(grid, on="ts", how="left", maintain_order="left")

    local = pl.col("ts").dt.convert_time_zone(str(_calendar_tz(rules.calendar)))
    checks = [
        Check(
            "unexpected_bar",
            rules.unexpected_bar.policy,
            pl.col(_IDX).is_null(),
            pl.format(
                "{} UTC ({} local) is not an expected {} {} bar open",
                pl.col("ts").dt.strftime("%Y-%m-%d %H:%M"),
                local.dt.strftime("%a %H:%M"),
                pl.lit(rules.calendar),
                pl.lit(timeframe),
            ),
        )
    ]
    if not daily:
        # Imputed rows have volume 0 by construction; flagging them again would be noise.
        checks.append(
            Check(
                "zero_volume_rth",
                zero_volume.policy,
                (pl.col("volume") == 0) & pl.col(_RTH) & ~pl.col("imputed"),
                pl.lit("zero volume in regular trading hours"),
            )
        )
    outcome = run_checks(tagged, checks, source)
    accepted = outcome.accepted
    quarantined = outcome.quarantined.select([*bars.columns, "rule", "reason"])

    on_grid = accepted.filter(pl.col(_IDX).is_not_null()).select("symbol", _IDX).sort("symbol", _IDX)
    gaps = _find_gaps(on_grid, grid, daily, rules)
    gap_flags = _gap_flags(gaps, daily)
    if _policy(rules.gap) == "fail" and gaps.height:
        examples = "; ".join(
            f"{r['symbol']} {r['ts']:%Y-%m-%d %H:%M}: {r['reason']}"
            for r in gap_flags.head(EXAMPLES_PER_RULE).iter_rows(named=True)
        )
        raise ValidationFailed(
            f"{source}: rule 'gap' (policy fail) failed on {gaps.height} gap(s) "
            f"({int(gaps['missing_bars'].sum())} missing bars), e.g. {examples}"
        )
    flags = pl.concat([outcome.flags, gap_flags.cast(empty_flags().schema)]).sort("symbol", "ts", "rule")
    return SessionOutcome(accepted.select(bars.columns), flags, gaps, quarantined)


def _sorted_by_symbol_ts(bars: pl.DataFrame) -> bool:
    """True when rows are ordered by (symbol, ts) with unique ts per symbol (cheap: one pass)."""
    sym, prev_sym = pl.col("symbol"), pl.col("symbol").shift(1)
    bad = (sym < prev_sym) | ((sym == prev_sym) & (pl.col("ts") <= pl.col("ts").shift(1)))
    return not bars.select(bad.any()).item()


def _calendar_tz(calendar: str):
    return _calendar(calendar, *CALENDAR_YEARS).tz


def repair_gaps(
    bars: pl.DataFrame,
    gaps: pl.DataFrame,
    timeframe: str,
    source_vendor_column_kept: bool = True,
    *,
    calendar: str = "XNYS",
    extended_hours: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fill the `fill` gaps; return (bars with imputed rows sorted by symbol, ts; audit frame).

    One bar per missing expected timestamp (the grid of `calendar`, `timeframe`, `extended_hours` —
    pass what `check_sessions` used): open=high=low=close = close of the last real (not imputed) bar
    before the gap, volume 0, vwap and trades null, imputed True, symbol and timeframe of that bar;
    vendor of that bar when `source_vendor_column_kept`, else `IMPUTED_VENDOR`. The audit has one row
    per imputed value: symbol, ts, column (open/high/low/close/volume), old (null), new, method
    `carry_forward`, rule `gap`. `review` gaps are never filled; timestamps already present are
    skipped, so repairing twice is a no-op. A gap with no real bar before it cannot be filled and is
    skipped. Raises ValueError when a gap's size disagrees with the calendar grid.
    """
    fill = gaps.filter(pl.col("action") == "fill")
    if fill.height == 0 or bars.height == 0:
        return bars, empty_audit()
    daily = timeframe == DAILY
    lo = fill["gap_start"].min().date() - dt.timedelta(days=1)
    hi = fill["gap_end"].max().date() + dt.timedelta(days=1)
    grid_ts = _grid(calendar, timeframe, lo, hi, extended_hours and not daily)["ts"]
    fill = fill.with_columns(
        __i0=grid_ts.search_sorted(fill["gap_start"], side="left").cast(pl.Int64),
        __i1=grid_ts.search_sorted(fill["gap_end"], side="right").cast(pl.Int64),
    )
    wrong = fill.filter(pl.col("__i1") - pl.col("__i0") != pl.col("missing_bars"))
    if wrong.height:
        r = wrong.row(0, named=True)
        raise ValueError(
            f"gap {r['symbol']} {r['gap_start']}..{r['gap_end']} has {r['missing_bars']} bars but the "
            f"{calendar} {timeframe} grid has {r['__i1'] - r['__i0']} there; pass the calendar and "
            "extended_hours that check_sessions used"
        )
    wanted = fill.select(pl.col("symbol"), pl.int_ranges("__i0", "__i1").alias("__i")).explode("__i")
    wanted = wanted.select("symbol", ts=grid_ts.gather(wanted["__i"])).sort("symbol", "ts")
    if not _sorted_by_symbol_ts(bars):
        bars = bars.sort("symbol", "ts")
    # The bar at or before each wanted ts (any bar): an exact match means it is already there (a
    # second repair is a no-op); otherwise its position is where the new row is merged in.
    at = bars.select(
        "symbol", pl.col("ts").alias("__bts"), pl.int_range(pl.len(), dtype=pl.Int64).alias("__pos")
    )
    wanted = wanted.join_asof(
        at, left_on="ts", right_on="__bts", by="symbol", strategy="backward", check_sortedness=False
    ).filter(pl.col("__bts").is_null() | (pl.col("__bts") != pl.col("ts")))
    if wanted.height == 0:
        return bars, empty_audit()
    real = bars.filter(~pl.col("imputed")).select("symbol", "ts", "close", "vendor", "timeframe")
    # Both sides are sorted by ts within each symbol, which is what the by-symbol asof join needs.
    filled = wanted.join_asof(real, on="ts", by="symbol", strategy="backward", check_sortedness=False)
    filled = filled.filter(pl.col("close").is_not_null())
    vendor = pl.col("vendor") if source_vendor_column_kept else pl.lit(IMPUTED_VENDOR)
    new_rows = filled.select(
        "symbol",
        "ts",
        "timeframe",
        *[pl.col("close").alias(c) for c in ("open", "high", "low", "close")],
        pl.lit(0.0).alias("volume"),
        pl.lit(None, pl.Float64).alias("vwap"),
        pl.lit(None, pl.Int64).alias("trades"),
        vendor.alias("vendor"),
        pl.lit(True).alias("imputed"),
    )
    new_rows = new_rows.select(bars.columns).cast(bars.schema)
    # Merge instead of re-sorting millions of rows: new row j (in (symbol, ts) order, after bar p_j)
    # lands at p_j + 1 + j; bar i moves down by the number of new rows inserted before it.
    after = filled["__pos"].to_numpy()
    n, m = bars.height, new_rows.height
    order = np.empty(n + m, dtype=np.int64)
    order[np.arange(n) + np.searchsorted(after, np.arange(n), side="left")] = np.arange(n)
    order[after + 1 + np.arange(m)] = n + np.arange(m)
    repaired = pl.concat([bars, new_rows], rechunk=True).gather(pl.Series(order))
    audit = (
        new_rows.select("symbol", "ts", *AUDIT_COLUMNS)
        .unpivot(on=list(AUDIT_COLUMNS), index=["symbol", "ts"], variable_name="column", value_name="new")
        .with_columns(
            __pos=pl.col("column").replace_strict(list(AUDIT_COLUMNS), list(range(len(AUDIT_COLUMNS))))
        )
        .sort("symbol", "ts", "__pos")
        .select(
            "symbol",
            "ts",
            "column",
            pl.lit(None, pl.Float64).alias("old"),
            pl.col("new").cast(pl.Float64),
            pl.lit(REPAIR_METHOD).alias("method"),
            pl.lit("gap").alias("rule"),
        )
    )
    return repaired, audit.cast(empty_audit().schema)
