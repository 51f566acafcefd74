"""The label-permutation canary: clean runs pass, leaking ones are flagged with the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chi2, spearmanr

from quanto.evaluation import canary
from quanto.evaluation.stage import summarize
from quanto.evaluation.walkforward import CANARY_COLUMN, make_folds, walk_forward
from quanto.models import base
from tests.unit.test_walkforward import FEATURES, LeastSquares, as_direction, job, least_squares, panel  # noqa: F401

LIGHTGBM = {
    "kind": "lightgbm",
    "params": {"n_estimators": 25, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 10},
    "n_jobs": 1,
}


def run(data, features=FEATURES, objective="regression", model=None) -> dict:
    """The canary's verdict of a walk-forward with 7 folds of 20 test bars."""
    cfg = job({"train_bars": 60, "test_bars": 20, "embargo_bars": 1}, objective, canary=True, model=model)
    folds = make_folds(data["ts"], cfg.walk_forward)
    outcomes = walk_forward(base.Design(data, list(features)), cfg, folds)
    assert all(CANARY_COLUMN in o.predictions for o in outcomes)
    summary = summarize(cfg, folds, outcomes).summary
    json.dumps(summary, allow_nan=False)
    return summary["canary"]


def weak_signal(seed: int, **kw) -> object:
    """Four symbols, 200 bars, a genuine but weak signal (IC about 0.1), one-bar labels."""
    return panel(
        n_bars=200, symbols=("A", "B", "C", "D"), seed=seed, strength=0.15, noise=1.0, horizon=1, **kw
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_clean_linear_model_passes(seed):
    verdict = run(weak_signal(seed))
    assert verdict["leaking"] is False and verdict["folds"] == 7
    assert verdict["ic"]["df"] == 7 and verdict["ic"]["p_value"] > 0.001
    assert verdict["message"].startswith("clean")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_label_as_a_feature_is_flagged(seed):
    data = weak_signal(seed)
    data["leak"] = data["label"]  # the future return, known "today"
    verdict = run(data, [*FEATURES, "leak"])
    assert verdict["leaking"] is True
    assert verdict["ic"]["p_value"] < 0.001 and verdict["max_abs_rank_ic"] > 0.5
    assert "leaking: a model trained on shuffled labels kept out-of-sample skill" in verdict["message"]


@pytest.mark.parametrize("seed", [0, 1])
def test_lightgbm_fitted_to_noise_shows_a_leaked_label_given_enough_rows(seed):
    # Trees fitted to shuffled labels use any one feature weakly: 8 symbols x 300 bars make it visible.
    data = panel(n_bars=300, symbols=tuple("ABCDEFGH"), seed=seed, strength=0.15, noise=1.0, horizon=1)
    data["leak"] = data["label"]
    verdict = run(data, [*FEATURES, "leak"], model=LIGHTGBM)
    assert verdict["leaking"] is True and verdict["ic"]["p_value"] < 0.001


class Peeking(LeastSquares):
    """A broken family that reads the answer from the design at prediction time."""

    def predict(self, design, rows):
        return np.nan_to_num(design.frame["fwd_return"].to_numpy()[rows])


def test_a_model_that_reads_the_label_while_predicting_is_flagged(monkeypatch):
    monkeypatch.setitem(base.FAMILIES, "linear", Peeking)
    verdict = run(weak_signal(3))
    assert verdict["leaking"] is True and verdict["accuracy"]["p_value"] < 1e-6


def test_a_clean_lightgbm_classifier_passes():
    verdict = run(
        as_direction(weak_signal(4)),
        objective="classification",
        model={**LIGHTGBM, "objective": "classification"},
    )
    assert verdict["leaking"] is False


def test_shuffled_labels_are_a_reproducible_permutation_per_fold_and_window():
    y = np.arange(50.0)
    a = canary.shuffled(y, 42, 3, "train")
    assert sorted(a) == y.tolist() and not np.array_equal(a, y)
    assert np.array_equal(a, canary.shuffled(y, 42, 3, "train"))
    assert not np.array_equal(a, canary.shuffled(y, 42, 4, "train"))
    assert not np.array_equal(a, canary.shuffled(y, 42, 3, "valid"))


def shifted_null_by_loop(
    p: dict, r: dict, bars: int, shifts: range
) -> tuple[float, list[float], float, list[float]]:
    """A plain-loop oracle: rank IC and accuracy of (p[s, t], r[s, t - k mod bars]) for each shift k."""

    def skill(k: int) -> tuple[float, float]:
        pairs = [(p[s, t], r[s, (t - k) % bars]) for s, t in p if (s, (t - k) % bars) in r]
        x, y = np.array(pairs).T
        return spearmanr(x, y).statistic, float(np.mean((x > 0) == (y > 0)))

    ic0, acc0 = skill(0)
    null = [skill(k) for k in shifts]
    return ic0, [ic for ic, _ in null], acc0, [acc for _, acc in null]


def test_fold_stats_against_a_plain_loop_over_time_shifts():
    rng = np.random.default_rng(11)
    bars, horizon = 30, 2
    rows = [(s, t) for s in ("A", "B") for t in range(bars) if (s, t) != ("B", 7)]  # B misses bar 7
    p = {row: rng.normal() for row in rows}
    r = {row: 0.3 * p[row] + rng.normal() for row in rows}
    order = rng.permutation(len(rows))  # rows in any order
    sym = np.array([rows[i][0] for i in order])
    ts = np.array([rows[i][1] for i in order])
    pred = np.array([p[rows[i]] for i in order])
    fwd = np.array([r[rows[i]] for i in order])
    s = canary.fold_stats(pred, fwd, fwd, ts, sym, "regression", horizon_bars=horizon, alpha=0.01)
    ic0, null_ic, acc0, null_acc = shifted_null_by_loop(p, r, bars, range(horizon, bars - horizon + 1))
    assert s["n"] == 59 and s["bars"] == 30 and s["shifts"] == len(null_ic) == 27
    assert s["rank_ic"] == pytest.approx(ic0) and s["accuracy"] == pytest.approx(acc0)
    assert s["z_ic"] == pytest.approx((ic0 - np.mean(null_ic)) / np.std(null_ic, ddof=1))
    assert s["rank_ic_threshold"] == pytest.approx(2.5758293035489 * np.std(null_ic, ddof=1))
    assert s["null_accuracy"] == pytest.approx(np.mean(null_acc))
    assert s["z_accuracy"] == pytest.approx((acc0 - np.mean(null_acc)) / np.std(null_acc, ddof=1))
    json.dumps(s, allow_nan=False)


def test_fold_stats_of_a_short_window_cannot_test():
    ts = np.repeat(np.arange(10), 2)
    fwd = np.linspace(-1, 1, 20)
    s = canary.fold_stats(
        fwd, fwd, fwd, ts, np.tile(["A", "B"], 10), "regression", horizon_bars=2, alpha=0.01
    )
    assert s["shifts"] == 7 and s["z_ic"] is None and s["z_accuracy"] is None  # fewer than MIN_SHIFTS


def test_verdict_combines_folds_as_chi_square():
    stats = [
        {"z_ic": 1.0, "z_accuracy": 0.5, "rank_ic": 0.1},
        {"z_ic": -2.0, "z_accuracy": None, "rank_ic": -0.3},
    ]
    v = canary.verdict(stats, alpha=0.001)
    assert v["ic"] == {"chi2": 5.0, "df": 2, "p_value": pytest.approx(chi2.sf(5.0, 2))}
    assert v["accuracy"]["chi2"] == 0.25 and v["accuracy"]["df"] == 1
    assert v["leaking"] is False and v["max_abs_rank_ic"] == pytest.approx(0.3)
    loud = canary.verdict([{"z_ic": 6.0, "z_accuracy": 0.0, "rank_ic": 0.9}], alpha=0.001)
    assert loud["leaking"] is True and "IC (chi2 36.0 on 1 folds" in loud["message"]
    none = canary.verdict([{"z_ic": None, "z_accuracy": None, "rank_ic": None}], alpha=0.001)
    assert none["leaking"] is None and "undetermined" in none["message"]
