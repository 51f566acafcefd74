"""Bar validation: every row accounted for, every injected fault reported by the right rule."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quanto.config.models import SyntheticSpec
from quanto.data.synthetic import generate_minute_bars_with_faults
from quanto.validation.bars import SchemaMismatch, validate_bars

# The rule each synthetic fault kind must be caught by.
EXPECTED_RULE = {
    "high_below_max": "ohlc_high",
    "low_above_min": "ohlc_low",
    "non_positive_price": "price_positive",
    "negative_volume": "volume_nonnegative",
    "duplicate_conflict": "duplicate_conflict",
}


def bars(n: int, symbol: str = "A", start: str = "2024-01-02 14:30") -> pd.DataFrame:
    """Clean canonical minute bars."""
    rng = np.random.default_rng(n)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame(
        {
            "symbol": symbol,
            "ts": pd.date_range(start, periods=n, freq="min", tz="UTC"),
            "timeframe": "1min",
            "open": open_,
            "high": np.maximum(open_, close) + 0.01,
            "low": np.minimum(open_, close) - 0.01,
            "close": close,
            "volume": rng.integers(0, 1000, n).astype(float),
            "vwap": np.nan,
            "trades": pd.array([None] * n, dtype="Int64"),
            "vendor": "test",
            "imputed": False,
        }
    )


def test_every_synthetic_fault_is_caught_by_its_rule():
    spec = SyntheticSpec(seed=3, bad_tick_rate=0.01)
    data, faults = generate_minute_bars_with_faults(
        ["X", "Y"], dt.date(2024, 3, 4), dt.date(2024, 3, 9), spec
    )
    out = validate_bars(data)
    assert set(faults["kind"]) >= set(EXPECTED_RULE) | {"duplicate_exact"}
    c = out.counters
    assert c["rows_in"] == len(data) == c["accepted"] + c["quarantined"] + c["duplicates_dropped"]
    assert c["duplicates_dropped"] == (faults["kind"] == "duplicate_exact").sum()
    q = out.quarantined.set_index(["symbol", "ts"])
    for kind, rule in EXPECTED_RULE.items():
        for row in faults[faults["kind"] == kind].itertuples():
            assert rule in set(np.atleast_1d(q.loc[(row.symbol, row.ts), "rule"])), (kind, row.ts)
    assert not out.accepted.duplicated(["symbol", "timeframe", "ts"]).any()
    assert (out.accepted["high"] >= out.accepted[["open", "close"]].max(axis=1)).all()
    assert (
        out.accepted["ts"].is_monotonic_increasing
        or out.accepted.groupby("symbol")["ts"].is_monotonic_increasing.all()
    )


def test_reasons_name_the_values():
    df = bars(5)
    df.loc[2, "high"] = 1.0
    df.loc[3, "volume"] = -7.0
    out = validate_bars(df)
    reasons = dict(zip(out.quarantined["rule"], out.quarantined["reason"], strict=True))
    assert reasons["ohlc_high"].startswith("high 1 < max(open, close)")
    assert reasons["volume_nonnegative"] == "volume must be >= 0, got -7"
    assert {r["rule"] for r in out.quality} == {"ohlc_high", "volume_nonnegative"}


def test_out_of_order_rows_are_counted_and_sorted():
    df = bars(6).iloc[[0, 1, 4, 2, 3, 5]]
    out = validate_bars(df)
    assert out.out_of_order == 1 and out.counters["accepted"] == 6
    assert out.accepted["ts"].is_monotonic_increasing


def test_schema_mismatch_names_column_and_types():
    df = bars(3)
    df["volume"] = df["volume"].astype(str)
    with pytest.raises(SchemaMismatch, match=r"column 'volume' expected double, found"):
        validate_bars(df, source="vendor file x.csv")
    with pytest.raises(SchemaMismatch, match=r"missing column\(s\) \['vwap'\]"):
        validate_bars(bars(3).drop(columns="vwap"))
    naive = bars(3)
    naive["ts"] = naive["ts"].dt.tz_convert("America/New_York")
    with pytest.raises(SchemaMismatch, match="must be UTC"):
        validate_bars(naive)


corruption = st.sampled_from(
    ["high", "low", "zero", "nan", "neg_volume", "dup_exact", "dup_conflict", "shuffle"]
)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), faults=st.lists(st.tuples(corruption, st.integers(0, 10_000)), max_size=12))
def test_conservation_and_detection_hold_for_any_corruption(n, faults):
    df = bars(n)
    expected_bad: set[pd.Timestamp] = set()
    extra = []
    for kind, pos in faults:
        i = pos % n
        ts = df.loc[i, "ts"]
        if kind == "high":
            df.loc[i, "high"] = min(df.loc[i, "open"], df.loc[i, "close"]) - 1
        elif kind == "low":
            df.loc[i, "low"] = max(df.loc[i, "open"], df.loc[i, "close"]) + 1
        elif kind == "zero":
            df.loc[i, "close"] = 0.0
        elif kind == "nan":
            df.loc[i, "open"] = np.nan
        elif kind == "neg_volume":
            df.loc[i, "volume"] = -1.0
        elif kind == "dup_exact":
            extra.append(df.loc[[i]].copy())
            continue
        elif kind == "dup_conflict":
            row = df.loc[[i]].copy()
            row["volume"] = row["volume"] + 12345.0
            extra.append(row)
        elif kind == "shuffle":
            df = df.sample(frac=1.0, random_state=pos).reset_index(drop=True)
            continue
        expected_bad.add(ts)
    full = pd.concat([df, *extra], ignore_index=True)
    out = validate_bars(full)
    c = out.counters
    assert c["rows_in"] == len(full) == c["accepted"] + c["quarantined"] + c["duplicates_dropped"]
    assert expected_bad <= set(out.quarantined["ts"])
    assert not (set(out.accepted["ts"]) & set(out.quarantined["ts"]))
    assert out.accepted["ts"].is_unique and out.accepted["ts"].is_monotonic_increasing
