"""Fundamental features: hand-computed ratios, point-in-time visibility, restatements, missing quarters.

The example: two symbols, six quarters (2022Q1..2023Q2). A files 40 days after each quarter end at
21:00 UTC with steadily growing numbers; B files 30 days after at 13:00 UTC, has a loss quarter, no
ebitda for 2022Q2, zero interest expense, and restates 2022Q4 net income on 2023-06-15.
"""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import polars as pl
import pytest

from quanto.data.schemas import SchemaError
from quanto.features.fundamental import FEATURES, FIELDS, fundamental_features

UTC = dt.UTC
PERIOD_ENDS = [
    dt.date(2022, 3, 31),
    dt.date(2022, 6, 30),
    dt.date(2022, 9, 30),
    dt.date(2022, 12, 31),
    dt.date(2023, 3, 31),
    dt.date(2023, 6, 30),
]
QUARTERS = ["2022Q1", "2022Q2", "2022Q3", "2022Q4", "2023Q1", "2023Q2"]


def a_filed(k: int) -> dt.datetime:
    d = PERIOD_ENDS[k] + dt.timedelta(days=40)
    return dt.datetime(d.year, d.month, d.day, 21, tzinfo=UTC)


def b_filed(k: int) -> dt.datetime:
    d = PERIOD_ENDS[k] + dt.timedelta(days=30)
    return dt.datetime(d.year, d.month, d.day, 13, tzinfo=UTC)


B_RESTATED_AT = dt.datetime(2023, 6, 15, 13, tzinfo=UTC)


def a_values(k: int) -> dict[str, float]:
    return {
        "revenue": 100 + 10 * k,
        "gross_profit": 40 + 4 * k,
        "ebitda": 30 + 2 * k,
        "operating_income": 20 + 2 * k,
        "net_income": 10 + k,
        "interest_expense": 2,
        "total_assets": 1000,
        "total_equity": 400 + 10 * k,
        "total_debt": 300,
        "cash": 100,
        "current_assets": 500,
        "current_liabilities": 250,
        "inventory": 50,
        "shares_outstanding": 10,
    }


B_NET_INCOME = [-20, 5, 5, 5, 10, 10]


def b_values(k: int) -> dict[str, float]:
    values = {
        "revenue": 200,
        "gross_profit": 80,
        "ebitda": 20,
        "operating_income": 15,
        "net_income": B_NET_INCOME[k],
        "interest_expense": 0,  # zero denominator for interest coverage
        "total_assets": 300,
        "total_equity": 100,
        "total_debt": 50,
        "cash": 30,
        "current_assets": 80,
        "current_liabilities": 40,
        "inventory": 0,
        "shares_outstanding": 20,
    }
    if k == 1:
        del values["ebitda"]  # a missing quarter for one field
    return values


def statements(rows: list[tuple]) -> pl.DataFrame:
    """Rows of (symbol, period_end, filed_at, fiscal_period, field, value)."""
    return pl.DataFrame(
        [(*r, "test") for r in rows],
        schema={
            "symbol": pl.String,
            "period_end": pl.Date,
            "filed_at": pl.Datetime("ns", "UTC"),
            "fiscal_period": pl.String,
            "field": pl.String,
            "value": pl.Float64,
            "vendor": pl.String,
        },
        orient="row",
    )


def example_rows() -> list[tuple]:
    rows = []
    for k in range(6):
        for sym, filed, values in (("A", a_filed(k), a_values(k)), ("B", b_filed(k), b_values(k))):
            rows += [(sym, PERIOD_ENDS[k], filed, QUARTERS[k], f, float(v)) for f, v in values.items()]
    rows.append(("B", PERIOD_ENDS[3], B_RESTATED_AT, "2022Q4", "net_income", 25.0))
    # An annual row must not enter TTM (it would double count 2022 if it did).
    rows.append(("A", PERIOD_ENDS[3], a_filed(3), "FY2022", "net_income", 46.0))
    return rows


def bars(points: list[tuple[str, dt.datetime, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        points,
        schema={"symbol": pl.String, "ts": pl.Datetime("ns", "UTC"), "close": pl.Float64},
        orient="row",
    )


def at(out: pl.DataFrame, symbol: str, ts: dt.datetime) -> dict[str, float]:
    row = out.filter((pl.col("symbol") == symbol) & (pl.col("ts") == ts))
    assert row.height == 1
    return row.row(0, named=True)


def assert_features(got: dict[str, float], expected: dict[str, float]) -> None:
    """Every feature: the expected value, or NaN when not listed."""
    for f in FEATURES:
        want = expected.get(f, math.nan)
        if math.isnan(want):
            assert math.isnan(got[f]), (f, got[f])
        else:
            assert got[f] == pytest.approx(want, rel=1e-12), f


def daily_bars(symbols=("A", "B")) -> pl.DataFrame:
    """Two bars a day (14:00 and 21:00 UTC, so some coincide with filings) over the whole example."""
    points = []
    day = dt.date(2022, 4, 1)
    i = 0
    while day <= dt.date(2023, 9, 30):
        for hour in (14, 21):
            for s in symbols:
                points.append((s, dt.datetime(day.year, day.month, day.day, hour, tzinfo=UTC), 40 + i % 7))
            i += 1
        day += dt.timedelta(days=1)
    return bars(points)


def nan_equal(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    return a.fill_nan(-12345.0).equals(b.fill_nan(-12345.0))


# --- hand-computed values ---------------------------------------------------------------------


def test_symbol_a_by_hand_before_and_after_the_2022q4_filing():
    filed = a_filed(3)  # 2023-02-09 21:00 UTC
    before, exact, after = filed - dt.timedelta(hours=1), filed, filed + dt.timedelta(days=1)
    out = fundamental_features(
        bars([("A", t, 46.0) for t in (before, exact, after)]), statements(example_rows())
    )
    assert out.columns == ["symbol", "ts", *FEATURES]

    # Before: quarters 2022Q1..Q3 visible, so no TTM; stocks from 2022Q3 (equity 420).
    assert_features(
        at(out, "A", before),
        {
            "pb": 46 * 10 / 420,
            "revenue_qoq": (120 - 110) / 110,
            "net_income_qoq": (12 - 11) / 11,
            "current_ratio": 500 / 250,
            "quick_ratio": (500 - 50) / 250,
            "debt_to_equity": 300 / 420,
        },
    )
    # From the filing instant on: TTM over 2022Q1..Q4. Net income 10+11+12+13 = 46, EPS 4.6.
    full = {
        "pe": 46 / 4.6,
        "pb": 46 * 10 / 430,
        "ev_ebitda": (46 * 10 + 300 - 100) / (30 + 32 + 34 + 36),
        "roe": 46 / 430,
        "roa": 46 / 1000,
        "gross_margin": (40 + 44 + 48 + 52) / 460,
        "operating_margin": (20 + 22 + 24 + 26) / 460,
        "net_margin": 46 / 460,
        "revenue_qoq": (130 - 120) / 120,
        "net_income_qoq": (13 - 12) / 12,
        "current_ratio": 2.0,
        "quick_ratio": 1.8,
        "debt_to_equity": 300 / 430,
        "interest_coverage": (20 + 22 + 24 + 26) / 8,
    }
    assert_features(at(out, "A", exact), full)  # filed_at == ts is visible
    assert_features(at(out, "A", after), full)


def test_symbol_a_year_over_year_after_the_fifth_quarter():
    before, after = a_filed(4) - dt.timedelta(minutes=1), a_filed(4) + dt.timedelta(hours=1)
    out = fundamental_features(bars([("A", before, 50.0), ("A", after, 50.0)]), statements(example_rows()))
    assert math.isnan(at(out, "A", before)["revenue_yoy"])
    got = at(out, "A", after)
    assert got["revenue_yoy"] == pytest.approx((140 - 100) / 100)
    assert got["net_income_yoy"] == pytest.approx((14 - 10) / 10)
    assert got["revenue_qoq"] == pytest.approx((140 - 130) / 130)
    assert got["pe"] == pytest.approx(50 / ((11 + 12 + 13 + 14) / 10))  # TTM now 2022Q2..2023Q1
    assert got["roe"] == pytest.approx(50 / 440)


def test_symbol_b_negative_earnings_zero_interest_and_missing_ebitda_quarter():
    t = b_filed(3) + dt.timedelta(hours=1)  # 2022Q1..Q4 visible: TTM net income -20+5+5+5 = -5
    out = fundamental_features(bars([("B", t, 10.0)]), statements(example_rows()))
    assert_features(
        at(out, "B", t),
        {
            # pe NaN: negative TTM EPS; ev_ebitda NaN: 2022Q2 ebitda is missing;
            # interest_coverage NaN: TTM interest expense is 0.
            "pb": 10 * 20 / 100,
            "roe": -5 / 100,
            "roa": -5 / 300,
            "gross_margin": 320 / 800,
            "operating_margin": 60 / 800,
            "net_margin": -5 / 800,
            "revenue_qoq": 0.0,
            "net_income_qoq": 0.0,
            "current_ratio": 2.0,
            "quick_ratio": 2.0,
            "debt_to_equity": 0.5,
        },
    )


def test_missing_quarter_makes_ttm_nan_until_it_rolls_out_of_the_window():
    times = [b_filed(k) + dt.timedelta(hours=1) for k in (3, 4, 5)]
    out = fundamental_features(bars([("B", t, 10.0) for t in times]), statements(example_rows()))
    # Windows Q1..Q4 and Q2..Q5 contain the missing 2022Q2 ebitda; Q3..Q6 does not.
    assert math.isnan(at(out, "B", times[0])["ev_ebitda"])
    assert math.isnan(at(out, "B", times[1])["ev_ebitda"])
    assert at(out, "B", times[2])["ev_ebitda"] == pytest.approx((10 * 20 + 50 - 30) / 80)
    # The other TTM fields are complete throughout.
    assert not math.isnan(at(out, "B", times[1])["gross_margin"])


def test_gap_in_the_quarter_sequence_is_not_bridged():
    rows = [r for r in example_rows() if r[0] == "A" and r[3] != "2022Q3"]
    t = a_filed(4) + dt.timedelta(hours=1)  # visible: Q1, Q2, Q4, 2023Q1 — four quarters, not consecutive
    got = at(fundamental_features(bars([("A", t, 50.0)]), statements(rows)), "A", t)
    for f in ("pe", "ev_ebitda", "roe", "roa", "gross_margin", "net_margin", "interest_coverage"):
        assert math.isnan(got[f]), f
    assert got["revenue_yoy"] == pytest.approx(0.4)  # same quarter a year earlier is still there


# --- point in time --------------------------------------------------------------------------


def test_restatement_changes_values_only_from_its_filing_time_on():
    before = B_RESTATED_AT - dt.timedelta(seconds=1)
    after = B_RESTATED_AT
    out = fundamental_features(bars([("B", before, 10.0), ("B", after, 10.0)]), statements(example_rows()))
    # TTM 2022Q2..2023Q1 net income: 5+5+5+10 = 25 before, 5+5+25+10 = 45 after the restatement.
    assert at(out, "B", before)["pe"] == pytest.approx(10 / (25 / 20))
    assert at(out, "B", after)["pe"] == pytest.approx(10 / (45 / 20))
    assert at(out, "B", after)["roe"] == pytest.approx(45 / 100)

    # Whole series: identical to the run without the restatement up to the filing, different after.
    unrestated = [r for r in example_rows() if r[2] != B_RESTATED_AT]
    daily = daily_bars(("B",))
    with_r = fundamental_features(daily, statements(example_rows()))
    without = fundamental_features(daily, statements(unrestated))
    early = pl.col("ts") < B_RESTATED_AT
    assert nan_equal(with_r.filter(early), without.filter(early))
    assert not nan_equal(with_r.filter(~early), without.filter(~early))


FILING_TIMES = sorted({r[2] for r in example_rows()})


def _cuts() -> list[dt.datetime]:
    """Bar times spread over the example, plus every filing instant (the tightest cuts)."""
    ts = daily_bars()["ts"].sort()
    return [ts[i] for i in range(0, ts.len(), 97)] + FILING_TIMES


@pytest.mark.parametrize("cut", _cuts(), ids=lambda c: c.isoformat())
def test_no_lookahead_statements_filed_after_a_cut_never_change_earlier_values(cut):
    daily = pl.concat([daily_bars(), bars([(s, cut, 50.0) for s in ("A", "B")])])
    base = statements(example_rows())
    later = pl.col("filed_at") > cut
    # Change every later statement, and add a later filing that revises old quarters.
    changed = pl.concat(
        [
            base.with_columns(value=pl.when(later).then(pl.col("value") * 3 - 7).otherwise(pl.col("value"))),
            base.filter(pl.col("period_end") <= cut.date()).with_columns(
                filed_at=pl.lit(cut + dt.timedelta(seconds=1)).cast(pl.Datetime("ns", "UTC")),
                value=pl.col("value") + 1000,
            ),
        ]
    )
    upto = pl.col("ts") <= cut
    assert nan_equal(
        fundamental_features(daily, base).filter(upto), fundamental_features(daily, changed).filter(upto)
    )
    # Removing them altogether must not matter either.
    dropped = base.filter(~later)
    assert nan_equal(
        fundamental_features(daily, base).filter(upto), fundamental_features(daily, dropped).filter(upto)
    )


def test_nothing_visible_before_the_first_filing_and_no_infinities():
    daily = daily_bars()
    out = fundamental_features(daily, statements(example_rows()))
    assert out.height == daily.height
    first_a = a_filed(0)
    early = out.filter((pl.col("symbol") == "A") & (pl.col("ts") < first_a))
    assert early.height > 0
    assert all(early[f].is_nan().all() for f in FEATURES)
    for f in FEATURES:
        assert out[f].dtype == pl.Float64
        assert out[f].null_count() == 0
        assert not out[f].is_infinite().any(), f


def test_per_symbol_independence():
    daily = daily_bars()
    both = fundamental_features(daily, statements(example_rows()))
    for sym in ("A", "B"):
        alone = fundamental_features(
            daily.filter(pl.col("symbol") == sym),
            statements([r for r in example_rows() if r[0] == sym]),
        )
        assert nan_equal(both.filter(pl.col("symbol") == sym), alone)
    # A symbol with bars but no statements gets NaN features and does not disturb the others.
    extra = pl.concat([daily, daily.filter(pl.col("symbol") == "A").with_columns(symbol=pl.lit("C"))])
    out = fundamental_features(extra, statements(example_rows()))
    assert nan_equal(out.filter(pl.col("symbol") != "C"), both)
    assert all(out.filter(pl.col("symbol") == "C")[f].is_nan().all() for f in FEATURES)


# --- input handling -------------------------------------------------------------------------


def test_output_keeps_input_row_order_and_accepts_pandas():
    t1, t2 = a_filed(3) + dt.timedelta(days=1), a_filed(3) - dt.timedelta(days=1)
    pts = [("B", t1, 10.0), ("A", t1, 46.0), ("A", t2, 46.0)]
    out = fundamental_features(bars(pts).to_pandas(), statements(example_rows()).to_pandas())
    assert list(zip(out["symbol"], out["ts"], strict=True)) == [(s, t) for s, t, _ in pts]
    assert out.row(1, named=True)["pe"] == pytest.approx(10.0)


def test_unknown_fields_and_annual_rows_are_ignored():
    rows = example_rows() + [
        ("A", PERIOD_ENDS[3], a_filed(3), "2022Q4", "goodwill", 1e9),
        ("A", PERIOD_ENDS[3], a_filed(3), "FY2022", "revenue", 460.0),
    ]
    daily = daily_bars(("A",))
    assert nan_equal(
        fundamental_features(daily, statements(rows)), fundamental_features(daily, statements(example_rows()))
    )
    assert "goodwill" not in FIELDS


def test_bad_inputs_raise_schema_errors():
    with pytest.raises(SchemaError, match="close"):
        fundamental_features(bars([("A", a_filed(0), 1.0)]).drop("close"), statements(example_rows()))
    naive = pl.DataFrame({"symbol": ["A"], "ts": [dt.datetime(2023, 1, 1)], "close": [1.0]})
    with pytest.raises(SchemaError, match="UTC"):
        fundamental_features(naive, statements(example_rows()))
    with pytest.raises(SchemaError, match="filed_at"):
        fundamental_features(bars([("A", a_filed(0), 1.0)]), statements(example_rows()).drop("filed_at"))


def test_empty_statements_give_all_nan():
    daily = daily_bars(("A",))
    out = fundamental_features(daily, statements([]))
    assert out.height == daily.height and all(out[f].is_nan().all() for f in FEATURES)


def test_pandas_frame_type_is_accepted_for_bars_with_extra_columns():
    frame = pd.DataFrame(
        {"symbol": ["A"], "ts": pd.to_datetime([a_filed(3)], utc=True), "close": [46.0], "volume": [1.0]}
    )
    out = fundamental_features(frame, statements(example_rows()))
    assert out["pe"][0] == pytest.approx(10.0)
