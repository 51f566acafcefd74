"""Out-of-sample metrics: MSE, directional accuracy, AUC, IC, rank IC and the signal's Sharpe ratio,
checked against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from quanto.evaluation.metrics import METRIC_KEYS, positions, prediction_metrics, sharpe_ratio, signal_returns

DAYS = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC").to_numpy()


def test_regression_metrics_by_hand():
    pred = np.array([0.1, -0.2, 0.3, 0.05, 0.7])
    fwd = np.array([0.2, -0.1, -0.3, 0.1, np.nan])
    m = prediction_metrics(pred, fwd, fwd, DAYS, "regression", periods_per_year=4)
    assert list(m) == list(METRIC_KEYS)
    assert m["n"] == 4  # the last row is unlabeled and ignored
    assert m["mse"] == pytest.approx((0.01 + 0.01 + 0.36 + 0.0025) / 4)
    assert m["accuracy"] == pytest.approx(0.75)
    # Deviations from the means (0.0625, -0.025): sum dp*dr = -0.03875, sum dp^2 = 0.126875, sum dr^2 = 0.1475.
    assert m["ic"] == pytest.approx(-0.03875 / math.sqrt(0.126875 * 0.1475))
    # Ranks pred (3,1,4,2) vs fwd (4,2,1,3): sum d^2 = 12, rho = 1 - 6*12/(4*15) = -0.2.
    assert m["rank_ic"] == pytest.approx(-0.2)
    # Signal returns sign(pred) * fwd = (0.2, 0.1, -0.3, 0.1): mean 0.025, sample variance 0.1475 / 3;
    # annualized with 4 periods a year: x sqrt(4).
    assert m["sharpe"] == pytest.approx(0.025 / math.sqrt(0.1475 / 3) * 2)
    assert m["auc"] is None


def test_classification_metrics_by_hand():
    pred = np.array([0.9, 0.2, 0.6, 0.4])
    label = np.array([1.0, 0.0, 0.0, 1.0])
    fwd = np.array([0.03, -0.01, -0.02, 0.01])
    m = prediction_metrics(pred, label, fwd, DAYS[:4], "classification", periods_per_year=1)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered right
    assert m["rank_ic"] == pytest.approx(0.4)  # ranks (4,1,3,2) vs (4,2,1,3): sum d^2 = 6
    assert m["mse"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.36) / 4)  # the Brier score
    # Positions sign(p - 0.5) = (+, -, +, -): returns (0.03, 0.01, -0.02, -0.01).
    returns = np.array([0.03, 0.01, -0.02, -0.01])
    assert m["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1))


def test_signal_returns_average_symbols_per_timestamp_in_time_order():
    d1, d2 = DAYS[0], DAYS[1]
    ts = np.array([d2, d1, d2, d1])
    pred = np.array([1.0, 1.0, 1.0, -1.0])
    fwd = np.array([-0.01, 0.02, 0.03, 0.04])
    # d1: (+0.02 - 0.04) / 2 = -0.01; d2: (-0.01 + 0.03) / 2 = 0.01.
    assert signal_returns(pred, fwd, ts, "regression").tolist() == pytest.approx([-0.01, 0.01])
    # A probability of exactly 0.5 takes no position; a missing forward return drops the row.
    p = np.array([0.5, 0.7, 0.2, 0.9])
    fwd_missing = np.array([0.05, 0.02, 0.03, np.nan])
    assert signal_returns(p, fwd_missing, ts, "classification").tolist() == pytest.approx(
        [0.02, (0.0 - 0.03) / 2]
    )
    assert positions(np.array([0.2, 0.5, 0.8]), "classification").tolist() == [-1.0, 0.0, 1.0]


def test_sharpe_ratio_is_none_when_undefined():
    assert sharpe_ratio(np.array([0.01])) is None
    assert sharpe_ratio(np.array([0.01, 0.01, 0.01])) is None
    r = np.array([0.01, -0.02, 0.03])
    assert sharpe_ratio(r, 252) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))


def test_undefined_values_are_none_and_json_safe():
    one_class = prediction_metrics(
        np.array([0.2, 0.3]), np.array([1.0, 1.0]), np.array([0.1, 0.2]), DAYS[:2], "classification", 1
    )
    assert one_class["auc"] is None and one_class["accuracy"] == 0.0
    constant = prediction_metrics(
        np.zeros(3), np.array([0.1, -0.1, 0.2]), np.array([0.1, -0.1, 0.2]), DAYS[:3], "regression", 1
    )
    assert constant["ic"] is None and constant["rank_ic"] is None and constant["sharpe"] is None
    empty = prediction_metrics(
        np.array([0.1]), np.array([np.nan]), np.array([np.nan]), DAYS[:1], "regression", 1
    )
    assert empty == {
        "n": 0,
        "mse": None,
        "accuracy": None,
        "auc": None,
        "ic": None,
        "rank_ic": None,
        "sharpe": None,
    }
    for m in (one_class, constant, empty):
        json.dumps(m, allow_nan=False)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="lengths differ: pred 2, label 1"):
        prediction_metrics(np.zeros(2), np.zeros(1), np.zeros(2), DAYS[:2], "regression", 1)
    with pytest.raises(ValueError, match="objective must be 'regression' or 'classification', got 'ranking'"):
        prediction_metrics(np.zeros(2), np.zeros(2), np.zeros(2), DAYS[:2], "ranking", 1)
