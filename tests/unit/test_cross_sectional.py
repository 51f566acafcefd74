"""Cross-sectional and benchmark-relative features: hand-worked panels, numpy oracles, no lookahead."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quanto.features.cross_sectional import (
    benchmark_relative,
    cross_sectional_rank,
    cross_sectional_zscore,
    sector_relative,
)

NAN = np.nan
TS = pd.date_range("2021-01-04", periods=3, freq="D", tz="UTC")


def hand_panel() -> pd.DataFrame:
    """3 symbols x 3 ts, rows deliberately unsorted; a NaN, a tie, and a lone value.

    ts0: A=1, B=2, C=NaN    ts1: A=4, B=4 (tie), C=1    ts2: A=2, B=NaN, C=NaN
    """
    rows = [
        ("C", TS[2], NAN),
        ("A", TS[0], 1.0),
        ("B", TS[0], 2.0),
        ("C", TS[0], NAN),
        ("A", TS[1], 4.0),
        ("B", TS[1], 4.0),
        ("C", TS[1], 1.0),
        ("A", TS[2], 2.0),
        ("B", TS[2], NAN),
    ]
    return pd.DataFrame(rows, columns=["symbol", "ts", "x"])


def col(frame: pd.DataFrame, name: str) -> list[float]:
    """A column in (symbol, ts) order as a plain list (the functions return that order)."""
    return frame[name].tolist()


def assert_same(actual, expected) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=1e-12)


# --- cross-sectional rank and z-score ---------------------------------------------------------------


def test_rank_by_hand():
    out = cross_sectional_rank(hand_panel(), ["x"])
    assert list(out["symbol"]) == ["A"] * 3 + ["B"] * 3 + ["C"] * 3
    assert out.index.tolist() == list(range(9))
    # ts0 over {A, B}; ts1 over {A, B, C} with A = B sharing ranks 2 and 3; ts2 over {A} only.
    expected = {
        ("A", 0): 1 / 2,
        ("A", 1): 2.5 / 3,
        ("A", 2): 1.0,
        ("B", 0): 2 / 2,
        ("B", 1): 2.5 / 3,
        ("B", 2): NAN,
        ("C", 0): NAN,
        ("C", 1): 1 / 3,
        ("C", 2): NAN,
    }
    assert_same(col(out, "x_cs_rank"), list(expected.values()))


def test_zscore_by_hand():
    out = cross_sectional_zscore(hand_panel(), ["x"])
    # ts0: mean 1.5, pop std 0.5. ts1: mean 3, pop std sqrt((1 + 1 + 4) / 3) = sqrt(2). ts2: one value.
    s2 = math.sqrt(2.0)
    expected = [-1.0, 1 / s2, NAN, 1.0, 1 / s2, NAN, NAN, -2 / s2, NAN]
    assert_same(col(out, "x_cs_z"), expected)
    assert out["x"].tolist()[:3] == [1.0, 4.0, 2.0]  # the input column rides along unchanged


def test_zscore_of_equal_values_is_nan_not_huge():
    # 0.1 three times: the float mean misses 0.1 by an ulp, which must not make a tiny nonzero std.
    panel = pd.DataFrame({"symbol": ["A", "B", "C"], "ts": [TS[0]] * 3, "x": [0.1, 0.1, 0.1]})
    out = cross_sectional_zscore(panel, ["x"])
    assert out["x_cs_z"].isna().all()
    assert_same(cross_sectional_rank(panel, ["x"])["x_cs_rank"], [2 / 3] * 3)  # average of ranks 1..3


def test_several_columns_and_inf_is_missing():
    panel = hand_panel().assign(y=lambda f: -f["x"])
    panel.loc[panel["symbol"].eq("C") & panel["ts"].eq(TS[1]), "y"] = np.inf
    out = cross_sectional_zscore(cross_sectional_rank(panel, ["x", "y"]), ["x", "y"])
    assert {"x_cs_rank", "y_cs_rank", "x_cs_z", "y_cs_z"} <= set(out.columns)
    # y at ts1 is {-4, -4, inf}: the inf counts as missing, leaving two equal values.
    at_ts1 = out[out["ts"] == TS[1]]
    assert at_ts1["y_cs_z"].isna().all()
    assert_same(at_ts1["y_cs_rank"], [0.75, 0.75, NAN])
    z = out[["x_cs_z", "y_cs_z"]].to_numpy()
    assert not np.isinf(z).any()


def test_cross_section_depends_only_on_its_own_timestamp():
    base = hand_panel()
    extra = pd.DataFrame(
        {
            "symbol": ["D", "D", "A", "B"],
            "ts": [TS[0] - pd.Timedelta(days=1), TS[2] + pd.Timedelta(days=1)] * 2,
            "x": [100.0, -100.0, 7.0, 8.0],
        }
    )
    sectors = {"A": "s", "B": "s", "C": "s", "D": "s"}
    grown = pd.concat([base, extra], ignore_index=True)
    for fn in (cross_sectional_rank, cross_sectional_zscore):
        small = fn(base, ["x"])
        big = fn(grown, ["x"])
        kept = big[big["ts"].isin(TS)].reset_index(drop=True)
        pd.testing.assert_frame_equal(kept, small)
    small = sector_relative(base, ["x"], sectors)
    big = sector_relative(grown, ["x"], sectors)
    pd.testing.assert_frame_equal(big[big["ts"].isin(TS)].reset_index(drop=True), small)


# --- sector-relative ----------------------------------------------------------------------------------


def test_sector_relative_by_hand():
    sectors = {"A": "tech", "B": "tech", "E": "tech", "C": "energy", "D": "energy"}  # F unmapped
    rows = [
        # ts0: tech {A=1, B=3, E=5}: mean 3, pop std sqrt(8/3); energy {C=2, D=6}: mean 4, std 2.
        ("A", TS[0], 1.0),
        ("B", TS[0], 3.0),
        ("E", TS[0], 5.0),
        ("C", TS[0], 2.0),
        ("D", TS[0], 6.0),
        ("F", TS[0], 7.0),
        # ts1: tech {A=2, E=2} flat (B is NaN); energy {C=1} alone (no D row).
        ("A", TS[1], 2.0),
        ("B", TS[1], NAN),
        ("E", TS[1], 2.0),
        ("C", TS[1], 1.0),
        ("F", TS[1], 3.0),
    ]
    out = sector_relative(pd.DataFrame(rows, columns=["symbol", "ts", "x"]), ["x"], sectors)
    got = out.set_index(["symbol", out["ts"].map(list(TS).index)])
    sd = math.sqrt(8 / 3)
    expected_z = {
        ("A", 0): -2 / sd,
        ("B", 0): 0.0,
        ("E", 0): 2 / sd,
        ("C", 0): -1.0,
        ("D", 0): 1.0,
        ("F", 0): NAN,
        ("A", 1): NAN,
        ("B", 1): NAN,
        ("E", 1): NAN,
        ("C", 1): NAN,
        ("F", 1): NAN,
    }
    expected_dm = {
        ("A", 0): -2.0,
        ("B", 0): 0.0,
        ("E", 0): 2.0,
        ("C", 0): -2.0,
        ("D", 0): 2.0,
        ("F", 0): NAN,
        ("A", 1): 0.0,
        ("B", 1): NAN,
        ("E", 1): 0.0,
        ("C", 1): 0.0,
        ("F", 1): NAN,
    }
    keys = list(expected_z)
    assert_same(got.loc[keys, "x_sector_z"], list(expected_z.values()))
    assert_same(got.loc[keys, "x_sector_demeaned"], list(expected_dm.values()))


def test_bad_panels_are_rejected():
    panel = hand_panel()
    with pytest.raises(KeyError, match="missing columns"):
        cross_sectional_rank(panel, ["nope"])
    with pytest.raises(ValueError, match="repeated"):
        cross_sectional_zscore(pd.concat([panel, panel.head(1)]), ["x"])


# --- benchmark-relative -------------------------------------------------------------------------------

N = 150
WINDOWS = (20, 60)


def seeded_panel(seed: int = 11) -> pd.DataFrame:
    """SPY (benchmark), TWO (log returns exactly 2x SPY's), NOISY (correlated), GAPPY (missing bars).

    SPY also misses one timestamp that the others have, so their rows there must be NaN.
    """
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2022-01-03", periods=N, freq="D", tz="UTC")
    rb = rng.normal(0.0, 0.01, N)
    rb[0] = 0.0
    spy = 100 * np.exp(np.cumsum(rb))
    two = 50 * np.exp(np.cumsum(2 * rb))
    noisy = 20 * np.exp(np.cumsum(0.7 * rb + rng.normal(0.0, 0.01, N)))
    gappy = 30 * np.exp(np.cumsum(-0.5 * rb + rng.normal(0.0, 0.02, N)))
    frames = [
        pd.DataFrame({"symbol": "SPY", "ts": ts, "close": spy}).drop(index=[100]),
        pd.DataFrame({"symbol": "TWO", "ts": ts, "close": two}),
        pd.DataFrame({"symbol": "NOISY", "ts": ts, "close": noisy}),
        pd.DataFrame({"symbol": "GAPPY", "ts": ts, "close": gappy}).drop(index=[30, 31, 90]),
    ]
    panel = pd.concat(frames, ignore_index=True)
    return panel.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # order must not matter


def numpy_oracle(panel: pd.DataFrame, symbol: str, benchmark: str, w: int) -> pd.DataFrame:
    """Plain loop: join closes on ts, log-diff, then np.cov / np.corrcoef over each full window."""
    mine = panel[panel["symbol"] == symbol].sort_values("ts")
    bench = panel[panel["symbol"] == benchmark][["ts", "close"]].rename(columns={"close": "b"})
    joined = mine.merge(bench, on="ts").sort_values("ts").reset_index(drop=True)
    r = np.diff(np.log(joined["close"].to_numpy()))
    rb = np.diff(np.log(joined["b"].to_numpy()))
    corr = np.full(len(joined), np.nan)
    beta = np.full(len(joined), np.nan)
    for t in range(w, len(joined)):  # the return ending at joined row t is r[t - 1]
        x, y = r[t - w : t], rb[t - w : t]
        c = np.cov(x, y, ddof=1)
        beta[t] = c[0, 1] / c[1, 1]
        corr[t] = np.corrcoef(x, y)[0, 1]
    joined[f"corr_{w}"] = corr
    joined[f"beta_{w}"] = beta
    return mine[["ts"]].merge(joined[["ts", f"corr_{w}", f"beta_{w}"]], on="ts", how="left")


def test_benchmark_relative_against_numpy():
    panel = seeded_panel()
    out = benchmark_relative(panel, "SPY", windows=WINDOWS)
    assert list(out.columns) == ["symbol", "ts", "corr_20", "beta_20", "corr_60", "beta_60"]
    assert len(out) == len(panel)
    for symbol in ("NOISY", "GAPPY", "TWO"):
        mine = out[out["symbol"] == symbol].reset_index(drop=True)
        for w in WINDOWS:
            ref = numpy_oracle(panel, symbol, "SPY", w)
            assert mine["ts"].tolist() == ref["ts"].tolist()
            for name in (f"corr_{w}", f"beta_{w}"):
                np.testing.assert_allclose(mine[name], ref[name], rtol=1e-9, atol=1e-12, equal_nan=True)
                assert mine[name].notna().sum() > 40  # the oracle comparison is not vacuous


def test_beta_of_twice_the_benchmark_is_two():
    out = benchmark_relative(seeded_panel(), "SPY", windows=WINDOWS)
    two = out[out["symbol"] == "TWO"].reset_index(drop=True)
    for w in WINDOWS:
        # Warm-up: w returns need w + 1 joined bars.
        assert two[f"beta_{w}"].iloc[:w].isna().all()
        defined = two[f"beta_{w}"].notna()
        np.testing.assert_allclose(two.loc[defined, f"beta_{w}"], 2.0, rtol=1e-9)
        np.testing.assert_allclose(two.loc[defined, f"corr_{w}"], 1.0, rtol=1e-9)
    # The bar SPY lacks has no value; the returns either side of it span two days for both.
    missing = pd.Timestamp("2022-01-03", tz="UTC") + pd.Timedelta(days=100)
    assert two.loc[two["ts"] == missing, ["corr_20", "beta_20"]].isna().all(axis=None)
    assert two.loc[two["ts"] == missing + pd.Timedelta(days=1), "beta_20"].notna().all()


def test_benchmark_rows_are_exactly_one():
    out = benchmark_relative(seeded_panel(), "SPY", windows=(20,))
    spy = out[out["symbol"] == "SPY"].reset_index(drop=True)
    assert spy["beta_20"].iloc[:20].isna().all()
    assert (spy["beta_20"].iloc[20:] == 1.0).all()
    assert (spy["corr_20"].iloc[20:] == 1.0).all()


def test_flat_benchmark_gives_nan_not_inf():
    ts = pd.date_range("2022-01-03", periods=30, freq="D", tz="UTC")
    panel = pd.concat(
        [
            pd.DataFrame({"symbol": "BM", "ts": ts, "close": 100.0}),
            pd.DataFrame({"symbol": "X", "ts": ts, "close": np.linspace(10, 20, 30)}),
        ]
    )
    out = benchmark_relative(panel, "BM", windows=(5,))
    assert out[["corr_5", "beta_5"]].isna().all(axis=None)


def test_benchmark_relative_has_no_lookahead():
    panel = seeded_panel()
    full = benchmark_relative(panel, "SPY", windows=WINDOWS)
    times = np.sort(panel["ts"].unique())
    for cut in times[[25, 61, 99, 100, 120]]:
        part = benchmark_relative(panel[panel["ts"] <= cut], "SPY", windows=WINDOWS)
        ref = full[full["ts"] <= cut].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, ref)


def test_cross_sectional_has_no_lookahead():
    panel = seeded_panel()
    sectors = {"SPY": "a", "TWO": "a", "NOISY": "b", "GAPPY": "b"}
    cut = np.sort(panel["ts"].unique())[70]
    for fn, args in (
        (cross_sectional_rank, ()),
        (cross_sectional_zscore, ()),
        (sector_relative, (sectors,)),
    ):
        full = fn(panel, ["close"], *args)
        part = fn(panel[panel["ts"] <= cut], ["close"], *args)
        pd.testing.assert_frame_equal(part, full[full["ts"] <= cut].reset_index(drop=True))


def test_benchmark_relative_errors():
    panel = seeded_panel()
    with pytest.raises(ValueError, match="'QQQ'"):
        benchmark_relative(panel, "QQQ")
    with pytest.raises(ValueError, match="windows"):
        benchmark_relative(panel, "SPY", windows=(1,))
    with pytest.raises(KeyError, match="close"):
        benchmark_relative(panel.drop(columns="close"), "SPY")
    with pytest.raises(ValueError, match="repeated"):
        benchmark_relative(pd.concat([panel, panel.head(2)]), "SPY")
