"""PCA factors across the universe: a statistical factor model fitted on the training window only.

From each symbol's 1-bar returns of close, `pca_factors` fits principal components on the rows
before `fit_end` and then, at every timestamp, scores that timestamp's returns against the fitted
loadings: per (symbol, ts) row it gives the symbol's loadings `pca_loading_<k>`, the factors'
returns `pca_factor_<k>` (k = 1..n_components, the same for every symbol at ts) and `pca_resid`,
the symbol's standardized return minus its reconstruction from the factors.

Leakage rule. The fitted parameters (per-symbol means and stds, loadings) use only rows with
ts < fit_end; everything else at ts uses only the closes at ts and at the panel's previous
timestamp. So every value at ts >= fit_end is strictly out of sample: changing bars after ts changes
nothing at ts. Values at ts < fit_end are in sample — their parameters were fitted on rows that may
lie after ts. The pipeline sets fit_end to the end of the first walk-forward training window
(`features.pca.fit_bars`, default `walk_forward.train_bars`), so no fold ever tests on a row the PCA
was fitted on; later folds train on the in-sample rows, which is allowed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from quanto.errors import InputError

__all__ = ["fit_end_for", "pca_factors"]

_KEY = ["symbol", "ts"]


def fit_end_for(bars: pd.DataFrame, fit_bars: int) -> pd.Timestamp:
    """The exclusive end of a fit window of the panel's first `fit_bars` unique timestamps.

    Raises InputError when the panel has no timestamp after those bars (nothing would be out of
    sample).
    """
    stamps = pd.DatetimeIndex(pd.unique(pd.DatetimeIndex(bars["ts"]).dropna())).sort_values()
    if len(stamps) <= fit_bars:
        raise InputError(
            f"features.pca: the fit window of {fit_bars} bars (features.pca.fit_bars, default "
            f"walk_forward.train_bars) needs a longer panel, which has {len(stamps)} unique timestamps"
        )
    return stamps[fit_bars]


def _returns(bars: pd.DataFrame, kind: str) -> pd.DataFrame:
    """(ts × symbol) returns between consecutive panel timestamps; NaN where either close is missing.

    Every symbol's return at ts spans the same interval (the panel's previous timestamp to ts), so a
    symbol that skipped a bar has no return at that bar or the next one.
    """
    missing = [c for c in [*_KEY, "close"] if c not in bars.columns]
    if missing:
        raise KeyError(f"bars are missing columns {missing}")
    if bars.duplicated(_KEY).any():
        dupes = bars.loc[bars.duplicated(_KEY, keep=False), _KEY].head(3).to_dict("records")
        raise ValueError(f"bars have repeated (symbol, ts) rows, e.g. {dupes}")
    close = bars.pivot(index="ts", columns="symbol", values="close").sort_index().astype(np.float64)
    close = close.where(close > 0)  # a non-positive or missing price has no return
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(close).diff() if kind == "log" else close.pct_change(fill_method=None)
    return out.replace([np.inf, -np.inf], np.nan)


def pca_factors(
    bars: pd.DataFrame,
    n_components: int,
    fit_end: pd.Timestamp,
    window_returns: Literal["log", "simple"] = "log",
) -> pd.DataFrame:
    """PCA loadings, factor returns and residuals of each symbol's 1-bar returns of close.

    Fit (rows with ts < fit_end that have a return for every symbol): each symbol's returns are
    standardized with its fit-window mean and std (ddof=1), and the loadings are the first
    `n_components` right singular vectors of that matrix (unit length, orthogonal), each signed so
    its loadings sum to a positive number (if the sum is 0, its largest-magnitude loading is made
    positive). At every ts (before and after fit_end), with z = that ts's standardized returns:
    `pca_factor_<k>` is sum_j loading_k[j] * z_j when every symbol has a return; when some are
    missing it is the least-squares fit of z on the present symbols' loadings (which reduces to that
    sum when all are present), and NaN when fewer than half of the symbols (or fewer than
    `n_components`) have a return. `pca_resid` = z_j - sum_k loading_k[j] * factor_k, NaN where the
    symbol has no return or the factors are NaN. `pca_loading_<k>` is constant per symbol.
    `window_returns` picks log or simple returns.

    Returns `symbol, ts, pca_loading_1..K, pca_factor_1..K, pca_resid`, one row per input bar,
    sorted by (symbol, ts) with a fresh index; the panel's first timestamp has no return (NaN
    factors and residuals). Raises InputError when fewer symbols than `n_components`, fewer than
    max(2 * n_components, 30) complete fit rows, or a symbol with no variation in the fit window;
    ValueError for a bad `window_returns` or repeated (symbol, ts) rows; KeyError for missing columns.
    """
    if window_returns not in ("log", "simple"):
        raise ValueError(f"window_returns must be 'log' or 'simple', got {window_returns!r}")
    if n_components < 1:
        raise InputError(f"features.pca.n_components must be >= 1, got {n_components}")
    rets = _returns(bars, window_returns)
    symbols = list(rets.columns)
    if len(symbols) < n_components:
        raise InputError(
            f"features.pca.n_components={n_components} needs at least that many symbols; "
            f"the panel has {len(symbols)}: {symbols}"
        )
    fit_end = pd.Timestamp(fit_end)
    fit = rets[rets.index < fit_end].dropna(how="any")
    need = max(2 * n_components, 30)
    if len(fit) < need:
        first = rets.index.min() if len(rets) else None
        raise InputError(
            f"features.pca: the fit window [{first}, {fit_end}) has {len(fit)} rows with a return for "
            f"every symbol; n_components={n_components} needs at least {need} "
            "(lengthen features.pca.fit_bars / walk_forward.train_bars or fix missing bars)"
        )

    values = fit.to_numpy()
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1)
    flat = [s for s, v in zip(symbols, std, strict=True) if not v > 0]
    if flat:
        raise InputError(
            f"features.pca: symbols {flat} have no return variation in the fit window before {fit_end}"
        )
    _, _, vt = np.linalg.svd((values - mean) / std, full_matrices=False)
    loadings = vt[:n_components].T.copy()  # (symbols × components)
    for k in range(n_components):
        total = loadings[:, k].sum()
        sign = np.sign(total) if total != 0 else np.sign(loadings[np.argmax(np.abs(loadings[:, k])), k])
        loadings[:, k] *= sign

    z = (rets.to_numpy() - mean) / std  # (ts × symbols), NaN where no return
    factors = np.full((len(z), n_components), np.nan)
    present = ~np.isnan(z)
    complete = present.all(axis=1)
    factors[complete] = z[complete] @ loadings
    enough = (2 * present.sum(axis=1) >= len(symbols)) & (present.sum(axis=1) >= n_components)
    partial = np.flatnonzero(enough & ~complete)
    if len(partial):
        patterns, which = np.unique(present[partial], axis=0, return_inverse=True)
        for p, mask in enumerate(patterns):
            rows = partial[which.ravel() == p]
            solved, *_ = np.linalg.lstsq(loadings[mask], z[np.ix_(rows, np.flatnonzero(mask))].T, rcond=None)
            factors[rows] = solved.T
    resid = z - factors @ loadings.T  # NaN factors or a NaN z give NaN

    k_names = range(1, n_components + 1)
    wide = pd.DataFrame(
        {
            "ts": rets.index.repeat(len(symbols)),
            "symbol": np.tile(np.asarray(symbols, dtype=object), len(rets)),
            "pca_resid": resid.ravel(),
        }
    )
    for k in k_names:
        wide[f"pca_factor_{k}"] = np.repeat(factors[:, k - 1], len(symbols))
    load = pd.DataFrame({f"pca_loading_{k}": loadings[:, k - 1] for k in k_names})
    load.insert(0, "symbol", np.asarray(symbols, dtype=object))

    columns = [
        *_KEY,
        *(f"pca_loading_{k}" for k in k_names),
        *(f"pca_factor_{k}" for k in k_names),
        "pca_resid",
    ]
    out = bars[_KEY].merge(load, on="symbol", how="left").merge(wide, on=_KEY, how="left")
    return out[columns].sort_values(_KEY, kind="mergesort").reset_index(drop=True)
