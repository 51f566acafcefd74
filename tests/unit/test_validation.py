"""Bar validation: every row accounted for, every fault reported by its rule under its policy."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from quanto.config.models import BarRules, SyntheticSpec
from quanto.data.schemas import BAR_COLUMNS, BAR_SCHEMA, polars_schema
from quanto.data.synthetic import generate_minute_bars_with_faults
from quanto.errors import InputError
from quanto.validation.bars import SchemaMismatch, check_schema, validate_bars
from quanto.validation.checks import ValidationFailed

KEY = ["symbol", "timeframe", "ts"]
ROW_RULES = ("duplicate_conflict", "price_positive", "ohlc", "volume_nonnegative")  # quarantine priority

# The rule each synthetic fault kind must be reported by.
EXPECTED_RULE = {
    "high_below_max": "ohlc",
    "low_above_min": "ohlc",
    "non_positive_price": "price_positive",
    "negative_volume": "volume_nonnegative",
    "duplicate_conflict": "duplicate_conflict",
}


def rules(**policies: str) -> BarRules:
    """BarRules with the given policies, e.g. rules(ohlc="warn")."""
    return BarRules.model_validate({name: {"policy": p} for name, p in policies.items()})


def all_rules(policy: str) -> BarRules:
    """Every bar rule at one policy."""
    return rules(**{name: policy for name in BarRules.model_fields})


def bars(
    n: int, symbol: str = "A", start: str = "2024-01-02 14:30", close: np.ndarray | None = None
) -> pd.DataFrame:
    """Clean canonical minute bars (a small random walk unless `close` is given)."""
    rng = np.random.default_rng(n)
    if close is None:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    close = np.asarray(close, dtype=float)
    open_ = np.r_[close[:1], close[:-1]]
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


def keys(frame: pl.DataFrame, rule: str | None = None) -> set[tuple[str, pd.Timestamp]]:
    """(symbol, ts) of a frame's rows, optionally of one rule only."""
    if rule is not None:
        frame = frame.filter(pl.col("rule") == rule)
    return {(s, pd.Timestamp(t)) for s, t in frame.select("symbol", "ts").iter_rows()}


def assert_accepted_canonical(out) -> None:
    """Accepted: canonical columns and dtypes, unique per key, sorted by key."""
    acc = out.accepted
    assert acc.schema == polars_schema(BAR_SCHEMA)
    assert acc.select(pl.struct(KEY).is_unique().all()).item()
    assert acc.equals(acc.sort(KEY))
    assert out.quarantined.columns == [*BAR_COLUMNS, "rule", "reason"]


def assert_conserved(out, rows_in: int) -> None:
    c = out.counters
    assert c["rows_in"] == rows_in == c["accepted"] + c["quarantined"] + c["duplicates_dropped"]


def synthetic(rate: float = 0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    spec = SyntheticSpec(seed=3, bad_tick_rate=rate)
    return generate_minute_bars_with_faults(["X", "Y"], dt.date(2024, 3, 4), dt.date(2024, 3, 9), spec)


# --- synthetic faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_polars", [False, True])
def test_every_synthetic_fault_is_quarantined_by_its_rule(as_polars):
    data, faults = synthetic()
    assert set(faults["kind"]) == set(EXPECTED_RULE) | {"duplicate_exact"}
    out = validate_bars(pl.from_pandas(data) if as_polars else data, BarRules())
    assert_conserved(out, len(data))
    assert out.duplicates_dropped == (faults["kind"] == "duplicate_exact").sum()
    for kind, rule in EXPECTED_RULE.items():
        want = {(r.symbol, r.ts) for r in faults[faults["kind"] == kind].itertuples()}
        assert want <= keys(out.quarantined, rule), kind
    # Nothing else was quarantined: the clean path breaks no row rule.
    bad_keys = {(r.symbol, r.ts) for r in faults[faults["kind"] != "duplicate_exact"].itertuples()}
    assert keys(out.quarantined) == bad_keys
    assert_accepted_canonical(out)
    acc = out.accepted
    assert acc.select(
        (pl.col("high") >= pl.max_horizontal("open", "close")).all()
        & (pl.col("low") <= pl.min_horizontal("open", "close")).all()
        & (pl.col("volume") >= 0).all()
    ).item()


def test_every_synthetic_fault_is_flagged_by_its_rule_under_warn():
    data, faults = synthetic()
    out = validate_bars(data, all_rules("warn"))
    assert out.quarantined.height == 0
    assert_conserved(out, len(data))
    assert out.counters["accepted"] == len(data) - out.duplicates_dropped
    for kind, rule in EXPECTED_RULE.items():
        want = {(r.symbol, r.ts) for r in faults[faults["kind"] == kind].itertuples()}
        assert want <= keys(out.flags, rule), kind


def test_duplicate_conflict_quarantines_every_row_of_the_key_and_counts_exact_copies():
    df = bars(5)
    conflict = df.iloc[[2]].assign(close=df.loc[2, "close"] + 0.001)
    # Exact copy of row 1 after a different row: still an exact duplicate, wherever it sits.
    full = pd.concat([df, conflict, df.iloc[[1]], conflict], ignore_index=True)
    out = validate_bars(full, BarRules())
    assert out.duplicates_dropped == 2
    q = out.quarantined
    assert q.height == 2 and set(q["rule"]) == {"duplicate_conflict"}
    assert set(q["ts"]) == {df.loc[2, "ts"]}
    assert q["reason"][0] == "2 rows share (symbol, timeframe, ts) with different values"
    assert out.accepted.height == 4
    assert_conserved(out, len(full))


# --- reasons and policies -----------------------------------------------------------------------


def test_reasons_name_the_values():
    df = bars(6)
    df.loc[0, ["open", "close", "high", "low"]] = [2.5, 2.0, 1.0, 0.5]
    df.loc[1, ["open", "close", "high", "low"]] = [100.0, 101.0, 102.0, 100.5]
    df.loc[2, "volume"] = -7.0
    df.loc[3, "close"] = 0.0
    df.loc[4, "open"] = np.nan
    out = validate_bars(df, BarRules(), source="vendor x.csv")
    reasons = dict(zip(out.quarantined["ts"], out.quarantined["reason"], strict=True))
    ts = df["ts"]
    assert reasons[ts[0]] == "high 1 < max(open, close) 2.5"
    assert reasons[ts[1]] == "low 100.5 > min(open, close) 100"
    assert reasons[ts[2]] == "volume must be >= 0, got -7"
    assert reasons[ts[3]].startswith("prices must be finite and > 0: open=") and "close=0" in reasons[ts[3]]
    assert "open=null" in reasons[ts[4]]
    assert dict(zip(out.quarantined["ts"], out.quarantined["rule"], strict=True)) == {
        ts[0]: "ohlc",
        ts[1]: "ohlc",
        ts[2]: "volume_nonnegative",
        ts[3]: "price_positive",
        ts[4]: "price_positive",
    }
    quality = out.quality({"ohlc": "quarantine"})
    assert {(q["rule"], q["count"]) for q in quality} == {
        ("ohlc", 2),
        ("volume_nonnegative", 1),
        ("price_positive", 2),
    }


def test_warn_keeps_and_flags_quarantine_moves_fail_raises():
    df = bars(5)
    df.loc[[1, 3], "high"] = 1.0
    warned = validate_bars(df, rules(ohlc="warn"))
    assert warned.accepted.height == 5 and warned.quarantined.height == 0
    assert keys(warned.flags, "ohlc") == {("A", df.loc[1, "ts"]), ("A", df.loc[3, "ts"])}
    moved = validate_bars(df, rules(ohlc="quarantine"))
    assert moved.accepted.height == 3 and moved.flags.height == 0
    assert set(moved.quarantined["rule"]) == {"ohlc"}
    with pytest.raises(ValidationFailed, match=r"vendor y: rule 'ohlc' \(policy fail\) failed on 2 row\(s\)"):
        validate_bars(df, rules(ohlc="fail"), source="vendor y")


def test_a_row_breaking_a_quarantine_rule_and_a_warn_rule_is_quarantined_only():
    df = bars(4)
    df.loc[2, ["high", "volume"]] = [1.0, -1.0]
    out = validate_bars(df, rules(ohlc="warn"))
    assert out.quarantined["rule"].to_list() == ["volume_nonnegative"]
    assert out.flags.height == 0


def test_duplicate_conflict_under_warn_keeps_both_rows():
    df = bars(3)
    full = pd.concat([df, df.iloc[[1]].assign(volume=5555.0)], ignore_index=True)
    out = validate_bars(full, rules(duplicate_conflict="warn"))
    assert out.accepted.height == 4
    assert out.flags.filter(pl.col("rule") == "duplicate_conflict").height == 2


# --- ordering -----------------------------------------------------------------------------------


def test_out_of_order_rows_are_counted_flagged_and_sorted():
    df = bars(6).iloc[[0, 1, 4, 2, 3, 5]]
    out = validate_bars(df, BarRules())
    # Only the row right after 14:34 goes back in time; 14:33 follows 14:32, which is fine.
    assert out.counters["out_of_order"] == 1 and out.counters["accepted"] == 6
    assert keys(out.flags, "out_of_order") == {("A", df["ts"].iloc[3])}
    assert out.flags["reason"][0].startswith(
        "ts 2024-01-02 14:32:00 is before the previous ts 2024-01-02 14:34"
    )
    assert out.accepted["ts"].is_sorted()
    quarantined = validate_bars(df, rules(out_of_order="quarantine"))
    assert quarantined.quarantined["rule"].to_list() == ["out_of_order"]
    with pytest.raises(ValidationFailed, match="out_of_order"):
        validate_bars(df, rules(out_of_order="fail"))


def test_series_interleaved_in_input_are_not_out_of_order():
    a, b = bars(5, "A"), bars(5, "B")
    interleaved = pd.concat([a, b]).sort_values(["ts", "symbol"], kind="stable")
    out = validate_bars(interleaved, BarRules())
    assert out.counters["out_of_order"] == 0 and out.flags.height == 0
    assert out.accepted["symbol"].to_list() == ["A"] * 5 + ["B"] * 5


def test_shuffled_input_gives_the_sorted_input_result():
    data, _ = synthetic()
    shuffled = data.sample(frac=1.0, random_state=5)
    out, ref = validate_bars(shuffled, BarRules()), validate_bars(data, BarRules())
    assert_frame_equal(out.accepted, ref.accepted)
    assert_frame_equal(out.quarantined.sort(pl.all()), ref.quarantined.sort(pl.all()))
    assert out.duplicates_dropped == ref.duplicates_dropped
    assert out.counters["out_of_order"] > ref.counters["out_of_order"]
    assert keys(out.flags, "spike") == keys(ref.flags, "spike")


# --- spike and stale ----------------------------------------------------------------------------


def calm(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 + rng.normal(0, 0.05, n)


def spiked(n: int, at: int, size: float = 5.0, seed: int = 1) -> pd.DataFrame:
    """Calm bars (close std 0.05) with one close `size` higher at row `at`."""
    close = calm(n, seed)
    close[at] += size
    return bars(n, close=close)


@pytest.mark.parametrize(("at", "flagged"), [(49, False), (50, True), (110, True)])
def test_spike_is_flagged_once_the_window_is_filled(at, flagged):
    # Default window 50: row 49 has only 49 earlier bars, row 50 is the first with a full window.
    df = spiked(120, at)
    out = validate_bars(df, BarRules())
    assert keys(out.flags, "spike") == ({("A", df.loc[at, "ts"])} if flagged else set())
    if flagged:
        close = re.escape(str(df.loc[at, "close"]))
        pattern = (
            rf"close {close} is [\d.]+ std from the mean [\d.]+ of the previous 50 closes \(std [\d.]+\)"
        )
        assert re.fullmatch(pattern, out.flags["reason"][0])


def test_spike_needs_the_policy_window_of_earlier_bars():
    df = spiked(120, 60)
    assert keys(validate_bars(df, BarRules()).flags, "spike") == {("A", df.loc[60, "ts"])}
    wide = BarRules.model_validate({"spike": {"window": 100}})
    assert validate_bars(df, wide).flags.height == 0
    strict = BarRules.model_validate({"spike": {"k_sigma": 1000.0}})
    assert validate_bars(df, strict).flags.height == 0


def test_spike_window_stays_inside_its_series():
    a = bars(60, "A", close=calm(60, 1))
    close_b = calm(60, 2) + 50.0  # another price level: B's first rows must not be compared with A
    close_b[55] += 5.0
    b = bars(60, "B", close=close_b)
    out = validate_bars(pd.concat([a, b]), BarRules())
    assert keys(out.flags, "spike") == {("B", b.loc[55, "ts"])}


def test_a_quarantined_bad_tick_does_not_poison_the_spike_window():
    df = spiked(120, 90)
    df.loc[70, ["close", "low"]] = [-100.0, -100.01]  # bad tick: price_positive quarantines it
    out = validate_bars(df, BarRules())
    assert out.quarantined["rule"].to_list() == ["price_positive"]
    assert keys(out.flags, "spike") == {("A", df.loc[90, "ts"])}
    # Kept under warn, the missing value breaks windows instead of poisoning them: no crash, no spike
    # reported on the bad row itself.
    df.loc[70, ["open", "high", "low", "close"]] = np.nan
    kept = validate_bars(df, rules(price_positive="warn", ohlc="warn"))
    assert ("A", df.loc[70, "ts"]) not in keys(kept.flags, "spike")
    assert keys(kept.flags, "price_positive") == {("A", df.loc[70, "ts"])}


def test_spike_policy_quarantine_and_fail():
    close = calm(80)
    close[60] += 5.0
    df = bars(len(close), close=close)
    out = validate_bars(df, rules(spike="quarantine"))
    assert out.quarantined["rule"].to_list() == ["spike"] and out.accepted.height == 79
    assert_conserved(out, 80)
    with pytest.raises(ValidationFailed, match=r"rule 'spike' \(policy fail\) failed on 1 row"):
        validate_bars(df, rules(spike="fail"))


def test_stale_run_is_flagged_from_the_row_where_it_reaches_the_threshold():
    close = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 3.0, 3.0]
    df = bars(len(close), close=close)
    out = validate_bars(df, BarRules.model_validate({"stale": {"bars": 3}}))
    assert keys(out.flags, "stale") == {("A", df.loc[i, "ts"]) for i in (4, 5, 6)}
    reasons = out.flags.filter(pl.col("rule") == "stale")["reason"].to_list()
    assert reasons == [
        "close 3 unchanged for 3 bars",
        "close 3 unchanged for 4 bars",
        "close 3 unchanged for 5 bars",
    ]


def test_stale_run_does_not_continue_into_the_next_series():
    a = bars(4, "A", close=[5.0, 3.0, 3.0, 3.0])
    b = bars(3, "B", close=[3.0, 3.0, 4.0])
    out = validate_bars(pd.concat([a, b]), BarRules.model_validate({"stale": {"bars": 3}}))
    assert keys(out.flags, "stale") == {("A", a.loc[3, "ts"])}


# --- schema -------------------------------------------------------------------------------------


def test_schema_mismatch_names_source_column_and_types():
    df = bars(3)
    df["volume"] = df["volume"].astype(str)
    with pytest.raises(SchemaMismatch, match=r"^vendor x.csv: column 'volume' expected double, found"):
        validate_bars(df, BarRules(), source="vendor x.csv")
    polars_df = pl.from_pandas(bars(3)).with_columns(pl.col("volume").cast(pl.String))
    with pytest.raises(SchemaMismatch, match=r"vendor x.csv: column 'volume' expected double, found String"):
        check_schema(polars_df, source="vendor x.csv")
    with pytest.raises(SchemaMismatch, match=r"missing column\(s\) \['vwap'\]"):
        validate_bars(bars(3).drop(columns="vwap"), BarRules())
    with pytest.raises(SchemaMismatch, match=r"unexpected column\(s\) \['extra'\]"):
        validate_bars(bars(3).assign(extra=1), BarRules())
    assert issubclass(SchemaMismatch, InputError)


@pytest.mark.parametrize("as_polars", [False, True])
def test_ts_is_normalized_to_utc_and_naive_ts_is_refused(as_polars):
    utc = bars(3)
    new_york = utc.copy()
    new_york["ts"] = new_york["ts"].dt.tz_convert("America/New_York")
    out = validate_bars(pl.from_pandas(new_york) if as_polars else new_york, BarRules(), source="s")
    assert out.accepted["ts"].dtype == pl.Datetime("ns", "UTC")
    assert out.accepted["ts"].to_list() == [t.to_pydatetime() for t in utc["ts"]]  # same instants
    naive = utc.copy()
    naive["ts"] = naive["ts"].dt.tz_localize(None)
    with pytest.raises(SchemaMismatch, match=r"column 'ts' expected timestamp.*UTC-aware"):
        validate_bars(pl.from_pandas(naive) if as_polars else naive, BarRules(), source="s")


def test_missing_keys_are_a_schema_mismatch_missing_prices_are_quarantined():
    df = bars(3)
    df.loc[1, "symbol"] = None
    with pytest.raises(SchemaMismatch, match="column 'symbol'.*not nullable"):
        validate_bars(df, BarRules())
    df = bars(3)
    df.loc[1, "volume"] = np.nan
    out = validate_bars(df, BarRules())
    assert out.quarantined["reason"].to_list() == ["volume must be >= 0, got null"]


def test_inputs_are_cast_to_the_canonical_dtypes():
    frame = pl.from_pandas(bars(4)).with_columns(
        pl.col("ts").dt.cast_time_unit("us"),
        pl.col("symbol").cast(pl.Categorical),
        pl.col("volume").cast(pl.Int32),
        pl.col("trades").cast(pl.Int16),
    )
    out = validate_bars(frame, BarRules())
    assert out.accepted.schema == polars_schema(BAR_SCHEMA)
    assert out.accepted.height == 4


def test_empty_input_gives_an_empty_outcome():
    out = validate_bars(bars(0), BarRules())
    assert out.counters["rows_in"] == 0 and out.flags.height == 0
    assert out.accepted.schema == polars_schema(BAR_SCHEMA)


# --- pandas and polars input ---------------------------------------------------------------------


def test_pandas_and_polars_input_give_the_same_result():
    data, _ = synthetic(0.02)
    data = pd.concat([data, bars(30, "Z", close=[7.0] * 30)], ignore_index=True)  # a stale run too
    policies = rules(ohlc="warn", out_of_order="quarantine")
    a, b = validate_bars(data, policies), validate_bars(pl.from_pandas(data), policies)
    assert_frame_equal(a.accepted, b.accepted)
    assert_frame_equal(a.quarantined, b.quarantined)
    assert_frame_equal(a.flags, b.flags)
    assert a.counters == b.counters
    assert {"ohlc", "stale"} <= set(a.flags["rule"])


# --- properties ---------------------------------------------------------------------------------

CORRUPTIONS = ("high", "low", "zero", "nan", "neg_volume", "dup_exact", "dup_conflict")
RULE_OF = {
    "high": "ohlc",
    "low": "ohlc",
    "zero": "price_positive",
    "nan": "price_positive",
    "neg_volume": "volume_nonnegative",
    "dup_conflict": "duplicate_conflict",
}


def corrupt(n_a: int, n_b: int, faults, shuffle: int | None) -> tuple[pd.DataFrame, dict]:
    """Two symbols' bars with `faults` (kind, row) applied; returns the frame and {(symbol, ts): kinds}."""
    parts = [bars(n_a, "A")] + ([bars(n_b, "B", start="2024-01-02 14:40")] if n_b else [])
    df = pd.concat(parts, ignore_index=True)
    expected: dict[tuple[str, pd.Timestamp], set[str]] = {}
    copies = []
    for kind, pos in faults:
        i = pos % len(df)
        if kind == "high":
            df.loc[i, "high"] = min(df.loc[i, "open"], df.loc[i, "close"]) - 1
        elif kind == "low":
            df.loc[i, "low"] = max(df.loc[i, "open"], df.loc[i, "close"]) + 1
        elif kind == "zero":
            df.loc[i, "close"] = 0.0
        elif kind == "nan":
            df.loc[i, "open"] = np.nan
        elif kind == "neg_volume":
            df.loc[i, "volume"] = -1.0 - abs(df.loc[i, "volume"])
        if kind in RULE_OF:
            expected.setdefault((df.loc[i, "symbol"], df.loc[i, "ts"]), set()).add(kind)
        if kind in ("dup_exact", "dup_conflict"):
            copies.append((kind, i))
    # Copies are taken last, from the final rows, so an exact copy stays exact.
    extra = [
        df.loc[[i]].assign(vendor="other") if kind == "dup_conflict" else df.loc[[i]] for kind, i in copies
    ]
    full = pd.concat([df, *extra], ignore_index=True)
    if shuffle is not None:
        full = full.sample(frac=1.0, random_state=shuffle).reset_index(drop=True)
    return full, expected


fault_lists = st.lists(st.tuples(st.sampled_from(CORRUPTIONS), st.integers(0, 10_000)), max_size=12)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    n_a=st.integers(1, 70),
    n_b=st.integers(0, 20),
    faults=fault_lists,
    shuffle=st.none() | st.integers(0, 100),
    as_polars=st.booleans(),
)
def test_any_corruption_is_conserved_and_reported_under_quarantine(n_a, n_b, faults, shuffle, as_polars):
    full, expected = corrupt(n_a, n_b, faults, shuffle)
    out = validate_bars(pl.from_pandas(full) if as_polars else full, BarRules())
    assert_conserved(out, len(full))
    assert out.duplicates_dropped == len(full) - len(full.drop_duplicates())
    assert_accepted_canonical(out)
    rule_of = {
        (s, pd.Timestamp(t)): r for s, t, r in out.quarantined.select("symbol", "ts", "rule").iter_rows()
    }
    for key, kinds in expected.items():
        assert key in rule_of, (key, kinds)
        # The row is named by its highest-priority fault (or by a conflict with a copy of itself).
        first = min((RULE_OF[k] for k in kinds), key=ROW_RULES.index)
        assert rule_of[key] in {first, "duplicate_conflict"}, (key, kinds, rule_of[key])
    assert not keys(out.accepted) & keys(out.quarantined)
    # Oracle for conflicts: keys with more than one distinct row after exact duplicates are dropped.
    distinct = full.drop_duplicates()
    conflicts = distinct[distinct.duplicated(KEY, keep=False)]
    assert keys(out.quarantined, "duplicate_conflict") == set(
        zip(conflicts["symbol"], conflicts["ts"], strict=True)
    )
    # Oracle for ordering: ts before the previous ts of the series, in input order (equal = duplicate).
    prev = distinct.groupby(["symbol", "timeframe"], sort=False)["ts"].shift()
    assert out.counters["out_of_order"] == int((distinct["ts"] < prev).sum())


@PROPERTY
@given(
    n_a=st.integers(1, 70),
    n_b=st.integers(0, 20),
    faults=fault_lists,
    shuffle=st.none() | st.integers(0, 100),
)
def test_any_corruption_is_flagged_by_every_broken_rule_under_warn(n_a, n_b, faults, shuffle):
    full, expected = corrupt(n_a, n_b, faults, shuffle)
    out = validate_bars(full, all_rules("warn"))
    assert_conserved(out, len(full))
    assert out.quarantined.height == 0
    flagged = {(s, pd.Timestamp(t), r) for s, t, r in out.flags.select("symbol", "ts", "rule").iter_rows()}
    for (symbol, ts), kinds in expected.items():
        for kind in kinds:
            if kind in ("high", "low") and "nan" in kinds:
                continue  # OHLC cannot be judged once a price is missing; price_positive reports the row
            assert (symbol, ts, RULE_OF[kind]) in flagged, (symbol, ts, kind)
