"""Label-permutation canary: a model trained on shuffled labels must show no out-of-sample skill.

Each fold is retrained with its training labels (and validation labels) permuted within their
window, seeded, and predicts its test window. Such a model cannot have learned how features relate
to labels, so its predictions are a random function of the features: out of sample, the size of
its IC and of its accuracy's distance from chance must stay within sampling error. When they do
not, the skill reached the model by another road than its training labels: a model that reads the
answer while predicting, predictions aligned with the wrong rows, or a feature that nearly
determines the label and that the model's random function happens to use (a linear model always
does; trees fitted to noise use any one feature weakly, so for them the canary is no lookahead check
of features, see `quanto features check-lookahead`). A genuine, weak signal does not trip it.

Sampling error comes from the fold itself, not from a formula that assumes independent rows (a
panel's rows share the market's moves and overlapping labels share returns): the canary's
predictions are scored again against the outcomes circularly shifted in time by k bars, for every
k from the label horizon h to bars - h (at most MAX_SHIFTS of them, evenly spread). Each shift keeps
the cross-sections, the autocorrelation of both sides and the outcomes' drift, and breaks only
their alignment. Per fold, for the rank IC and for the directional accuracy,

    z = (value at shift 0 - mean over the shifts) / standard deviation over the shifts

is two-sided (a shuffled model's skill has a random sign). Over the folds, sum z^2 follows
chi^2(folds) without skill; the run is `leaking` when either sum's p-value is below alpha.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm, spearmanr

from quanto.evaluation.metrics import Objective, directions, finite_or_none

# Shifts scored per fold: at least MIN_SHIFTS to estimate the spread, at most MAX_SHIFTS to bound
# the cost on long intraday test windows.
MIN_SHIFTS, MAX_SHIFTS = 8, 200
# Seed-sequence words of the permutations: apart from the model's own seed, one per window.
CANARY_STREAM = 1
WINDOWS = {"train": 0, "valid": 1}


def shuffled(y: np.ndarray, seed: int, fold: int, window: str) -> np.ndarray:
    """`y` permuted, reproducibly from (seed, fold, window); `window` ("train" or "valid") gives the
    training and the validation window different permutations."""
    words = [int(seed) & 0xFFFFFFFF, int(fold), CANARY_STREAM, WINDOWS[window]]
    return np.random.default_rng(words).permutation(np.asarray(y, dtype=np.float64))


def null_shifts(n_bars: int, horizon_bars: float) -> np.ndarray:
    """The shifts k (in bars) that the null distribution is built from: from ceil(horizon) to
    n_bars - ceil(horizon), so a shifted outcome never shares a bar's return with its own row; at
    most MAX_SHIFTS, evenly spread."""
    h = max(1, int(np.ceil(horizon_bars)))
    shifts = np.arange(h, n_bars - h + 1)
    if len(shifts) > MAX_SHIFTS:
        shifts = np.unique(np.linspace(shifts[0], shifts[-1], MAX_SHIFTS).round().astype(np.int64))
    return shifts


def _grid(values: dict[str, np.ndarray], ts: np.ndarray, symbol: np.ndarray) -> dict[str, np.ndarray]:
    """Each column as a (bars x symbols) matrix in time order, NaN where a symbol has no row at a bar."""
    wide = pd.DataFrame({"ts": ts, "symbol": symbol, **values}).pivot(index="ts", columns="symbol")
    return {name: wide[name].sort_index().to_numpy(dtype=np.float64) for name in values}


def _skill(
    p: np.ndarray, y: np.ndarray, r: np.ndarray, objective: Objective
) -> tuple[float | None, float | None]:
    """(rank IC, accuracy) of flat arrays on their finite rows."""
    keep = np.isfinite(p) & np.isfinite(y) & np.isfinite(r)
    if keep.sum() < 2:
        return None, None
    p, y, r = p[keep], y[keep], r[keep]
    ric = finite_or_none(spearmanr(p, r).statistic) if np.ptp(p) > 0 and np.ptp(r) > 0 else None
    up, real_up = directions(p, y, r, objective)
    return ric, float(np.mean(up == real_up))


def _z(actual: float | None, null: list[float]) -> tuple[float | None, float | None, float | None]:
    """(z, null mean, null sd) of `actual` against the shifted values."""
    if actual is None or len(null) < MIN_SHIFTS:
        return None, None, None
    mean, sd = float(np.mean(null)), float(np.std(null, ddof=1))
    return ((actual - mean) / sd if sd > 0 else None), mean, sd


def fold_stats(
    pred: np.ndarray,
    label: np.ndarray,
    fwd_return: np.ndarray,
    ts: np.ndarray,
    symbol: np.ndarray,
    objective: Objective,
    horizon_bars: float,
    alpha: float,
) -> dict[str, Any]:
    """The canary's out-of-sample skill on one fold's test rows against its shifted null (see the
    module docstring), JSON-safe: n (labelled rows), bars, shifts, rank_ic, z_ic, rank_ic_threshold
    (the |rank IC| this fold may reach by chance at two-sided `alpha`), accuracy, null_accuracy (the
    mean over the shifts: what drift alone gives) and z_accuracy. A z is None with fewer than
    MIN_SHIFTS usable shifts or no spread."""
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in (("p", pred), ("y", label), ("r", fwd_return))}
    grid = _grid(cols, np.asarray(ts), np.asarray(symbol))
    p = grid["p"].ravel()
    n_bars = grid["p"].shape[0]
    ric, acc = _skill(p, grid["y"].ravel(), grid["r"].ravel(), objective)
    null_ic, null_acc = [], []
    shifts = null_shifts(n_bars, horizon_bars)
    for k in shifts:
        shifted_ic, shifted_acc = _skill(
            p, np.roll(grid["y"], k, axis=0).ravel(), np.roll(grid["r"], k, axis=0).ravel(), objective
        )
        if shifted_ic is not None:
            null_ic.append(shifted_ic)
        if shifted_acc is not None:
            null_acc.append(shifted_acc)
    z_ic, _, sd_ic = _z(ric, null_ic)
    z_acc, mean_acc, _ = _z(acc, null_acc)
    labelled = np.isfinite(cols["p"]) & np.isfinite(cols["y"]) & np.isfinite(cols["r"])
    return {
        "n": int(labelled.sum()),
        "bars": int(n_bars),
        "shifts": len(shifts),
        "rank_ic": ric,
        "z_ic": finite_or_none(z_ic),
        "rank_ic_threshold": finite_or_none(norm.ppf(1 - alpha / 2) * sd_ic) if sd_ic is not None else None,
        "accuracy": acc,
        "null_accuracy": mean_acc,
        "z_accuracy": finite_or_none(z_acc),
    }


def _combined(zs: list[float]) -> dict[str, Any]:
    stat = float(sum(z * z for z in zs))
    return {"chi2": stat, "df": len(zs), "p_value": float(chi2.sf(stat, len(zs))) if zs else None}


def verdict(stats: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Combine the folds' `fold_stats` (None entries skipped) into the run's verdict, JSON-safe:
    leaking (True / False; None when no fold could be tested), alpha, folds, ic and accuracy
    ({chi2, df, p_value}), max_abs_rank_ic, and a message with the numbers."""
    stats = [s for s in stats if s]
    z_ic = [s["z_ic"] for s in stats if s.get("z_ic") is not None]
    z_acc = [s["z_accuracy"] for s in stats if s.get("z_accuracy") is not None]
    ic, acc = _combined(z_ic), _combined(z_acc)
    ics = [abs(s["rank_ic"]) for s in stats if s.get("rank_ic") is not None]
    out: dict[str, Any] = {
        "leaking": None,
        "alpha": alpha,
        "folds": len(stats),
        "ic": ic,
        "accuracy": acc,
        "max_abs_rank_ic": max(ics) if ics else None,
        "message": "",
    }
    if not z_ic and not z_acc:
        out["message"] = (
            f"canary undetermined: no fold had the {MIN_SHIFTS} time shifts a test needs "
            f"(test windows of at least 2 x the label horizon + {MIN_SHIFTS - 1} bars)"
        )
        return out
    flagged = [
        f"{name} (chi2 {part['chi2']:.1f} on {part['df']} folds, p = {part['p_value']:.2g})"
        for name, part in (("IC", ic), ("accuracy", acc))
        if part["p_value"] is not None and part["p_value"] < alpha
    ]
    out["leaking"] = bool(flagged)
    top = f"; max |rank IC| {out['max_abs_rank_ic']:.3f}" if ics else ""
    out["message"] = (
        f"leaking: a model trained on shuffled labels kept out-of-sample skill in {' and '.join(flagged)}"
        f"{top}; look for a feature that nearly determines the label or a model that sees the labels"
        if flagged
        else f"clean: shuffled-label skill within chance at alpha {alpha:g}{top}"
    )
    return out
