"""Live-prediction drift: rolling accuracy and calibration over a window of (prediction, realized)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quanto.evaluation.drift import DriftMonitor, drift_stats


def test_classification_drift_by_hand():
    p = np.array([0.9, 0.8, 0.3, 0.1, 0.6])
    y = np.array([1.0, 0.0, 0.0, 0.0, 1.0])
    s = drift_stats(p, y, "classification", n_bins=2)
    assert s["n"] == 5
    assert s["accuracy"] == pytest.approx(4 / 5)  # 0.8 said up, went down
    assert s["mean_prediction"] == pytest.approx(0.54) and s["mean_realized"] == pytest.approx(0.4)
    assert s["calibration_gap"] == pytest.approx(0.14)
    assert s["brier"] == pytest.approx((0.01 + 0.64 + 0.09 + 0.01 + 0.16) / 5)
    # Bins [0, 0.5): 0.3, 0.1 → mean 0.2 vs 0; [0.5, 1]: 0.9, 0.8, 0.6 → mean 0.7667 vs 2/3.
    low, high = s["bins"]
    assert (low["lo"], low["hi"], low["n"]) == (0.0, 0.5, 2) and low["mean_realized"] == 0.0
    assert high["n"] == 3 and high["mean_prediction"] == pytest.approx(2.3 / 3)
    assert s["ece"] == pytest.approx(2 / 5 * 0.2 + 3 / 5 * abs(2.3 / 3 - 2 / 3))
    json.dumps(s, allow_nan=False)


def test_regression_drift_uses_equal_count_bins_and_no_brier():
    p = np.array([-0.02, -0.01, 0.01, 0.02])
    y = np.array([-0.01, 0.02, 0.03, 0.01])
    s = drift_stats(p, y, "regression", n_bins=2)
    assert s["accuracy"] == pytest.approx(0.75) and s["brier"] is None
    assert [b["n"] for b in s["bins"]] == [2, 2]
    assert s["bins"][0]["mean_realized"] == pytest.approx(0.005) and s["bins"][1][
        "mean_realized"
    ] == pytest.approx(0.02)
    constant = drift_stats(np.zeros(3), np.array([0.01, -0.01, 0.02]), "regression")
    assert len(constant["bins"]) == 1 and constant["bins"][0]["n"] == 3


def test_monitor_keeps_the_last_window_pairs():
    monitor = DriftMonitor("classification", window=3, n_bins=2)
    assert monitor.stats()["n"] == 0 and monitor.stats()["accuracy"] is None
    for p, y in [(0.9, 0.0), (0.8, 0.0), (0.7, 1.0), (0.2, 0.0), (0.6, 1.0)]:
        monitor.update(p, y)
    s = monitor.stats()
    assert len(monitor) == 3 and s["window"] == 3
    assert s == {
        "window": 3,
        **drift_stats(np.array([0.7, 0.2, 0.6]), np.array([1.0, 0.0, 1.0]), "classification", 2),
    }
    assert s["accuracy"] == 1.0  # the two early misses have left the window


def test_bad_pairs_are_refused_before_any_is_kept():
    monitor = DriftMonitor("classification", window=5)
    with pytest.raises(ValueError, match="realized must be 0 or 1"):
        monitor.extend([0.2, 0.7], [0.0, 0.3])
    with pytest.raises(ValueError, match=r"prediction must be a probability in \[0, 1\]"):
        monitor.update(1.5, 1.0)
    with pytest.raises(ValueError, match="must be finite"):
        drift_stats(np.array([np.nan]), np.array([0.0]), "regression")
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        DriftMonitor("regression", window=0)
    assert len(monitor) == 0
