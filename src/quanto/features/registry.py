"""Feature registry: name lookup, the default set, and multi-symbol computation.

Importing this module imports every feature family, so `REGISTRY` is complete once it is loaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import numpy as np
import pandas as pd

# Family modules register themselves on import; they depend on `spec`, never on this module.
from quanto.features import statistical, technical
from quanto.features.spec import REGISTRY, FeatureSpec, register

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
DEFAULT_FAMILIES = (technical.FAMILY, statistical.FAMILY)
DEFAULT_FEATURES: tuple[str, ...] = tuple(
    name for family in DEFAULT_FAMILIES for name, spec in REGISTRY.items() if spec.family == family
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
    """Expand `default` into DEFAULT_FEATURES, keep first-seen order, drop repeats.

    Raises ValueError("unknown feature 'x'; known: ...") listing close matches for an unknown name.
    """
    out: dict[str, None] = {}  # an ordered set
    for name in names:
        if name == DEFAULT_NAME:
            out.update(dict.fromkeys(DEFAULT_FEATURES))
        elif name in REGISTRY:
            out[name] = None
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
        one_symbol = ordered.iloc[rows]
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
