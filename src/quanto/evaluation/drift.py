"""Live-prediction drift: how the model's recent predictions compare with what then happened.

The trading loop's monitor feeds (prediction, realized) pairs as labels become known: the realized
outcome in the label's units (classification: the class 0/1; regression: the realized return).
Over the last `window` pairs it reports the directional accuracy and the calibration: mean
prediction against the mean realized outcome, the Brier score (classification), and reliability
bins (classification: equal-width bins of P(class 1); regression: equal-count bins of the
prediction) with the expected calibration error, the row-weighted mean |bin mean prediction - bin
mean realized|. Every value is JSON-safe (None when undefined).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from quanto.evaluation.metrics import Objective, check_objective, directions


def _bins(pred: np.ndarray, objective: Objective, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin of each prediction, bin edges)."""
    if objective == "classification":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.unique(np.quantile(pred, np.linspace(0.0, 1.0, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
    return which, edges


def drift_stats(
    prediction: np.ndarray, realized: np.ndarray, objective: Objective, n_bins: int = 10
) -> dict[str, Any]:
    """Accuracy and calibration of `prediction` against `realized` (see the module docstring):
    n, accuracy, mean_prediction, mean_realized, calibration_gap (mean_prediction - mean_realized),
    brier (classification), ece and bins [{lo, hi, n, mean_prediction, mean_realized}]."""
    objective = check_objective(objective)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(realized, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"prediction {p.shape} and realized {y.shape} must be 1-d and of one length")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("prediction and realized must be finite")
    if objective == "classification":
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("classification: realized must be 0 or 1")
        if ((p < 0) | (p > 1)).any():
            raise ValueError("classification: prediction must be a probability in [0, 1]")
    out: dict[str, Any] = {
        "n": len(p),
        "accuracy": None,
        "mean_prediction": None,
        "mean_realized": None,
        "calibration_gap": None,
        "brier": None,
        "ece": None,
        "bins": [],
    }
    if not len(p):
        return out
    up, real_up = directions(p, y, y, objective)
    out["accuracy"] = float(np.mean(up == real_up))
    out["mean_prediction"] = float(p.mean())
    out["mean_realized"] = float(y.mean())
    out["calibration_gap"] = out["mean_prediction"] - out["mean_realized"]
    if objective == "classification":
        out["brier"] = float(np.mean((p - y) ** 2))
    which, edges = _bins(p, objective, n_bins)
    ece = 0.0
    for b in range(max(len(edges) - 1, 1)):
        inside = which == b
        if not inside.any():
            continue
        mp, my = float(p[inside].mean()), float(y[inside].mean())
        ece += inside.mean() * abs(mp - my)
        hi = float(edges[b + 1]) if len(edges) > 1 else float(edges[0])
        out["bins"].append(
            {
                "lo": float(edges[b]),
                "hi": hi,
                "n": int(inside.sum()),
                "mean_prediction": mp,
                "mean_realized": my,
            }
        )
    out["ece"] = float(ece)
    return out


class DriftMonitor:
    """Rolling drift statistics over the last `window` (prediction, realized) pairs."""

    def __init__(self, objective: Objective, window: int = 250, n_bins: int = 10) -> None:
        self.objective = check_objective(objective)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.window = window
        self.n_bins = n_bins
        self._pairs: deque[tuple[float, float]] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._pairs)

    def update(self, prediction: float, realized: float) -> None:
        """Add one pair (the oldest drops out once `window` pairs are held)."""
        self.extend([prediction], [realized])

    def extend(self, predictions: np.ndarray, realized: np.ndarray) -> None:
        """Add pairs in order; they are checked like `drift_stats` checks them before any is kept."""
        p = np.atleast_1d(np.asarray(predictions, dtype=np.float64))
        y = np.atleast_1d(np.asarray(realized, dtype=np.float64))
        drift_stats(p, y, self.objective, self.n_bins)  # validates; cheap next to a trading step
        self._pairs.extend(zip(p.tolist(), y.tolist(), strict=True))

    def stats(self) -> dict[str, Any]:
        """`drift_stats` of the pairs in the window, plus `window`."""
        p = np.array([a for a, _ in self._pairs], dtype=np.float64)
        y = np.array([b for _, b in self._pairs], dtype=np.float64)
        return {"window": self.window, **drift_stats(p, y, self.objective, self.n_bins)}
