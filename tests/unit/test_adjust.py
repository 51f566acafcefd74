"""Split/dividend adjustment (quanto.data.adjust) against hand-worked cases and a plain-Python oracle."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from quanto.data.adjust import (
    SKIP_BAD_CASH,
    SKIP_BAD_RATIO,
    SKIP_CASH_GE_CLOSE,
    SKIP_CONFLICT,
    SKIP_NO_CLOSE,
    SKIP_UNKNOWN_KIND,
    adjust_bars,
    adjustment_factors,
)
from quanto.data.schemas import BAR_SCHEMA, CORPORATE_ACTION_SCHEMA, conform, polars_schema
from quanto.errors import InputError

NY = ZoneInfo("America/New_York")
UTC = dt.UTC


def make_bars(rows: list[tuple[str, dt.datetime, float]], volume: float = 1000.0) -> pl.DataFrame:
    """BAR_SCHEMA bars from (symbol, ts, close); open/high/low/vwap = close, trades = 7."""
    n = len(rows)
    closes = [r[2] for r in rows]
    return conform(
        pl.DataFrame(
            {
                "symbol": [r[0] for r in rows],
                "ts": pl.Series([r[1] for r in rows], dtype=pl.Datetime("ns", "UTC")),
                "timeframe": ["1min"] * n,
                "open": closes,
                "high": closes,
                "low": closes,
                "close": closes,
                "volume": [volume] * n,
                "vwap": closes,
                "trades": pl.Series([7] * n, dtype=pl.Int64),
                "vendor": ["test"] * n,
                "imputed": [False] * n,
            }
        ),
        BAR_SCHEMA,
        "test bars",
    )


def make_actions(rows: list[tuple]) -> pl.DataFrame:
    """CORPORATE_ACTION_SCHEMA frame from (symbol, ex_date, kind, ratio, cash[, vendor]) tuples."""
    cols = CORPORATE_ACTION_SCHEMA.names
    data = [(*r, "v1") if len(r) == 5 else r for r in rows]
    return conform(
        pl.DataFrame(data, schema=polars_schema(CORPORATE_ACTION_SCHEMA), orient="row")
        if data
        else pl.DataFrame(schema=polars_schema(CORPORATE_ACTION_SCHEMA)),
        CORPORATE_ACTION_SCHEMA,
        "test actions",
    ).select(cols)


def daily(symbol: str, start: dt.date, closes: list[float]) -> list[tuple[str, dt.datetime, float]]:
    """One bar a calendar day at 16:00 UTC (11:00/12:00 New York, the same date in both zones)."""
    return [
        (symbol, dt.datetime.combine(start + dt.timedelta(days=i), dt.time(16), UTC), c)
        for i, c in enumerate(closes)
    ]


# --- plain-Python oracle -------------------------------------------------------------------------


def _finite_pos(x: float | None, allow_zero: bool = False) -> bool:
    return x is not None and math.isfinite(x) and (x >= 0 if allow_zero else x > 0)


def oracle(bars: pl.DataFrame, actions: pl.DataFrame, mode: str, tz: str):
    """Factors [(price, volume)] per bar and skipped [(action tuple..., reason)], by explicit loops."""
    zone = ZoneInfo(tz)
    brows = bars.select("symbol", "ts", "close").rows()
    dates = [ts.astimezone(zone).date() for _, ts, _ in brows]
    span: dict[str, tuple[dt.date, dt.date]] = {}
    for (sym, _, _), d in zip(brows, dates, strict=True):
        lo, hi = span.get(sym, (d, d))
        span[sym] = (min(lo, d), max(hi, d))

    groups: dict[tuple, list[tuple]] = {}
    for arow in actions.rows():
        sym, ex, kind, ratio, cash, vendor = arow
        if sym not in span or (mode == "split" and kind == "dividend"):
            continue
        if not span[sym][0] < ex <= span[sym][1]:
            continue
        groups.setdefault((sym, ex, kind, vendor), []).append(arow)

    applied: list[tuple[str, dt.date, float, float]] = []
    skipped: list[tuple] = []
    for (sym, ex, kind, _), rows in groups.items():
        if len({(r[3], r[4]) for r in rows}) > 1:
            skipped += [(*r, SKIP_CONFLICT) for r in rows]
            continue
        row = rows[0]
        ratio, cash = row[3], row[4]
        if kind == "split":
            if _finite_pos(ratio):
                applied.append((sym, ex, 1.0 / ratio, ratio))
            else:
                skipped.append((*row, SKIP_BAD_RATIO))
        elif kind == "dividend":
            if not _finite_pos(cash, allow_zero=True):
                skipped.append((*row, SKIP_BAD_CASH))
                continue
            before = [
                (ts, i, close)
                for i, ((s, ts, close), d) in enumerate(zip(brows, dates, strict=True))
                if s == sym and d < ex
            ]
            prev_close = max(before)[2]
            if not _finite_pos(prev_close):
                skipped.append((*row, SKIP_NO_CLOSE))
            elif cash >= prev_close:
                skipped.append((*row, SKIP_CASH_GE_CLOSE))
            else:
                applied.append((sym, ex, 1.0 - cash / prev_close, 1.0))
        else:
            skipped.append((*row, SKIP_UNKNOWN_KIND))

    factors = []
    for (sym, _, _), d in zip(brows, dates, strict=True):
        pf = vf = 1.0
        for s, ex, p, v in applied:
            if s == sym and d < ex:
                pf *= p
                vf *= v
        factors.append((pf, vf))
    return factors, skipped


BASE = dt.datetime(2024, 3, 8, tzinfo=UTC)  # the window spans the 2024-03-10 DST change in New York

bar_st = st.tuples(
    st.sampled_from(["A", "B"]),
    st.integers(0, 6 * 24 * 4 - 1).map(lambda q: BASE + dt.timedelta(minutes=15 * q)),
    st.one_of(st.sampled_from([1.0, 2.0, 10.0, 50.0]), st.floats(0.5, 200.0), st.just(math.nan)),
)
action_st = st.tuples(
    st.sampled_from(["A", "B", "C"]),
    st.integers(0, 7).map(lambda k: BASE.date() + dt.timedelta(days=k)),
    st.sampled_from(["split", "dividend", "dividend", "merger"]),
    st.sampled_from([None, 0.0, 0.5, 2.0, 3.0]),
    st.sampled_from([None, -1.0, 0.0, 0.5, 5.0, 150.0]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bar_rows=st.lists(bar_st, min_size=0, max_size=30),
    action_rows=st.lists(action_st, min_size=0, max_size=10),
    dup=st.lists(st.integers(0, 9), max_size=3),
    mode=st.sampled_from(["split", "all"]),
    tz=st.sampled_from(["America/New_York", "UTC", "Asia/Kolkata"]),
)
def test_factors_match_plain_python_oracle(bar_rows, action_rows, dup, mode, tz):
    action_rows = action_rows + [action_rows[i] for i in dup if i < len(action_rows)]  # exact duplicates
    bars, actions = make_bars(bar_rows), make_actions(action_rows)

    got = adjustment_factors(bars, actions, mode, tz)
    want_factors, want_skipped = oracle(bars, actions, mode, tz)

    assert got.factors["symbol"].to_list() == bars["symbol"].to_list()
    assert got.factors["ts"].to_list() == bars["ts"].to_list()
    got_pairs = list(zip(got.factors["price_factor"], got.factors["volume_factor"], strict=True))
    assert len(got_pairs) == len(want_factors)
    for (gp, gv), (wp, wv) in zip(got_pairs, want_factors, strict=True):
        assert gp == pytest.approx(wp, rel=1e-12)
        assert gv == pytest.approx(wv, rel=1e-12)
    assert sorted(got.skipped.rows(), key=repr) == sorted(want_skipped, key=repr)


# --- hand-worked cases ---------------------------------------------------------------------------


def test_two_for_one_split_makes_the_split_day_continuous():
    start = dt.date(2024, 5, 1)
    closes = [100.0, 102.0, 101.0, 50.5, 51.0, 50.0]  # raw: a -50% "return" on the split day (index 3)
    bars = make_bars(daily("X", start, closes))
    actions = make_actions([("X", start + dt.timedelta(days=3), "split", 2.0, None)])

    adjusted, skipped = adjust_bars(bars, actions)

    assert skipped.height == 0
    assert adjusted["close"].to_list() == [50.0, 51.0, 50.5, 50.5, 51.0, 50.0]
    assert adjusted["open"].to_list() == adjusted["close"].to_list()
    assert adjusted["vwap"].to_list() == adjusted["close"].to_list()
    assert adjusted["volume"].to_list() == [2000.0] * 3 + [1000.0] * 3
    assert adjusted["trades"].to_list() == [7] * 6
    raw_returns = bars["close"].pct_change().drop_nulls()
    adj_returns = adjusted["close"].pct_change().drop_nulls()
    assert raw_returns.min() == pytest.approx(-0.5)
    assert adj_returns.abs().max() < 0.03  # no jump left


def test_dividend_factor_is_one_minus_cash_over_previous_close():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [39.0, 40.0, 39.6, 39.8]))
    ex = start + dt.timedelta(days=2)
    actions = make_actions([("X", ex, "dividend", None, 0.5)])

    factors = adjustment_factors(bars, actions, "all").factors

    f = 1.0 - 0.5 / 40.0  # C_prev = close of the last bar before the ex_date, not the first bar
    assert factors["price_factor"].to_list() == pytest.approx([f, f, 1.0, 1.0], rel=1e-15)
    assert factors["volume_factor"].to_list() == [1.0] * 4


def test_split_and_dividend_compose_multiplicatively():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [100.0, 100.0, 50.0, 49.0, 49.0]))
    actions = make_actions(
        [
            ("X", start + dt.timedelta(days=3), "dividend", None, 1.0),  # C_prev = 50
            ("X", start + dt.timedelta(days=2), "split", 2.0, None),
        ]
    )
    factors = adjustment_factors(bars, actions, "all").factors
    d = 1.0 - 1.0 / 50.0
    assert factors["price_factor"].to_list() == pytest.approx([0.5 * d, 0.5 * d, d, 1.0, 1.0], rel=1e-15)
    assert factors["volume_factor"].to_list() == [2.0, 2.0, 1.0, 1.0, 1.0]


def test_ex_date_boundary_uses_new_york_dates_for_intraday_bars():
    ex = dt.date(2024, 3, 12)  # New York is on EDT (UTC-4) on both days

    def ny(day: int, h: int, m: int) -> dt.datetime:
        return dt.datetime(2024, 3, day, h, m, tzinfo=NY).astimezone(UTC)

    rows = [
        ("X", ny(11, 15, 59), 100.0),  # regular session, day before: adjusted
        ("X", ny(11, 20, 30), 101.0),  # after hours, day before (00:30 UTC on the ex_date): adjusted
        ("X", ny(12, 9, 30), 50.0),  # open of the ex_date: post-action
        ("X", ny(12, 15, 59), 51.0),
    ]
    assert rows[1][1].date() == ex  # the trap: in UTC this bar is already on the ex_date
    bars = make_bars(rows)

    split = make_actions([("X", ex, "split", 2.0, None)])
    assert adjustment_factors(bars, split, "split").factors["price_factor"].to_list() == [0.5, 0.5, 1.0, 1.0]
    # Reading the same instants as UTC dates moves the after-hours bar across the boundary.
    utc = adjustment_factors(bars, split, "split", tz="UTC").factors["price_factor"].to_list()
    assert utc == [0.5, 1.0, 1.0, 1.0]

    # The dividend's previous close is that of the 20:30 ET after-hours bar, the last before the ex_date.
    div = make_actions([("X", ex, "dividend", None, 1.01)])
    got = adjustment_factors(bars, div, "all").factors["price_factor"].to_list()
    assert got == pytest.approx([0.99, 0.99, 1.0, 1.0], rel=1e-15)


def test_mode_split_ignores_dividends():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [100.0, 100.0, 50.0, 50.0]))
    actions = make_actions(
        [
            ("X", start + dt.timedelta(days=1), "dividend", None, 1.0),
            ("X", start + dt.timedelta(days=2), "split", 2.0, None),
            ("X", start + dt.timedelta(days=3), "dividend", None, 1000.0),  # would be skipped in "all"
        ]
    )
    result = adjustment_factors(bars, actions, "split")
    assert result.factors["price_factor"].to_list() == [0.5, 0.5, 1.0, 1.0]
    assert result.skipped.height == 0  # excluded by the mode, not skipped

    everything = adjustment_factors(bars, actions, "all")
    assert everything.factors["price_factor"].to_list() == pytest.approx([0.495, 0.5, 1.0, 1.0], rel=1e-15)
    assert everything.skipped["reason"].to_list() == [SKIP_CASH_GE_CLOSE]


def test_dividend_with_missing_previous_close_is_skipped_and_reported():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [100.0, math.nan, 50.0, 50.0]))
    actions = make_actions(
        [
            ("X", start + dt.timedelta(days=2), "dividend", None, 0.5),  # previous close is NaN
            ("X", start + dt.timedelta(days=3), "split", 2.0, None),  # still applied
        ]
    )
    adjusted, skipped = adjust_bars(bars, actions)

    assert skipped.schema == pl.Schema({**polars_schema(CORPORATE_ACTION_SCHEMA), "reason": pl.String})
    assert skipped.rows() == [("X", start + dt.timedelta(days=2), "dividend", None, 0.5, "v1", SKIP_NO_CLOSE)]
    assert adjusted["volume"].to_list() == [2000.0, 2000.0, 2000.0, 1000.0]
    assert adjusted["close"].to_list()[0] == 50.0


def test_invalid_and_conflicting_actions_are_reported():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [10.0] * 4))
    d1, d2, d3 = (start + dt.timedelta(days=k) for k in (1, 2, 3))
    actions = make_actions(
        [
            ("X", d1, "split", 0.0, None),
            ("X", d2, "split", 2.0, None),
            ("X", d2, "split", 3.0, None),  # same key, another ratio
            ("X", d3, "dividend", None, None),
            ("X", d3, "spinoff", None, None),
        ]
    )
    result = adjustment_factors(bars, actions, "all")
    assert result.factors["price_factor"].to_list() == [1.0] * 4
    assert result.skipped["reason"].to_list() == [
        SKIP_BAD_RATIO,
        SKIP_CONFLICT,
        SKIP_CONFLICT,
        SKIP_BAD_CASH,
        SKIP_UNKNOWN_KIND,
    ]


def test_duplicates_count_once_and_irrelevant_actions_are_ignored():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [100.0, 50.0, 50.0]) + daily("Y", start, [10.0, 10.0, 10.0]))
    split = ("X", start + dt.timedelta(days=1), "split", 2.0, None)
    actions = make_actions(
        [
            split,
            split,  # the same record delivered twice
            ("NOBARS", start + dt.timedelta(days=1), "split", 2.0, None),
            ("Y", start, "split", 5.0, None),  # on the first bar's date: scales nothing
            ("Y", start + dt.timedelta(days=30), "split", 5.0, None),  # after the last bar
            ("Y", start + dt.timedelta(days=30), "dividend", None, 100.0),
        ]
    )
    result = adjustment_factors(bars, actions, "all")
    assert result.factors["price_factor"].to_list() == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert result.skipped.height == 0


def test_same_event_from_two_vendors_raises():
    start = dt.date(2024, 5, 1)
    bars = make_bars(daily("X", start, [100.0, 50.0]))
    ex = start + dt.timedelta(days=1)
    actions = make_actions(
        [("X", ex, "split", 2.0, None, "polygon"), ("X", ex, "split", 2.0, None, "alpaca")]
    )
    with pytest.raises(InputError, match="several vendors"):
        adjustment_factors(bars, actions, "all")


def test_raw_input_unchanged_and_output_is_canonical_in_input_order():
    start = dt.date(2024, 5, 1)
    rows = daily("X", start, [100.0, 100.0, 50.0]) + daily("Y", start, [20.0, 10.0, 10.0])
    bars = make_bars([rows[i] for i in (5, 0, 3, 2, 4, 1)])  # not sorted by symbol or time
    actions = make_actions(
        [
            ("X", start + dt.timedelta(days=2), "split", 2.0, None),
            ("Y", start + dt.timedelta(days=1), "split", 2.0, None),
        ]
    )
    bars_before, actions_before = bars.clone(), actions.clone()
    pandas_bars = bars.to_pandas()
    pandas_before = pandas_bars.copy()

    adjusted, _ = adjust_bars(bars, actions)
    from_pandas, _ = adjust_bars(pandas_bars, actions.to_pandas())

    assert_frame_equal(bars, bars_before)
    assert_frame_equal(actions, actions_before)
    assert pandas_bars.equals(pandas_before)
    assert adjusted.schema == polars_schema(BAR_SCHEMA)
    assert adjusted.select("symbol", "ts").equals(bars.select("symbol", "ts"))
    assert adjusted["close"].to_list() == [10.0, 50.0, 10.0, 50.0, 10.0, 50.0]
    assert_frame_equal(from_pandas, adjusted)


def test_bad_mode_and_time_zone_raise():
    bars = make_bars(daily("X", dt.date(2024, 5, 1), [1.0]))
    with pytest.raises(InputError, match="mode"):
        adjustment_factors(bars, make_actions([]), "dividends")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="time zone"):
        adjustment_factors(bars, make_actions([]), "all", tz="Mars/Olympus")
