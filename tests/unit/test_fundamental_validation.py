"""Fundamentals validation: filing after period end, conflicting duplicates, restatements kept."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quanto.config.models import FundamentalRules
from quanto.data.schemas import FUNDAMENTAL_SCHEMA, SchemaError
from quanto.validation.checks import ValidationFailed
from quanto.validation.fundamentals import rule_policies, validate_fundamentals

Q4 = dt.date(2023, 12, 31)


def filed(day: dt.date, hour: int = 21) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)


FEB1 = filed(dt.date(2024, 2, 1))
MAY1 = filed(dt.date(2024, 5, 1))


def fundamentals(rows: list[tuple]) -> pl.DataFrame:
    """Rows of (symbol, period_end, filed_at, fiscal_period, field, value[, vendor])."""
    return pl.DataFrame(
        [(*r, "test") if len(r) == 6 else r for r in rows],
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


def rules(**policies: str) -> FundamentalRules:
    return FundamentalRules(**{rule: {"policy": p} for rule, p in policies.items()})


def assert_conserved(out, rows_in: int) -> None:
    c = out.counters
    assert c["rows_in"] == rows_in == c["accepted"] + c["quarantined"] + c["duplicates_dropped"]


def test_clean_statements_pass_with_the_canonical_columns():
    df = fundamentals(
        [("A", Q4, FEB1, "FY2023", "revenue", 100.0), ("A", Q4, FEB1, "FY2023", "net_income", 9.0)]
    )
    out = validate_fundamentals(df, FundamentalRules())
    assert out.accepted.height == 2 and out.quarantined.height == 0 and out.flags.height == 0
    assert out.accepted.columns == FUNDAMENTAL_SCHEMA.names
    assert out.quarantined.columns == [*FUNDAMENTAL_SCHEMA.names, "ts", "rule", "reason"]


def test_filed_on_or_before_period_end_is_quarantined():
    df = fundamentals(
        [
            ("A", Q4, filed(dt.date(2023, 11, 15)), "FY2023", "revenue", 1.0),  # before the period ends
            ("A", Q4, filed(Q4, 23), "FY2023", "net_income", 1.0),  # same day: not strictly before
            ("A", Q4, filed(dt.date(2024, 1, 1), 0), "FY2023", "total_assets", 1.0),  # the next day: fine
        ]
    )
    out = validate_fundamentals(df, FundamentalRules())
    assert out.accepted["field"].to_list() == ["total_assets"]
    assert out.quarantined["rule"].to_list() == ["period_before_filing"] * 2
    reasons = dict(zip(out.quarantined["field"], out.quarantined["reason"], strict=True))
    assert reasons["revenue"] == (
        "period_end 2023-12-31 is not before the filing date 2023-11-15 (filed_at 2023-11-15 21:00:00 UTC)"
    )
    assert out.quarantined["ts"].to_list() == out.quarantined["filed_at"].to_list()


def test_conflicting_duplicates_are_all_quarantined_and_restatements_kept():
    df = fundamentals(
        [
            ("A", Q4, FEB1, "FY2023", "revenue", 100.0),
            ("A", Q4, FEB1, "FY2023", "revenue", 101.0),  # conflicts with the row above
            ("A", Q4, FEB1, "FY2023", "revenue", 102.0),  # and this one too
            ("A", Q4, FEB1, "FY2023", "net_income", 10.0),
            ("A", Q4, MAY1, "FY2023", "net_income", 12.0),  # restatement: a later filing
            ("A", Q4, FEB1, "FY2023", "eps", 1.0),
            ("A", Q4, FEB1, "2023Q4", "eps", 1.0),  # same number, different fiscal period label
            ("B", Q4, FEB1, "FY2023", "revenue", 100.0),  # another symbol: no conflict
        ]
    )
    out = validate_fundamentals(df, FundamentalRules())
    q = out.quarantined
    assert sorted(q["rule"].unique().to_list()) == ["duplicate_period"]
    assert sorted(zip(q["field"], q["value"], strict=True)) == [
        ("eps", 1.0),
        ("eps", 1.0),
        ("revenue", 100.0),
        ("revenue", 101.0),
        ("revenue", 102.0),
    ]
    assert q.filter(pl.col("field") == "revenue")["reason"][0] == (
        "3 rows for revenue period_end 2023-12-31 filed 2024-02-01 21:00:00 UTC disagree: "
        "100.0 (FY2023), 101.0 (FY2023), 102.0 (FY2023)"
    )
    kept = out.accepted.select("symbol", "field", "filed_at", "value").rows()
    assert kept == [
        ("A", "net_income", FEB1, 10.0),
        ("A", "net_income", MAY1, 12.0),
        ("B", "revenue", FEB1, 100.0),
    ]
    assert_conserved(out, df.height)


def test_same_number_from_two_vendors_is_no_conflict():
    df = fundamentals([("A", Q4, FEB1, "FY2023", "revenue", 100.0, v) for v in ("x", "y")])
    assert validate_fundamentals(df, FundamentalRules()).accepted.height == 2


def test_exact_duplicates_are_dropped_and_counted():
    row = ("A", Q4, FEB1, "FY2023", "revenue", 100.0)
    df = fundamentals([row, row, row, ("A", Q4, MAY1, "FY2023", "revenue", 100.0)])
    out = validate_fundamentals(df, FundamentalRules())
    assert out.duplicates_dropped == 2 and out.accepted.height == 2 and out.quarantined.height == 0
    assert_conserved(out, 4)


@pytest.mark.parametrize("rule", ["period_before_filing", "duplicate_period"])
def test_policies_warn_quarantine_fail(rule):
    good = ("A", Q4, FEB1, "FY2023", "revenue", 1.0)
    bad = (
        [("A", Q4, filed(Q4), "FY2023", "net_income", 1.0)]
        if rule == "period_before_filing"
        else [("A", Q4, FEB1, "FY2023", "eps", 1.0), ("A", Q4, FEB1, "FY2023", "eps", 2.0)]
    )
    df = fundamentals([good, *bad])

    out = validate_fundamentals(df, rules(**{rule: "warn"}))
    assert out.accepted.height == df.height and out.quarantined.height == 0
    assert out.flags["rule"].to_list() == [rule] * len(bad)
    assert out.flags["ts"].to_list() == [r[2] for r in bad]  # flags are keyed on filed_at

    out = validate_fundamentals(df, rules(**{rule: "quarantine"}))
    assert out.accepted.height == 1 and out.quarantined["rule"].to_list() == [rule] * len(bad)
    quality = out.quality(rule_policies(FundamentalRules()))
    assert [(r["rule"], r["policy"], r["count"]) for r in quality] == [(rule, "quarantine", len(bad))]

    with pytest.raises(ValidationFailed, match=f"fundamentals: rule '{rule}' \\(policy fail\\)"):
        validate_fundamentals(df, rules(**{rule: "fail"}))


def test_pandas_input_and_schema_errors():
    df = fundamentals([("A", Q4, FEB1, "FY2023", "revenue", 100.0)])
    out = validate_fundamentals(df.to_pandas(), FundamentalRules())
    assert out.accepted.equals(df)
    with pytest.raises(SchemaError, match="fundamentals: missing column"):
        validate_fundamentals(df.drop("filed_at"), FundamentalRules())
    with pytest.raises(SchemaError, match="column 'filed_at' .* UTC-aware"):
        validate_fundamentals(
            df.with_columns(pl.col("filed_at").dt.replace_time_zone(None)), FundamentalRules()
        )


def test_accepted_sorted_for_point_in_time_joins():
    df = fundamentals(
        [
            ("B", Q4, FEB1, "FY2023", "revenue", 1.0),
            ("A", Q4, MAY1, "FY2023", "revenue", 2.0),
            ("A", Q4, FEB1, "FY2023", "revenue", 1.0),
        ]
    )
    out = validate_fundamentals(df, FundamentalRules())
    assert out.accepted.select("symbol", "filed_at").rows() == [("A", FEB1), ("A", MAY1), ("B", FEB1)]


@st.composite
def statements(draw):
    """Random statements with injected faults; returns (rows, expected rule per row index or None)."""
    rows, expected, n_dupes = [], [], 0
    for _ in range(draw(st.integers(0, 25))):
        symbol = draw(st.sampled_from(["A", "B"]))
        period_end = dt.date(2023, 3, 31) + dt.timedelta(days=91 * draw(st.integers(0, 3)))
        lag = draw(st.integers(1, 90))
        filed_at = filed(period_end + dt.timedelta(days=lag), draw(st.integers(0, 23)))
        field = draw(st.sampled_from(["revenue", "net_income", "total_assets"]))
        # Unique field names keep random rows from colliding with each other's keys.
        field = f"{field}_{len(rows)}"
        row = (symbol, period_end, filed_at, "P", field, float(draw(st.integers(-100, 100))))
        fault = draw(st.sampled_from(["none", "early", "conflict", "restated", "exact"]))
        if fault == "early":
            early = period_end - dt.timedelta(days=draw(st.integers(0, 60)))
            rows.append((*row[:2], filed(early, draw(st.integers(0, 23))), *row[3:]))
            expected.append("period_before_filing")
        elif fault == "conflict":
            rows += [row, (*row[:5], row[5] + draw(st.integers(1, 10)))]
            expected += ["duplicate_period"] * 2
        elif fault == "restated":
            later = filed_at + dt.timedelta(days=draw(st.integers(1, 400)))
            rows += [row, (*row[:2], later, *row[3:5], row[5] + 1)]
            expected += [None, None]
        elif fault == "exact":
            rows += [row, row]
            expected += [None, "dropped"]
            n_dupes += 1
        else:
            rows.append(row)
            expected.append(None)
    order = draw(st.permutations(range(len(rows))))
    return [rows[k] for k in order], [expected[k] for k in order], n_dupes


@settings(max_examples=150, deadline=None)
@given(statements())
def test_random_statements_are_conserved_and_faults_caught(batch):
    rows, expected, n_dupes = batch
    out = validate_fundamentals(fundamentals(rows), FundamentalRules())
    assert_conserved(out, len(rows))
    assert out.duplicates_dropped == n_dupes
    got = sorted((r["field"], r["value"], r["rule"]) for r in out.quarantined.iter_rows(named=True))
    want = sorted((r[4], r[5], e) for r, e in zip(rows, expected, strict=True) if e not in (None, "dropped"))
    assert got == want
    assert out.accepted.height == sum(e is None for e in expected)
