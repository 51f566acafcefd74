"""Feature registry: name lookup, the default set, and multi-symbol computation.

Importing this module imports every feature family, so `REGISTRY` is complete once it is loaded.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

# Family modules register themselves on import; they depend on `spec`, never on this module.
from quanto.features import alpha158, risk, statistical, talib_catalog, technical  # noqa: F401
from quanto.features.spec import REGISTRY, FeatureSpec, register

# User-defined features: modules named in QUANTO_FEATURE_MODULES (comma-separated, importable) register
# themselves with `register` on import, in the CLI and in every worker alike.
for _module in filter(None, (m.strip() for m in os.environ.get("QUANTO_FEATURE_MODULES", "").split(","))):
    importlib.import_module(_module)

__all__ = [
    "DEFAULT_FEATURES",
    "REGISTRY",
    "FeatureSpec",
    "check_lookahead",
    "compute_features",
    "expand_names",
    "feature_catalog",
    "feature_lookback",
    "register",
]

DEFAULT_NAME = "default"
# The curated default set: scale-free technical features plus a few statistical ones, listed
# explicitly so that families added later (alpha158, risk, the raw TA-Lib catalog, ...) never join
# it by accident and every model trained on `default` keeps the columns it was trained on.
DEFAULT_FEATURES: tuple[str, ...] = (
    # trend: distance from moving averages and regression lines
    "sma_ratio_5",
    "sma_ratio_10",
    "sma_ratio_20",
    "sma_ratio_50",
    "sma_ratio_100",
    "sma_ratio_200",
    "ema_ratio_5",
    "ema_ratio_10",
    "ema_ratio_12",
    "ema_ratio_20",
    "ema_ratio_26",
    "ema_ratio_50",
    "ema_ratio_100",
    "ema_ratio_200",
    "kama_ratio_10",
    "ht_trendline_ratio",
    "tsf_ratio_14",
    "linreg_slope_14",
    "linreg_slope_50",
    "sar_dist",
    "macd_12_26_9",
    "macd_signal_12_26_9",
    "macd_hist_12_26_9",
    "ppo_12_26",
    "trix_15",
    "adx_14",
    "adxr_14",
    "plus_di_14",
    "minus_di_14",
    "aroon_up_14",
    "aroon_down_14",
    "aroon_osc_14",
    "ht_dcperiod",
    # momentum oscillators
    "rsi_7",
    "rsi_14",
    "rsi_21",
    "stoch_k_14",
    "stoch_d_14",
    "stochrsi_k_14",
    "stochrsi_d_14",
    "cci_14",
    "cci_20",
    "cmo_14",
    "mom_ratio_10",
    "roc_5",
    "roc_10",
    "roc_20",
    "willr_14",
    "ultosc_7_14_28",
    "bop",
    # volatility
    "bb_width_20",
    "bb_pctb_20",
    "bb_width_50",
    "bb_pctb_50",
    "natr_14",
    "natr_28",
    # volume
    "mfi_14",
    "obv_z_20",
    "obv_z_60",
    "volume_z_20",
    "volume_z_60",
    "vwap_dist",
    # statistical
    "logret_1",
    "logret_5",
    "logret_20",
    "vol_20",
    "vol_60",
)
_KEY = ["symbol", "ts"]


def _unknown(name: str) -> ValueError:
    """An error naming the unknown feature and a few close matches (not the whole registry)."""
    known = [DEFAULT_NAME, *REGISTRY]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = ", ".join(close) if close else ", ".join(known[:5]) + ", ..."
    return ValueError(
        f"unknown feature {name!r}; known: {hint} ({len(REGISTRY)} in all: `quanto features ls`)"
    )


def expand_names(names: Iterable[str]) -> list[str]:
    """Expand `default` and TA-Lib call strings into feature names; keep first-seen order, drop repeats.

    `default` becomes DEFAULT_FEATURES. A call string such as `talib:RSI(timeperiod=21)` or
    `talib:BBANDS(timeperiod=30,nbdevup=2.5).upperband` is registered on the fly and replaced by
    its canonical name (`talib_rsi_timeperiod21`); that canonical name is itself accepted here, in
    any process, and re-creates the feature when this process has not seen it yet (see
    `talib_catalog`). Raises ValueError("unknown feature 'x'; known: ...") listing close matches for
    an unknown name, and ValueError naming the problem for a bad call string.
    """
    out: dict[str, None] = {}  # an ordered set
    for name in names:
        if name == DEFAULT_NAME:
            out.update(dict.fromkeys(DEFAULT_FEATURES))
        elif name in REGISTRY:
            out[name] = None
        elif name.startswith(talib_catalog.PREFIX):
            out[talib_catalog.resolve_call(name)] = None
        elif (canonical := talib_catalog.resolve_name(name)) is not None:
            out[canonical] = None
        else:
            raise _unknown(name)
    return list(out)


def feature_lookback(names: Iterable[str]) -> int:
    """Warm-up bars needed by the named features: the largest lookback (0 for none)."""
    return max((REGISTRY[n].lookback for n in expand_names(names)), default=0)


def feature_catalog() -> list[dict]:
    """One row per registered feature: name, family, params, lookback, version, description."""
    return [
        {
            "name": s.name,
            "family": s.family,
            "params": dict(s.params),
            "lookback": s.lookback,
            "version": s.version,
            "description": s.description,
        }
        for s in REGISTRY.values()
    ]


def _symbol_slices(symbols: np.ndarray) -> list[slice]:
    """Row ranges of each symbol in a frame sorted by symbol."""
    if len(symbols) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
    ends = np.r_[starts[1:], len(symbols)]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


class _ColumnCache:
    """One symbol's bars whose columns are built once: dozens of features read the same few columns,
    and building a pandas Series per read dominated the cost on many short histories. Anything but
    a single-column read is delegated to the underlying DataFrame."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame
        self._columns: dict[str, pd.Series] = {}

    def __getitem__(self, key):
        if not isinstance(key, str):
            return self._frame[key]
        col = self._columns.get(key)
        if col is None:
            col = self._columns[key] = self._frame[key]
        return col

    def __len__(self) -> int:
        return len(self._frame)

    def __getattr__(self, name: str):
        return getattr(self._frame, name)


def compute_features(bars: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Compute features for canonical bars of one or more symbols.

    Returns columns `symbol, ts` plus one float64 column per (expanded) feature name, one row per
    input bar, sorted by (symbol, ts) with a fresh index. Each symbol is computed on its own rows
    only, so no value leaks across symbols; warm-up rows and undefined values (e.g. a zero
    denominator) are NaN, never +-inf. Raises ValueError for unknown names or repeated
    (symbol, ts) rows and KeyError for missing input columns.
    """
    specs = [REGISTRY[n] for n in expand_names(names)]
    needed = list(dict.fromkeys([*_KEY, *(c for s in specs for c in s.inputs)]))
    missing = [c for c in needed if c not in bars.columns]
    if missing:
        raise KeyError(f"bars are missing columns {missing} needed by the requested features")

    # Stable sort so equal keys (rejected below) could never reorder silently.
    ordered = bars[needed].sort_values(_KEY, kind="mergesort").reset_index(drop=True)
    if ordered.duplicated(_KEY).any():
        dupes = ordered.loc[ordered.duplicated(_KEY, keep=False), _KEY].head(3).to_dict("records")
        raise ValueError(f"bars have repeated (symbol, ts) rows, e.g. {dupes}")

    n = len(ordered)
    values = np.full((len(specs), n), np.nan)
    for rows in _symbol_slices(ordered["symbol"].to_numpy()):
        one_symbol = _ColumnCache(ordered.iloc[rows])
        for j, spec in enumerate(specs):
            result = np.asarray(spec.fn(one_symbol), dtype=np.float64)
            if result.shape != (rows.stop - rows.start,):
                raise ValueError(
                    f"feature {spec.name!r} returned shape {result.shape}, expected one value per bar"
                )
            values[j, rows] = result
    # A zero denominator means "undefined", which models should see as missing, not infinite.
    values[np.isinf(values)] = np.nan

    out = {"symbol": ordered["symbol"].to_numpy(), "ts": ordered["ts"]}
    out.update({s.name: values[j] for j, s in enumerate(specs)})
    return pd.DataFrame(out)


def check_lookahead(
    bars: pd.DataFrame, names: Iterable[str], n_cuts: int = 5, seed: int = 0, rtol: float = 1e-9
) -> dict[str, int]:
    """Recompute features on histories truncated at random cut times and compare with the full run.

    A backward-looking feature gives the same values at or before each cut whatever follows it.
    Returns {feature name: mismatching values} for the features that differ (empty when clean).
    """
    names = expand_names(names)
    full = compute_features(bars, names)
    times = pd.DatetimeIndex(full["ts"].unique()).sort_values()
    rng = np.random.default_rng(seed)
    cuts = times[rng.choice(len(times), size=min(n_cuts, len(times)), replace=False)]
    bad: dict[str, int] = {}
    for cut in cuts:
        part = compute_features(bars[bars["ts"] <= cut], names)
        ref = full[full["ts"] <= cut].reset_index(drop=True)
        for name in names:
            a, b = ref[name].to_numpy(), part[name].to_numpy()
            same = np.isclose(a, b, rtol=rtol, atol=0.0, equal_nan=True)
            if not same.all():
                bad[name] = bad.get(name, 0) + int((~same).sum())
    return bad
