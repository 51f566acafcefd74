"""Out-of-sample metrics of predictions against what happened, with one definition for the folds,
the stitched series, the baselines and the canary.

A prediction is a regression value or P(class 1). Its *direction* is up when the value is > 0
(regression) or > 0.5 (classification); its simulated *signal* holds sign(value) or sign(p - 0.5)
of each symbol for the label's horizon and earns that sign times the forward return. Every metric
is JSON-safe: a float, an int, or None when undefined (too few rows, one class, a constant side),
never NaN.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from quanto.backtest.metrics import finite_or_none, performance_metrics

Objective = Literal["regression", "classification"]

# The names of `prediction_metrics`, in display order; stable, since reports and tests read them.
METRIC_KEYS = ("n", "mse", "accuracy", "auc", "ic", "rank_ic", "sharpe")


def check_objective(objective: str) -> Objective:
    """`objective` when it is "regression" or "classification", else a ValueError naming it."""
    if objective not in ("regression", "classification"):
        raise ValueError(f"objective must be 'regression' or 'classification', got {objective!r}")
    return objective  # type: ignore[return-value]


def positions(pred: np.ndarray, objective: Objective) -> np.ndarray:
    """The simulated signal of each prediction: -1, 0 or +1 (sign of value, or of p - 0.5)."""
    pred = np.asarray(pred, dtype=np.float64)
    return np.sign(pred - 0.5) if check_objective(objective) == "classification" else np.sign(pred)


def directions(
    pred: np.ndarray, label: np.ndarray, fwd_return: np.ndarray, objective: Objective
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted up, realized up) as bool arrays: regression pred > 0 and fwd_return > 0;
    classification p > 0.5 and label == 1."""
    pred = np.asarray(pred, dtype=np.float64)
    if check_objective(objective) == "classification":
        return pred > 0.5, np.asarray(label, dtype=np.float64) == 1.0
    return pred > 0.0, np.asarray(fwd_return, dtype=np.float64) > 0.0


def signal_returns(
    pred: np.ndarray, fwd_return: np.ndarray, ts: np.ndarray, objective: Objective
) -> np.ndarray:
    """Per-period returns of the simulated signal, in time order: at each timestamp, the mean over its
    rows (symbols, equally weighted) of position x forward return. Rows without a finite forward
    return or prediction are left out; a timestamp without rows gives no period."""
    pred = np.asarray(pred, dtype=np.float64)
    fwd_return = np.asarray(fwd_return, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(fwd_return)
    earned = positions(pred[ok], objective) * fwd_return[ok]
    if not len(earned):
        return np.empty(0)
    per_period = pd.Series(earned).groupby(np.asarray(ts)[ok], sort=True).mean()
    return per_period.to_numpy(dtype=np.float64)


def sharpe_ratio(returns: np.ndarray, periods_per_year: float = 1.0) -> float | None:
    """mean / sample std (ddof 1) of per-period `returns`, times sqrt(periods_per_year); None with
    fewer than 2 periods or no variation (the backtest's definition, reused)."""
    return performance_metrics(np.asarray(returns, dtype=np.float64), None, periods_per_year)["sharpe"]


def _correlations(p: np.ndarray, r: np.ndarray) -> tuple[float | None, float | None]:
    # A constant side makes a correlation undefined (numpy/scipy would warn and return NaN).
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return None, None
    return finite_or_none(np.corrcoef(p, r)[0, 1]), finite_or_none(spearmanr(p, r).statistic)


def prediction_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    fwd_return: np.ndarray,
    ts: np.ndarray,
    objective: Objective,
    periods_per_year: float,
) -> dict[str, Any]:
    """The `METRIC_KEYS` of predictions, on the rows with a finite prediction, label and forward return.

    n: those rows. mse: mean (pred - label)^2 (classification: the Brier score). accuracy: share of
    rows whose predicted direction is the realized one (see `directions`). auc: ROC AUC of P(class 1)
    (classification with both classes; else None). ic: Pearson correlation of prediction and forward
    return over all rows; rank_ic: the same with ranks (Spearman). sharpe: Sharpe ratio of
    `signal_returns`, annualized with `periods_per_year` (periods of the forward return: for labels of
    h bars, bars per year / h, as the walk-forward passes it).
    """
    objective = check_objective(objective)
    pred, label, fwd_return = (np.asarray(a, dtype=np.float64) for a in (pred, label, fwd_return))
    ts = np.asarray(ts)
    if not (len(pred) == len(label) == len(fwd_return) == len(ts)):
        raise ValueError(
            f"lengths differ: pred {len(pred)}, label {len(label)}, fwd_return {len(fwd_return)}, ts {len(ts)}"
        )
    keep = np.isfinite(pred) & np.isfinite(label) & np.isfinite(fwd_return)
    p, y, r, t = pred[keep], label[keep], fwd_return[keep], ts[keep]
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    out["n"] = int(keep.sum())
    if out["n"] == 0:
        return out
    out["mse"] = finite_or_none(np.mean((p - y) ** 2))
    up, real_up = directions(p, y, r, objective)
    out["accuracy"] = float(np.mean(up == real_up))
    if objective == "classification" and len(np.unique(y)) == 2:
        out["auc"] = finite_or_none(roc_auc_score(y, p))
    out["ic"], out["rank_ic"] = _correlations(p, r)
    out["sharpe"] = sharpe_ratio(signal_returns(p, r, t, objective), periods_per_year)
    return out
