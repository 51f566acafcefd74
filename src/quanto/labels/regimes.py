"""Regime labels: volatility tertiles and a Gaussian HMM decoded forward-only.

Both fit on the training window only (rows with ts <= train_end) and label every row from what is
known at its close, so a regime label never uses the future: t1 = ts, a regime describes the present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.linalg import solve_triangular
from threadpoolctl import threadpool_limits

from quanto.labels.paths import SymbolPaths, log_returns, rolling_volatility

if TYPE_CHECKING:
    from hmmlearn.hmm import GaussianHMM

TERTILES = (1 / 3, 2 / 3)


def volatility_regimes(
    bars: pd.DataFrame, *, window: int = 20, train_end: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calm / normal / turbulent (0 / 1 / 2) by the tertile of rolling volatility, per symbol.

    vol = std of the last `window` one-bar log returns (known at t). Each symbol's thresholds are the
    1/3 and 2/3 quantiles (linear interpolation) of its vol over rows with ts <= train_end only, so no
    later data moves them. label = 0 if vol <= low, 1 if vol <= high, else 2.

    Returns (labels, thresholds): labels has `symbol, ts, label, t1, vol` in the input's rows, order
    and index, t1 = ts; label is NaN (t1 NaT) where vol is undefined (a symbol's first `window` bars)
    or the symbol has no training vol. thresholds is indexed by symbol with `low, high, n_train`.
    """
    paths = SymbolPaths.of(bars, ["close"])
    vol = rolling_volatility(paths, paths.values(bars, "close"), window)
    symbol_sorted = paths.symbol[paths.order]
    train = _train_rows(paths, train_end) & np.isfinite(vol)

    symbols = pd.Index(pd.unique(symbol_sorted), name="symbol")
    fitted = pd.Series(vol[train]).groupby(symbol_sorted[train]).quantile(list(TERTILES)).unstack()
    thresholds = pd.DataFrame(
        {
            "low": fitted.get(TERTILES[0]),
            "high": fitted.get(TERTILES[1]),
        },
        index=symbols,
        dtype=np.float64,
    )
    thresholds["n_train"] = pd.Series(symbol_sorted[train]).value_counts().reindex(symbols, fill_value=0)

    low = thresholds["low"].reindex(symbol_sorted).to_numpy()
    high = thresholds["high"].reindex(symbol_sorted).to_numpy()
    defined = np.isfinite(vol) & np.isfinite(low) & np.isfinite(high)
    label = np.where(defined, np.where(vol <= low, 0.0, np.where(vol <= high, 1.0, 2.0)), np.nan)
    t1 = paths.ts_at(np.where(defined, np.arange(len(paths)), -1))
    return paths.frame({"label": label, "t1": t1, "vol": vol}), thresholds


def hmm_regimes(
    bars: pd.DataFrame,
    *,
    n_states: int = 2,
    train_end: pd.Timestamp,
    seed: int = 0,
    use_volatility: bool = False,
    vol_window: int = 20,
    n_iter: int = 100,
    min_train_rows: int = 100,
) -> tuple[pd.DataFrame, dict[str, GaussianHMM]]:
    """Hidden-Markov regimes per symbol, decoded forward-only (filtering, never smoothing or Viterbi).

    For each symbol a `hmmlearn.hmm.GaussianHMM` (full covariances, `random_state=seed`) is fitted on
    its observations with ts <= train_end: the one-bar log return and, with `use_volatility`, the log
    of its `vol_window` rolling volatility, both standardized by the training rows' mean and std
    (hmmlearn floors variances at 1e-3, far above raw return variances). States are renumbered by
    ascending return variance, so 0 is the calmest state in every run and every symbol. A missing
    training observation is skipped (the training rows are fitted as one sequence).

    The label at t is argmax_k P(s_t = k | x_1..x_t), computed here by the forward algorithm from
    the fitted startprob/transmat/means/covars: appending future rows never changes it (Viterbi and
    `predict` condition on the whole series, which leaks the future). The chain starts at a symbol's
    first observation; a later missing observation is a pure prediction step.

    Returns (labels, models): labels has `symbol, ts, label, t1` and `prob_<k>` (the filtered
    probabilities) in the input's rows, order and index, t1 = ts; label is NaN (t1 NaT) on rows
    without an observation and for symbols with fewer than `min_train_rows` training observations
    (or a constant feature there), which get no model. models maps symbol → its fitted, renumbered HMM.
    """
    from hmmlearn.hmm import GaussianHMM  # heavy import, only for this label

    if int(n_states) != n_states or n_states < 2:
        raise ValueError(f"n_states must be an integer >= 2, got {n_states!r}")
    if int(min_train_rows) != min_train_rows or min_train_rows < n_states:
        raise ValueError(f"min_train_rows must be an integer >= n_states, got {min_train_rows!r}")
    paths = SymbolPaths.of(bars, ["close"])
    close = paths.values(bars, "close")
    features = [log_returns(paths, close)]
    if use_volatility:
        with np.errstate(divide="ignore"):
            features.append(np.log(rolling_volatility(paths, close, vol_window)))
    x = np.column_stack(features)
    observed = np.isfinite(x).all(axis=1)
    train = _train_rows(paths, train_end) & observed

    n = len(paths)
    probs = np.full((n, int(n_states)), np.nan)
    models: dict[str, GaussianHMM] = {}
    starts = np.flatnonzero(paths.step == 0)
    for start, stop in zip(starts, np.r_[starts[1:], n], strict=True):
        rows = slice(start, stop)
        fit_rows = x[rows][train[rows]]
        if len(fit_rows) < min_train_rows:
            continue
        mean, std = fit_rows.mean(axis=0), fit_rows.std(axis=0)
        if not (std > 0).all():
            continue
        model = GaussianHMM(
            n_components=int(n_states), covariance_type="full", n_iter=int(n_iter), random_state=seed
        )
        # Per-symbol fits are small: thread start-up dominates, and one thread keeps results identical
        # on any machine.
        with threadpool_limits(limits=1):
            model.fit((fit_rows - mean) / std)
        _renumber_by_volatility(model)
        models[paths.symbol[paths.order[start]]] = model

        seen = np.flatnonzero(observed[rows])
        first = start + int(seen[0])  # the chain starts at the first observation
        z = (x[first:stop] - mean) / std
        log_b = _log_emissions(z, model.means_, model.covars_)
        log_b[~observed[first:stop]] = 0.0  # no observation: every state equally likely to emit it
        filtered = filter_states(model.startprob_, model.transmat_, log_b)
        filtered[~observed[first:stop]] = np.nan
        probs[first:stop] = filtered

    defined = np.isfinite(probs).all(axis=1)
    label = np.where(defined, np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1), np.nan)
    columns: dict[str, np.ndarray | pd.Index] = {
        "label": label,
        "t1": paths.ts_at(np.where(defined, np.arange(n), -1)),
    }
    for k in range(int(n_states)):
        columns[f"prob_{k}"] = probs[:, k]
    return paths.frame(columns), models


def filter_states(startprob: np.ndarray, transmat: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """Filtered state probabilities P(s_t | x_1..x_t) of one chain (rows t, columns states).

    alpha_t ∝ startprob·B_0·T·B_1·…·T·B_t with B_t = diag(emission likelihoods). The prefix products
    are formed by a Hillis–Steele scan (log2(n) vectorized steps, no Python loop over rows); each
    product is rescaled by its max, which leaves the normalized probabilities unchanged and prevents
    underflow. Row t depends only on rows <= t, combined in an order that does not depend on how many
    rows follow, so appending rows reproduces earlier rows bit for bit.
    """
    n, k = log_b.shape
    if n == 0:
        return np.empty((0, k))
    b = np.exp(log_b - log_b.max(axis=1, keepdims=True)).T  # per-row scale cancels on normalizing
    # prod[i, j, t] = (T·B_t)[i, j]; states lead so each entry is a contiguous row over t.
    prod = transmat[:, :, None] * b[None, :, :]
    # First factor: every row is startprob·B_0, so every row of a prefix product is alpha_t.
    prod[:, :, 0] = startprob * b[:, 0]
    prod /= prod.max(axis=(0, 1))
    shift = 1
    while shift < n:
        left, right = prod[:, :, :-shift], prod[:, :, shift:]
        combined = np.zeros((k, k, n - shift))
        term = np.empty(n - shift)
        for i in range(k):  # k^3 vectorized multiply-adds over all rows, summed in a fixed order
            for j in range(k):
                for m in range(k):
                    np.multiply(left[i, m], right[m, j], out=term)
                    combined[i, j] += term
        combined /= combined.max(axis=(0, 1))
        prod[:, :, shift:] = combined
        shift *= 2
    alpha = prod[0].T
    return alpha / alpha.sum(axis=1, keepdims=True)


def _log_emissions(z: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """log N(z_t; means_k, covars_k) for each row t and state k (non-finite rows give garbage)."""
    d = z.shape[1]
    out = np.empty((len(z), len(means)))
    clean = np.where(np.isfinite(z), z, 0.0)
    for k, (mu, cov) in enumerate(zip(means, covars, strict=True)):
        chol = np.linalg.cholesky(cov)
        white = solve_triangular(chol, (clean - mu).T, lower=True)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        out[:, k] = -0.5 * (d * np.log(2 * np.pi) + log_det + (white**2).sum(axis=0))
    return out


def _renumber_by_volatility(model: GaussianHMM) -> None:
    """Reorder the model's states by ascending return variance (state 0 = calm), in place."""
    perm = np.argsort(model.covars_[:, 0, 0], kind="stable")
    model.startprob_ = model.startprob_[perm]
    model.transmat_ = model.transmat_[perm][:, perm]
    model.means_ = model.means_[perm]
    model.covars_ = model.covars_[perm]


def _train_rows(paths: SymbolPaths, train_end: pd.Timestamp) -> np.ndarray:
    """Sorted positions with ts <= train_end (the only rows any regime model is fitted on)."""
    end = pd.Timestamp(train_end)
    if (end.tz is None) != (paths.ts.tz is None):
        raise ValueError(f"train_end {end} and the bars' ts must both be timezone-aware or both naive")
    return np.asarray(paths.ts[paths.order] <= end)
