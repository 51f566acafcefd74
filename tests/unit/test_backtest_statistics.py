"""Honest statistics of a backtest: PBO by CSCV (hand-computed splits, noise vs a real edge, the
vectorized scores against a direct computation) and the block bootstrap (reproducibility, block
structure, interval coverage, block length on autocorrelated returns)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from quanto.backtest.bootstrap import (
    STATISTICS,
    block_bootstrap,
    bootstrap_indices,
    optimal_block_length,
)
from quanto.backtest.metrics import performance_metrics
from quanto.backtest.overfitting import pbo_cscv

# --------------------------------------------------------------------------------------------------
# PBO by CSCV
# --------------------------------------------------------------------------------------------------


def test_pbo_by_hand_when_the_winner_flips():
    # S = 2 blocks of 2 rows, 3 trials scored by their mean. Block A: means 1, 2, 3; block B: 3, 2, 1.
    # Split {A in-sample}: trial 2 wins (3) and scores 1 out of sample, the lowest → rank 1,
    # ω = 1/4, λ = ln(1/3). Split {B}: trial 0 wins and scores 1 on A → the same. PBO = 2/2 = 1.
    x = np.array([[1, 2, 3], [1, 2, 3], [3, 2, 1], [3, 2, 1]], dtype=float)
    out = pbo_cscv(x, n_splits=2, metric="mean")
    assert out["n_combinations"] == 2 and out["selected"] == [2, 0]
    assert out["pbo"] == 1.0
    assert out["logits"] == pytest.approx([math.log(1 / 3)] * 2)
    assert out["oos_relative_rank"] == pytest.approx([0.25, 0.25])
    assert out["is_performance"] == [3.0, 3.0] and out["oos_performance"] == [1.0, 1.0]
    assert out["degradation_slope"] is None  # every split's winner scored 3 in-sample: no line to fit
    assert out["prob_oos_loss"] == 0.0
    json.dumps(out, allow_nan=False)


def test_pbo_by_hand_when_the_winner_holds():
    # Both blocks rank the trials alike: the winner is best out of sample too, rank 3 of 3,
    # ω = 3/4, λ = ln 3 > 0 → PBO 0.
    x = np.array([[1, 2, 3], [1, 2, 3], [0, 1, 2], [0, 1, 2]], dtype=float)
    out = pbo_cscv(x, n_splits=2, metric="mean")
    assert out["pbo"] == 0.0 and out["logits"] == pytest.approx([math.log(3)] * 2)


def test_identical_trials_count_as_overfit():
    # All tied: the winner's average rank (1 + 2 + 3) / 3 = 2 is the median, λ = 0, counted as ≤ 0.
    x = np.tile(np.array([[0.01], [0.02], [-0.01], [0.03]]), (1, 3))
    assert pbo_cscv(x, n_splits=2)["pbo"] == 1.0


def test_pbo_of_pure_noise_is_about_one_half():
    pbos, slopes = [], []
    for seed in range(20):
        x = np.random.default_rng(seed).normal(0.0, 0.01, size=(600, 20))
        out = pbo_cscv(x, n_splits=10)
        assert 0.0 <= out["pbo"] <= 1.0 and out["n_combinations"] == 252  # C(10, 5)
        pbos.append(out["pbo"])
        slopes.append(out["degradation_slope"])
    # One sample's PBO swings widely (its splits share data); the average over samples does not.
    assert 0.4 <= np.mean(pbos) <= 0.6
    assert np.mean(slopes) < 0  # in-sample luck is given back out of sample


def test_pbo_of_a_genuinely_better_trial_is_about_zero():
    x = np.random.default_rng(1).normal(0.0, 0.01, size=(1000, 20))
    x[:, 7] += 0.003  # a per-period Sharpe of 0.3 against 0 for the rest
    frame = pd.DataFrame(x, columns=[f"fast={i}" for i in range(20)])
    out = pbo_cscv(frame, n_splits=16)
    assert out["n_combinations"] == 12870  # C(16, 8)
    assert out["pbo"] < 0.05
    assert out["prob_oos_loss"] < 0.05
    assert set(out["selected"]) == {"fast=7"}


@pytest.mark.parametrize(
    ("metric", "direct"),
    [
        ("sharpe", lambda rows: rows.mean(axis=0) / rows.std(axis=0, ddof=1)),
        ("mean", lambda rows: rows.mean(axis=0)),
        ("total_return", lambda rows: np.prod(1 + rows, axis=0) - 1),
    ],
)
def test_vectorized_scores_match_scoring_each_split_directly(metric, direct):
    # 103 rows into 6 blocks: uneven block sizes (17 or 18 rows) must be handled the same way.
    x = np.random.default_rng(4).normal(0.0005, 0.01, size=(103, 7))
    fast, slow = pbo_cscv(x, n_splits=6, metric=metric), pbo_cscv(x, n_splits=6, metric=direct)
    assert fast["selected"] == slow["selected"]
    for key in ("logits", "is_performance", "oos_performance"):
        assert fast[key] == pytest.approx(slow[key], rel=1e-9)
    assert fast["pbo"] == slow["pbo"] and slow["metric"] == "<lambda>"


def test_a_trial_that_never_trades_gets_a_sharpe_of_zero():
    x = np.random.default_rng(8).normal(0.0, 0.01, size=(40, 4))
    x[:, 0] = 0.0
    out = pbo_cscv(x, n_splits=4)
    json.dumps(out, allow_nan=False)
    assert all(v is not None for v in out["logits"])


def test_pbo_rejects_bad_input():
    x = np.zeros((40, 3))
    cases = [
        (np.zeros(40), {}, "must be 2-D"),
        (np.zeros((40, 1)), {}, "at least 2 trials"),
        (np.where(np.eye(40, 3) > 0, np.nan, 0.0), {}, "must be finite"),
        (x, {"n_splits": 5}, "n_splits must be an even integer >= 2, got 5"),
        (x, {"n_splits": 0}, "n_splits must be an even integer"),
        (x, {"n_splits": 22}, "at least 2·n_splits = 44 rows, got 40"),
        (x, {"metric": "calmar"}, "metric must be one of"),
        (x - 2.0, {"metric": "total_return"}, "returns >= -1"),
        (x, {"metric": lambda rows: rows.mean()}, r"one score per trial, shape \(3,\)"),
    ]
    for matrix, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pbo_cscv(matrix, **{"n_splits": 4, **kwargs})


# --------------------------------------------------------------------------------------------------
# Block bootstrap
# --------------------------------------------------------------------------------------------------


def _ar1(seed: int, n: int = 1000, phi: float = 0.6, sigma: float = 0.001) -> np.ndarray:
    return lfilter([1.0], [1.0, -phi], np.random.default_rng(seed).normal(0.0, sigma, n))


def test_same_seed_same_paths_other_seed_other_paths():
    r = np.random.default_rng(0).normal(0.0005, 0.01, 300)
    for method in ("stationary", "circular"):
        a = block_bootstrap(r, 10, 200, seed=42, method=method)
        b = block_bootstrap(r, 10, 200, seed=42, method=method)
        c = block_bootstrap(r, 10, 200, seed=43, method=method)
        pd.testing.assert_frame_equal(a.samples, b.samples)
        assert a.summary() == b.summary()
        assert not np.allclose(a.samples["sharpe"], c.samples["sharpe"])


def test_circular_blocks_are_runs_of_consecutive_periods():
    n, block = 50, 7
    idx = bootstrap_indices(n, block, 30, np.random.default_rng(1), "circular")
    assert idx.shape == (30, n) and idx.min() >= 0 and idx.max() < n
    step = (idx[:, 1:] - idx[:, :-1]) % n
    inside = (np.arange(1, n) % block) != 0  # positions that continue a block
    assert (step[:, inside] == 1).all()


def test_stationary_blocks_have_the_requested_mean_length():
    n, block, paths = 2000, 8.0, 100
    idx = bootstrap_indices(n, block, paths, np.random.default_rng(2), "stationary")
    breaks = ((idx[:, 1:] - idx[:, :-1]) % n != 1).sum()  # a new block rarely continues the last one
    mean_length = paths * n / (breaks + paths)
    assert mean_length == pytest.approx(block, rel=0.05)
    # block 1 is the iid bootstrap: every period drawn uniformly.
    iid = bootstrap_indices(n, 1.0, paths, np.random.default_rng(3), "stationary")
    counts = np.bincount(iid.ravel(), minlength=n)
    assert counts.mean() == paths and counts.std() < 2 * math.sqrt(paths)


def test_estimates_are_the_backtest_metrics_and_samples_are_scored_alike():
    r = np.random.default_rng(6).normal(0.0004, 0.012, 400)
    result = block_bootstrap(r, 5, 50, seed=1, periods_per_year=252, risk_free=0.02)
    single = performance_metrics(r, None, 252, risk_free=0.02)
    for name in STATISTICS:
        assert result.estimates[name] == pytest.approx(single[name])
    # Replaying the generator gives the first path; scored by performance_metrics it matches row 0.
    path = r[bootstrap_indices(r.size, 5.0, 50, np.random.default_rng(1), "stationary")[0]]
    first = performance_metrics(path, None, 252, risk_free=0.02)
    for name in STATISTICS:
        assert result.samples[name].iloc[0] == pytest.approx(first[name])


def test_summary_intervals_and_stress_read_the_samples():
    r = np.random.default_rng(9).normal(0.0003, 0.01, 500)
    result = block_bootstrap(r, "auto", 300, seed=5, confidence=0.9)
    summary = result.summary()
    json.dumps(summary, allow_nan=False)
    for name in STATISTICS:
        values = result.samples[name].to_numpy()
        lower, upper = np.quantile(values, [0.05, 0.95])
        assert summary["statistics"][name]["lower"] == pytest.approx(lower)
        assert summary["statistics"][name]["upper"] == pytest.approx(upper)
        assert summary["stress"][name]["q01"] == pytest.approx(np.quantile(values, 0.01))
        assert summary["stress"][name]["q05"] == pytest.approx(np.quantile(values, 0.05))
        assert summary["stress"][name]["q01"] <= summary["stress"][name]["q05"]
    assert summary["block"] >= 1 and summary["statistics"]["sharpe"]["undefined"] == 0


def test_sharpe_interval_covers_the_true_sharpe_about_95_percent_of_the_time():
    # iid normal returns with a true per-period Sharpe of 0.001 / 0.01 = 0.1 (ppy = 1: no scaling).
    experiments, hits = 200, 0
    for e in range(experiments):
        r = np.random.default_rng(1000 + e).normal(0.001, 0.01, 250)
        lower, upper = block_bootstrap(r, 1, 400, seed=e, periods_per_year=1).interval("sharpe")
        hits += lower <= 0.1 <= upper
    # Binomial standard error at 95 % over 200 experiments is 1.5 points.
    assert 0.90 <= hits / experiments <= 0.99


def test_longer_blocks_see_the_risk_of_autocorrelated_returns():
    # AR(1) with phi 0.6: the sum of n returns has a standard deviation of about
    # sqrt(n)·sigma / (1 − phi), twice what resampling single periods (iid) implies: sqrt((1+phi)/(1−phi)).
    n, phi, sigma = 1000, 0.6, 0.001
    truth = math.sqrt(n) * sigma / (1 - phi)
    iid, blocks = [], []
    for seed in range(4):
        x = _ar1(seed, n, phi, sigma)
        iid.append(block_bootstrap(x, 1, 400, seed=1).samples["total_return"].std() / truth)
        blocks.append(block_bootstrap(x, 25, 400, seed=1).samples["total_return"].std() / truth)
        assert blocks[-1] > 1.4 * iid[-1]
        assert optimal_block_length(x) > 5  # Politis-White sees the dependence
    assert np.mean(iid) < 0.6
    assert 0.7 <= np.mean(blocks) <= 1.3


def test_bootstrap_rejects_bad_input():
    r = np.zeros(10) + 0.01
    cases = [
        ((np.array([0.1]), 1, 10, 0), {}, "at least 2 periods"),
        ((np.array([0.1, np.nan]), 1, 10, 0), {}, "must be finite"),
        ((r, 0.5, 10, 0), {}, "block must be a number >= 1 or 'auto', got 0.5"),
        ((r, "long", 10, 0), {}, "block must be a number >= 1 or 'auto'"),
        ((r, 2, 0, 0), {}, "n_paths must be an integer >= 1, got 0"),
        ((r, 2, 10, None), {}, "seed must be an integer"),
        ((r, 2, 10, 0), {"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ((r, 2, 10, 0), {"method": "moving"}, "method must be one of"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            block_bootstrap(*args, **kwargs)
    constant = block_bootstrap(r, 2, 20, 0)  # every path is constant: Sharpe undefined, not NaN in JSON
    assert constant.summary()["statistics"]["sharpe"]["undefined"] == 20
    json.dumps(constant.summary(), allow_nan=False)
