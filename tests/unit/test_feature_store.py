"""Incremental features: the store reuses what it holds, computes only new or restated bars with their
warm-up, and the result equals a full recompute; the engine's boundedness verdicts are checked on data."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from quanto.features import engine, store
from quanto.features.engine import is_bounded, same_values
from quanto.features.registry import REGISTRY, compute_features, expand_names
from quanto.features.store import FeatureStore
from quanto.lake.storage import Lake
from tests.unit.test_features import make_bars

NAMES = expand_names(
    ["default", "family:alpha158", "family:risk", "family:statistical", "talib_obv", "talib_sar"]
)
SPECS = [REGISTRY[n] for n in NAMES]
SCOPE = {"vendor": "test", "timeframe": "1d"}


def panel(n: int = 500) -> pd.DataFrame:
    return pd.concat(
        [make_bars("AAA", n, seed=1), make_bars("BBB", n, seed=2, price=7.0), make_bars("CCC", n, seed=3)],
        ignore_index=True,
    )


def head(bars: pd.DataFrame, rows: dict[str, int]) -> pd.DataFrame:
    """The first rows[symbol] bars of each symbol named in `rows` (others left out)."""
    parts = [g.iloc[: rows[s]] for s, g in bars.groupby("symbol") if s in rows]
    return pd.concat(parts, ignore_index=True)


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns) and len(actual) == len(expected)
    assert (actual["symbol"].to_numpy() == expected["symbol"].to_numpy()).all()
    assert (actual["ts"].to_numpy() == expected["ts"].to_numpy()).all()
    a, e = actual[NAMES].to_numpy(), expected[NAMES].to_numpy()
    bad = [n for j, n in enumerate(NAMES) if not same_values(a[:, j], e[:, j]).all()]
    assert not bad, f"differ from a full recompute: {bad[:10]}"


@pytest.fixture()
def feature_store(tmp_path) -> FeatureStore:
    return FeatureStore(Lake(tmp_path), SPECS, SCOPE)


def test_a_top_up_computes_only_new_rows_and_equals_a_full_recompute(feature_store: FeatureStore) -> None:
    bars = panel()
    first, run1 = feature_store.compute(head(bars, {"AAA": 400, "BBB": 300}))
    assert (run1.rows_reused, run1.rows_computed, run1.symbols_computed) == (0, 700, 2)

    table, run = feature_store.compute(bars)
    assert_same(table, compute_features(bars, NAMES))
    assert (run.symbols_extended, run.symbols_computed, run.symbols_reused) == (2, 1, 0)
    assert (run.rows_reused, run.rows_computed) == (700, 100 + 200 + 500)

    again, run3 = feature_store.compute(bars)  # nothing new: everything from the store, no new chunk
    assert (run3.rows_computed, run3.chunk, run3.symbols_reused) == (0, None, 3)
    assert_same(again, table)


def test_a_shorter_range_reuses_the_stored_prefix(feature_store: FeatureStore) -> None:
    bars = panel()
    feature_store.compute(bars)
    coverage = feature_store.coverage()
    short = head(bars, {"AAA": 250, "CCC": 499})
    table, run = feature_store.compute(short)
    assert (run.rows_computed, run.rows_reused) == (0, 749)
    assert_same(table, compute_features(short, NAMES))
    assert feature_store.coverage() == coverage  # a shorter run never shrinks the coverage


def test_a_restated_bar_recomputes_from_there(feature_store: FeatureStore) -> None:
    bars = panel()
    feature_store.compute(bars)
    restated = bars.copy()
    row = restated.index[(restated["symbol"] == "BBB")][420]
    restated.loc[row, ["close", "high"]] = restated.loc[row, "close"] * 1.05
    table, run = feature_store.compute(restated)
    assert (run.symbols_reused, run.symbols_extended, run.rows_computed) == (2, 1, 80)
    assert_same(table, compute_features(restated, NAMES))
    segments = feature_store.coverage()["BBB"]
    assert [s["last"] for s in segments][0] < segments[1]["first"]  # the stale tail is no longer valid


def test_a_later_start_is_not_a_prefix(feature_store: FeatureStore) -> None:
    """Recursive features (EMA, RSI, SAR, OBV) depend on where the history starts: rows stored for a
    history that started earlier must not be reused."""
    bars = panel()
    feature_store.compute(bars)
    later = bars[bars.groupby("symbol").cumcount() >= 100].reset_index(drop=True)
    table, run = feature_store.compute(later)
    assert run.symbols_computed == 3 and run.rows_reused == 0
    assert_same(table, compute_features(later, NAMES))


def test_wrong_boundedness_would_break_incremental_identity(tmp_path, monkeypatch) -> None:
    """The identity above rests on the boundedness verdicts: declaring every feature bounded makes the
    top-up of recursive features differ from a full recompute."""
    monkeypatch.setattr(store, "is_bounded", lambda spec: True)
    feature_store = FeatureStore(Lake(tmp_path), SPECS, SCOPE)
    bars = panel()
    feature_store.compute(head(bars, {"AAA": 300, "BBB": 300, "CCC": 300}))
    table, _ = feature_store.compute(bars)
    full = compute_features(bars, NAMES)
    differs = {n for n in NAMES if not same_values(table[n].to_numpy(), full[n].to_numpy()).all()}
    # (Slow recursions: faster ones such as RSI(14) converge within the group's 200-row warm-up.)
    assert {"ema_ratio_200", "ema_ratio_100", "talib_obv"} <= differs
    assert "sma_ratio_200" not in differs and "alpha158_std60" not in differs


def test_chunks_are_compacted(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(store, "MAX_CHUNKS", 3)
    fs = FeatureStore(Lake(tmp_path), SPECS, SCOPE)
    bars = panel(320)
    compacted = []
    for end in (250, 260, 270, 280):
        table, run = fs.compute(head(bars, {"AAA": end, "BBB": end, "CCC": end}))
        compacted.append(run.compacted)
    assert compacted == [False, False, False, True]  # the fourth chunk would pass MAX_CHUNKS
    chunks = {seg["chunk"] for segs in fs.coverage().values() for seg in segs}
    assert len(chunks) == 1 and all(len(segs) == 1 for segs in fs.coverage().values())
    table, run = fs.compute(bars)
    assert run.rows_reused == 3 * 280 and not run.compacted
    assert_same(table, compute_features(bars, NAMES))


def test_store_identity_follows_names_versions_and_scope(tmp_path) -> None:
    lake = Lake(tmp_path)
    base = FeatureStore(lake, SPECS, SCOPE)
    assert FeatureStore(lake, [s for s in SPECS if s.name != "sma_ratio_5"], SCOPE).root != base.root
    assert FeatureStore(lake, SPECS, {**SCOPE, "timeframe": "1min"}).root != base.root
    bumped = [dataclasses.replace(s, version=2) if s.name == "sma_ratio_5" else s for s in SPECS]
    assert FeatureStore(lake, bumped, SCOPE).root != base.root
    # History-dependent features are not stored, so they do not change which rows can be reused.
    assert FeatureStore(lake, [s for s in SPECS if s.name != "rsi_14"], SCOPE).root == base.root


def test_coverage_file_is_plain_json(feature_store: FeatureStore) -> None:
    feature_store.compute(panel(260))
    doc = json.loads(feature_store.lake.abspath(f"{feature_store.root}/coverage.json").read_text())
    assert doc["features"] == [n for n in NAMES if is_bounded(REGISTRY[n])] and set(doc["symbols"]) == {
        "AAA",
        "BBB",
        "CCC",
    }
    seg = doc["symbols"]["AAA"][0]
    assert (
        seg["first"] == pd.Timestamp("2020-01-01", tz="UTC").value
        and feature_store.lake.abspath(seg["chunk"]).is_file()
    )


# --- the engine -----------------------------------------------------------------------------------


def test_boundedness_verdicts_hold_on_other_data() -> None:
    """Every registered feature: a bounded one, cut at any row s, equals the uncut run from s+lookback
    on; a probed unbounded one differs somewhere there (else the probe is wrong)."""
    bars = make_bars("ZZZ", 700, seed=42, price=3.0)
    names = list(REGISTRY)
    full = compute_features(bars, names)
    same = dict.fromkeys(names, True)
    for cut in (90, 233):
        part = compute_features(bars.iloc[cut:], names)
        for name in names:
            lb = REGISTRY[name].lookback
            a, b = full[name].to_numpy()[cut + lb :], part[name].to_numpy()[lb:]
            if not same_values(a, b).all():
                same[name] = False
    # A declared `bounded=False` is allowed to be conservative (obv_z: exact in theory, not in floats).
    wrong = [
        n
        for n in names
        if (is_bounded(REGISTRY[n]) and not same[n])
        or (REGISTRY[n].bounded is None and not is_bounded(REGISTRY[n]) and same[n])
    ]
    assert not wrong, f"boundedness verdicts contradicted by data: {wrong[:10]}"


def test_threads_do_not_change_results() -> None:
    bars = panel(300)
    one = compute_features(bars, NAMES, threads=1)
    many = compute_features(bars, NAMES, threads=4)
    pd.testing.assert_frame_equal(one, many)


def test_engine_rejects_repeated_rows_and_missing_columns() -> None:
    bars = panel(50)
    with pytest.raises(ValueError, match="repeated"):
        compute_features(pd.concat([bars, bars.iloc[:1]]), ["rsi_14"])
    with pytest.raises(KeyError, match="volume"):
        compute_features(bars.drop(columns=["volume"]), ["mfi_14"])
    assert engine.default_threads() >= 1


def test_batching_symbols_never_changes_a_symbol_beyond_rounding() -> None:
    """Every registered feature (tsfresh has its own test) on a panel where a cheap, huge-volume
    symbol precedes a small one equals the small one computed alone, to 1e-9: the engine batches only
    features that are blind to the symbol ahead."""
    names = [n for n, s in REGISTRY.items() if s.family != "tsfresh"]
    big, small = make_bars("AAA", 400, seed=5, price=900.0), make_bars("BBB", 400, seed=6, price=2.0)
    big["volume"] *= 1000.0
    both = compute_features(pd.concat([big, small], ignore_index=True), names)
    alone = compute_features(small, names)
    got = both[both["symbol"] == "BBB"].reset_index(drop=True)
    bad = [n for n in names if not same_values(got[n].to_numpy(), alone[n].to_numpy(), rtol=1e-9).all()]
    assert not bad, f"batched values depend on the symbol ahead: {bad[:10]}"
