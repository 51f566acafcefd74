"""Probability of backtest overfitting (PBO) by combinatorially symmetric cross-validation (CSCV).

Bailey, Borwein, López de Prado & Zhu, "The Probability of Backtest Overfitting" (2015). Given the
per-period returns of N trials (strategy variants of a parameter sweep) over the same T periods:

1. Split the T rows, in time order, into S contiguous blocks of (nearly) equal size; S is even.
2. For every one of the C(S, S/2) ways to pick half the blocks: the picked blocks are the in-sample
   set J, the other half the out-of-sample set J̄ (each split and its mirror image both occur).
3. Score every trial on J and on J̄ with the performance metric (Sharpe ratio by default).
4. Take the in-sample best trial n* and its out-of-sample relative rank ω = rank / (N + 1), rank in
   1..N ascending (ties share their average rank); its logit is λ = ln(ω / (1 − ω)).
5. PBO = the share of splits with λ ≤ 0: how often the in-sample winner is at or below the
   out-of-sample median. Pure noise gives about 0.5; a genuinely better trial gives about 0.

Performance degradation: the OLS line of the winner's out-of-sample score on its in-sample score over
the splits (a negative slope: the better it looked, the worse it did), and the probability that the
winner loses out of sample (out-of-sample score < 0).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd

from quanto.backtest.metrics import finite_or_none

Metric = Literal["sharpe", "mean", "total_return"]
METRICS: tuple[str, ...] = ("sharpe", "mean", "total_return")

# Splits scored at once: bounds memory (a few splits × N floats each) with S = 16 (12,870 splits).
_CHUNK_SPLITS = 2048


def _block_sums(x: np.ndarray, bounds: list[tuple[int, int]], metric: str) -> tuple[np.ndarray, ...]:
    """Per block and trial: the sufficient statistics the metric needs, additive over blocks."""
    count = np.array([hi - lo for lo, hi in bounds], dtype=float)[:, None]
    if metric == "total_return":
        with np.errstate(divide="ignore"):  # a −100 % period makes log growth −inf: growth 0
            logs = np.log1p(x)
        return count, np.stack([logs[lo:hi].sum(axis=0) for lo, hi in bounds])
    s1 = np.stack([x[lo:hi].sum(axis=0) for lo, hi in bounds])
    s2 = np.stack([(x[lo:hi] ** 2).sum(axis=0) for lo, hi in bounds])
    return count, s1, s2


def _score(sums: tuple[np.ndarray, ...], shift: np.ndarray, metric: str) -> np.ndarray:
    """The metric of each (split, trial) from summed block statistics of the centred returns."""
    if metric == "total_return":
        return np.expm1(sums[1])
    count, s1, s2 = sums
    mean = s1 / count
    if metric == "mean":
        return mean + shift
    var = np.maximum(s2 - s1 * mean, 0.0) / (count - 1.0)
    std = np.sqrt(var)
    total_mean = mean + shift
    # A constant trial (one that never trades) has no Sharpe ratio; rank it 0, or ±inf by its mean.
    flat = np.where(total_mean > 0, np.inf, np.where(total_mean < 0, -np.inf, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, total_mean / std, flat)


def _split_scores(
    x: np.ndarray, bounds: list[tuple[int, int]], in_sample: np.ndarray, metric: str | Callable
) -> tuple[np.ndarray, np.ndarray]:
    """(in-sample, out-of-sample) scores, each (splits × trials), for a chunk of block memberships."""
    if callable(metric):
        is_scores, oos_scores = [], []
        for member in in_sample:
            rows = np.concatenate(
                [np.arange(lo, hi) for (lo, hi), m in zip(bounds, member, strict=True) if m]
            )
            rest = np.setdiff1d(np.arange(x.shape[0]), rows)
            is_scores.append(_call_metric(metric, x[rows], x.shape[1]))
            oos_scores.append(_call_metric(metric, x[rest], x.shape[1]))
        return np.array(is_scores), np.array(oos_scores)
    shift = x.mean(axis=0)
    centred = x - shift if metric != "total_return" else x
    blocks = _block_sums(centred, bounds, metric)
    total = tuple(b.sum(axis=0) for b in blocks)
    weights = in_sample.astype(float)
    is_sums = tuple(weights @ b for b in blocks)
    oos_sums = tuple(t - s for t, s in zip(total, is_sums, strict=True))
    return _score(is_sums, shift, metric), _score(oos_sums, shift, metric)


def _call_metric(metric: Callable, rows: np.ndarray, n_trials: int) -> np.ndarray:
    scores = np.asarray(metric(rows), dtype=float)
    if scores.shape != (n_trials,):
        raise ValueError(f"metric must return one score per trial, shape ({n_trials},), got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("metric returned NaN; return -inf (or a number) for a trial that cannot be scored")
    return scores


def _relative_rank(oos: np.ndarray, best: np.ndarray) -> np.ndarray:
    """rank / (N + 1) of each split's winner among its out-of-sample scores (average rank for ties)."""
    chosen = np.take_along_axis(oos, best[:, None], axis=1)
    below = (oos < chosen).sum(axis=1)
    tied = (oos == chosen).sum(axis=1)
    return (below + (tied + 1) / 2.0) / (oos.shape[1] + 1)


def _degradation(is_best: np.ndarray, oos_best: np.ndarray) -> tuple[float | None, float | None]:
    """OLS slope and intercept of the winner's out-of-sample score on its in-sample score."""
    ok = np.isfinite(is_best) & np.isfinite(oos_best)
    x, y = is_best[ok], oos_best[ok]
    if x.size < 2 or np.ptp(x) == 0:
        return None, None
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    return finite_or_none(slope), finite_or_none(y.mean() - slope * x.mean())


def pbo_cscv(
    performance_matrix: pd.DataFrame | np.ndarray,
    n_splits: int = 16,
    metric: Metric | Callable[[np.ndarray], np.ndarray] = "sharpe",
) -> dict[str, Any]:
    """Probability of backtest overfitting of N trials by CSCV (see the module docstring).

    performance_matrix: T × N per-period returns, one column per trial, rows in time order (a
        DataFrame's column names label the trials).
    n_splits: S, the even number of blocks; C(S, S/2) splits are scored (16 → 12,870).
    metric: "sharpe" (mean / std with ddof 1, per period: ranks do not need annualizing), "mean",
        "total_return" (compounded), or a function from a (rows × N) array to N scores.

    Returns a JSON-safe dict: pbo; logits, oos_relative_rank, is_performance, oos_performance (the
    winner's scores) and selected (the winner's label) per split; degradation_slope and
    degradation_intercept; prob_oos_loss (share of splits whose winner scores < 0 out of sample);
    n_rows, n_trials, n_splits, n_combinations, metric.
    Raises ValueError naming the argument for a non-2-D or non-finite matrix, fewer than 2 trials, an
    odd or < 2 n_splits, fewer than 2·n_splits rows, or an unknown metric.
    """
    labels = (
        [str(c) for c in performance_matrix.columns] if isinstance(performance_matrix, pd.DataFrame) else None
    )
    x = np.asarray(performance_matrix, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"performance_matrix must be 2-D (T periods × N trials), got shape {x.shape}")
    t, n = x.shape
    if n < 2:
        raise ValueError(f"performance_matrix needs at least 2 trials (columns), got {n}")
    if not np.isfinite(x).all():
        raise ValueError(f"performance_matrix must be finite, got {int((~np.isfinite(x)).sum())} NaN or inf")
    if (
        isinstance(n_splits, bool)
        or not isinstance(n_splits, (int, np.integer))
        or n_splits < 2
        or n_splits % 2
    ):
        raise ValueError(f"n_splits must be an even integer >= 2, got {n_splits!r}")
    if t < 2 * n_splits:
        raise ValueError(f"performance_matrix needs at least 2·n_splits = {2 * n_splits} rows, got {t}")
    if not callable(metric) and metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS} or a function, got {metric!r}")
    if metric == "total_return" and (x < -1).any():
        raise ValueError("total_return needs returns >= -1 (a loss beyond -100 % is not a simple return)")

    edges = np.linspace(0, t, n_splits + 1).round().astype(int)
    bounds = list(itertools.pairwise(edges.tolist()))
    picks = np.array(list(itertools.combinations(range(n_splits), n_splits // 2)))
    membership = np.zeros((len(picks), n_splits), dtype=bool)
    np.put_along_axis(membership, picks, True, axis=1)

    best_parts, is_parts, oos_parts, rank_parts = [], [], [], []
    for lo in range(0, len(membership), _CHUNK_SPLITS):
        is_scores, oos_scores = _split_scores(x, bounds, membership[lo : lo + _CHUNK_SPLITS], metric)
        best = np.argmax(is_scores, axis=1)  # ties go to the first trial
        best_parts.append(best)
        is_parts.append(np.take_along_axis(is_scores, best[:, None], axis=1)[:, 0])
        oos_parts.append(np.take_along_axis(oos_scores, best[:, None], axis=1)[:, 0])
        rank_parts.append(_relative_rank(oos_scores, best))
    best = np.concatenate(best_parts)
    is_best, oos_best = np.concatenate(is_parts), np.concatenate(oos_parts)
    omega = np.concatenate(rank_parts)
    logits = np.log(omega / (1.0 - omega))  # ω is in (0, 1): rank ∈ [1, N] over N + 1
    slope, intercept = _degradation(is_best, oos_best)

    def values(a: np.ndarray) -> list[float | None]:
        return [finite_or_none(v) for v in a]

    return {
        "pbo": float(np.mean(logits <= 0)),
        "logits": values(logits),
        "oos_relative_rank": values(omega),
        "is_performance": values(is_best),
        "oos_performance": values(oos_best),
        "selected": [labels[i] for i in best] if labels is not None else [int(i) for i in best],
        "degradation_slope": slope,
        "degradation_intercept": intercept,
        "prob_oos_loss": float(np.mean(oos_best < 0)),
        "n_rows": int(t),
        "n_trials": int(n),
        "n_splits": int(n_splits),
        "n_combinations": len(membership),
        "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
    }
