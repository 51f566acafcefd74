"""Cross-sectional and benchmark-relative features over a panel of symbols.

A panel is a long frame with `symbol`, `ts` and value columns, one row per (symbol, ts). Unlike the
per-symbol families registered in `spec`, these features compare symbols with each other, so they
take the whole panel; the pipeline calls them directly until a panel-level registry exists.

Nothing looks ahead: a cross-sectional value at `ts` uses only the rows at `ts` (adding or removing
rows at other timestamps changes nothing), and a benchmark-relative value at `ts` uses only rows at
or before `ts`. Every function returns a new frame sorted by (symbol, ts) with a fresh index, like
`registry.compute_features`; undefined values are NaN, never +-inf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "benchmark_relative",
    "cross_sectional_rank",
    "cross_sectional_zscore",
    "sector_relative",
]

_KEY = ["symbol", "ts"]


def _sorted_panel(panel: pd.DataFrame, columns: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
    """A copy of `panel` sorted by (symbol, ts), the value columns as float64 with +-inf as NaN.

    Raises KeyError for missing columns and ValueError for repeated (symbol, ts) rows, which would
    otherwise count one symbol twice in a cross-section.
    """
    columns = list(dict.fromkeys(columns))
    missing = [c for c in [*_KEY, *columns] if c not in panel.columns]
    if missing:
        raise KeyError(f"panel is missing columns {missing}")
    ordered = panel.sort_values(_KEY, kind="mergesort").reset_index(drop=True)
    if ordered.duplicated(_KEY).any():
        dupes = ordered.loc[ordered.duplicated(_KEY, keep=False), _KEY].head(3).to_dict("records")
        raise ValueError(f"panel has repeated (symbol, ts) rows, e.g. {dupes}")
    for col in columns:
        values = ordered[col].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        # An infinite input is an undefined feature upstream; it must not swamp a mean or a std.
        values[np.isinf(values)] = np.nan
        ordered[col] = values
    return ordered, columns


def _group_zscore(values: pd.Series, keys: list[pd.Series]) -> tuple[np.ndarray, np.ndarray]:
    """(z-score, demeaned) of `values` within groups of `keys`, population std.

    Rows whose key has a NaN (e.g. an unmapped sector) get NaN in both. The z-score is NaN where the
    group has fewer than 2 values or all its values are equal; equality is tested with min == max
    rather than std == 0, because a float mean of equal values can miss them by an ulp and turn a
    zero std into a tiny one that would blow the z-score up.
    """
    grouped = values.groupby(keys, sort=False, dropna=True)
    mean = grouped.transform("mean").to_numpy(dtype=np.float64)
    std = grouped.transform("std", ddof=0).to_numpy(dtype=np.float64)
    count = grouped.transform("count").to_numpy(dtype=np.float64)
    flat = (grouped.transform("max") == grouped.transform("min")).to_numpy(dtype=bool)
    x = values.to_numpy(dtype=np.float64)
    demeaned = x - mean
    defined = (count >= 2) & ~flat & (std > 0)
    z = np.full_like(x, np.nan)
    np.divide(demeaned, std, out=z, where=defined)
    return z, demeaned


def cross_sectional_rank(panel: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Add `<col>_cs_rank`: each symbol's percentile rank among the symbols with a value at its ts.

    The rank is pandas' `rank(pct=True, method="average")` per timestamp: rank / count, in (0, 1],
    ties sharing their average rank, so the largest value gets 1 and a lone value gets 1. A NaN
    value stays NaN and is not counted. Returns a copy of `panel` sorted by (symbol, ts) with a fresh
    index. Raises KeyError for missing columns, ValueError for repeated (symbol, ts) rows.
    """
    out, columns = _sorted_panel(panel, columns)
    for col in columns:
        ranks = out[col].groupby(out["ts"], sort=False).rank(method="average", pct=True, na_option="keep")
        out[f"{col}_cs_rank"] = ranks.to_numpy(dtype=np.float64)
    return out


def cross_sectional_zscore(panel: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Add `<col>_cs_z`: (x - mean) / std across the symbols with a value at the same ts.

    The std is the population std (ddof=0). NaN for a NaN value, and for every row of a timestamp
    with fewer than 2 values or no variation. Returns a copy of `panel` sorted by (symbol, ts) with a
    fresh index. Raises KeyError for missing columns, ValueError for repeated (symbol, ts) rows.
    """
    out, columns = _sorted_panel(panel, columns)
    for col in columns:
        z, _ = _group_zscore(out[col], [out["ts"]])
        out[f"{col}_cs_z"] = z
    return out


def sector_relative(panel: pd.DataFrame, columns: Iterable[str], sectors: Mapping[str, str]) -> pd.DataFrame:
    """Add `<col>_sector_z` and `<col>_sector_demeaned`: the value against its sector peers at its ts.

    `sectors` maps symbol -> sector. `<col>_sector_z` is the population z-score within (ts, sector),
    NaN where that group has fewer than 2 values or no variation; `<col>_sector_demeaned` is x minus
    the (ts, sector) mean (0 for a symbol alone in its sector). Symbols missing from `sectors` get
    NaN in both. Returns a copy of `panel` sorted by (symbol, ts) with a fresh index. Raises KeyError
    for missing columns, ValueError for repeated (symbol, ts) rows.
    """
    out, columns = _sorted_panel(panel, columns)
    sector = out["symbol"].map(dict(sectors))
    for col in columns:
        z, demeaned = _group_zscore(out[col], [out["ts"], sector])
        out[f"{col}_sector_z"] = z
        out[f"{col}_sector_demeaned"] = demeaned
    return out


def _log(values: np.ndarray) -> np.ndarray:
    """Natural log with NaN (not -inf or a warning) for non-positive or missing prices."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(values)
    out[~np.isfinite(out)] = np.nan
    return out


def benchmark_relative(
    panel_bars: pd.DataFrame, benchmark: str, windows: Iterable[int] = (20, 60)
) -> pd.DataFrame:
    """Rolling correlation and beta of each symbol's 1-bar log returns with the benchmark's.

    Each symbol's closes are inner-joined with the benchmark's on ts, and returns are taken between
    consecutive joined timestamps, so a symbol's return and the benchmark's always span the same
    interval even when one of them skipped a bar. Over the last `w` joined returns (min_periods = w,
    so any missing return in the window gives NaN): `corr_<w>` is the Pearson correlation and
    `beta_<w>` = cov(symbol, benchmark) / var(benchmark). The benchmark's own rows are exactly 1
    where defined. Rows at timestamps the benchmark lacks, warm-up rows and windows where the
    benchmark (or, for corr, the symbol) did not move are NaN.

    Returns `symbol, ts, corr_<w>, beta_<w>` for each w in order, one row per input bar, sorted by
    (symbol, ts) with a fresh index. Raises ValueError naming the benchmark when it is not in the
    panel, for repeated (symbol, ts) rows or a window below 2; KeyError for missing columns.
    """
    windows = list(dict.fromkeys(int(w) for w in windows))
    if any(w < 2 for w in windows):
        raise ValueError(f"windows must all be >= 2, got {windows}")
    bars, _ = _sorted_panel(panel_bars, ["close"])
    bars = bars[[*_KEY, "close"]]
    is_bench = (bars["symbol"] == benchmark).to_numpy()
    if not is_bench.any():
        raise ValueError(f"benchmark {benchmark!r} is not in the panel")

    bench = bars.loc[is_bench, ["ts", "close"]].rename(columns={"close": "bench_close"})
    joined = bars.merge(bench, on="ts", how="inner", sort=False)
    joined = joined.sort_values(_KEY, kind="mergesort").reset_index(drop=True)
    by_symbol = joined.groupby("symbol", sort=False)
    position = by_symbol.cumcount().to_numpy()
    joined["r"] = _log(joined["close"].to_numpy(dtype=np.float64))
    joined["rb"] = _log(joined["bench_close"].to_numpy(dtype=np.float64))
    joined["r"] = joined["r"] - by_symbol["r"].shift(1)
    joined["rb"] = joined["rb"] - by_symbol["rb"].shift(1)
    joined_bench = (joined["symbol"] == benchmark).to_numpy()

    result = joined[_KEY].copy()
    for w in windows:
        # One rolling pass over all symbols back to back: a window reaching into the previous
        # symbol's rows is masked below (position < w), so each value uses its own symbol only.
        # pandas' rolling var is exactly 0 for a window of equal values, so `> 0` reliably marks
        # a flat window (undefined beta/corr) instead of dividing float noise by float noise.
        cov = joined["r"].rolling(w, min_periods=w).cov(joined["rb"], ddof=1).to_numpy()
        var_r = joined["r"].rolling(w, min_periods=w).var(ddof=1).to_numpy()
        var_b = joined["rb"].rolling(w, min_periods=w).var(ddof=1).to_numpy()
        beta = np.full_like(cov, np.nan)
        np.divide(cov, var_b, out=beta, where=var_b > 0)
        corr = np.full_like(cov, np.nan)
        np.divide(cov, np.sqrt(var_r * var_b), out=corr, where=(var_r > 0) & (var_b > 0))
        corr = np.clip(corr, -1.0, 1.0)  # NaN passes through; rounding can land just past +-1
        warm = position < w  # w returns need w + 1 joined bars
        corr[warm] = np.nan
        beta[warm] = np.nan
        # The benchmark against itself is 1 by definition; don't leave float noise like 0.9999999.
        own = joined_bench & np.isfinite(beta)
        corr[own] = 1.0
        beta[own] = 1.0
        result[f"corr_{w}"] = corr
        result[f"beta_{w}"] = beta

    # Back onto every input bar: bars at timestamps the benchmark lacks have no value.
    out = bars[_KEY].merge(result, on=_KEY, how="left", sort=False)
    return out.sort_values(_KEY, kind="mergesort").reset_index(drop=True)
