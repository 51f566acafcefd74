"""Feature registry: name lookup, the default set, and multi-symbol computation.

Importing this module imports every feature family, so `REGISTRY` is complete once it is loaded.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import polars as pl

# Family modules register themselves on import; they depend on `spec`, never on this module.
from quanto.features import alpha158, risk, statistical, talib_catalog, technical, tsfresh_family  # noqa: F401
from quanto.features.engine import Panel, compute_panel, same_values
from quanto.features.spec import REGISTRY, FeatureSpec, register

# User-defined features: modules named in QUANTO_FEATURE_MODULES (comma-separated, importable) register
# themselves with `register` on import, in the CLI and in every worker alike.
for _module in filter(None, (m.strip() for m in os.environ.get("QUANTO_FEATURE_MODULES", "").split(","))):
    importlib.import_module(_module)

__all__ = [
    "DEFAULT_FEATURES",
    "REGISTRY",
    "FeatureSpec",
    "catalog_markdown",
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
FAMILY_PREFIX = "family:"
_GLOB_CHARS = frozenset("*?[")


def _unknown(name: str) -> ValueError:
    """An error naming the unknown feature and a few close matches (not the whole registry)."""
    known = [DEFAULT_NAME, *REGISTRY]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = ", ".join(close) if close else ", ".join(known[:5]) + ", ..."
    return ValueError(
        f"unknown feature {name!r}; known: {hint} ({len(REGISTRY)} in all: `quanto features ls`)"
    )


def expand_names(names: Iterable[str]) -> list[str]:
    """Expand selections into feature names; keep first-seen order, drop repeats.

    `default` becomes DEFAULT_FEATURES; `family:NAME` every feature of that family (registry order);
    a glob pattern (`rsi_*`, `alpha158_*[0-9]`) every registered name it matches. A call string such as `talib:RSI(timeperiod=21)` or
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
        elif name.startswith(FAMILY_PREFIX):
            out.update(dict.fromkeys(_family_names(name[len(FAMILY_PREFIX) :])))
        elif _GLOB_CHARS & set(name):
            matched = fnmatch.filter(REGISTRY, name)
            if not matched:
                raise ValueError(f"feature pattern {name!r} matches no registered feature")
            out.update(dict.fromkeys(matched))
        elif name.startswith(talib_catalog.PREFIX):
            out[talib_catalog.resolve_call(name)] = None
        elif (canonical := talib_catalog.resolve_name(name)) is not None:
            out[canonical] = None
        else:
            raise _unknown(name)
    return list(out)


def _family_names(family: str) -> list[str]:
    """Every registered feature of `family`; ValueError naming the known families otherwise."""
    names = [n for n, s in REGISTRY.items() if s.family == family]
    if not names:
        known = sorted({s.family for s in REGISTRY.values()})
        raise ValueError(f"unknown feature family {family!r}; known: {', '.join(known)}")
    return names


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


_CATALOG_INTRO = """# Feature catalogue

Generated by `quanto features ls --markdown > docs/features.md`; `quanto features ls --json` gives the
same rows as JSON.

**Selecting features** in a job file (`features: {names: [...]}`), in any mix:
- a name: `rsi_14`, `alpha158_roc_5`;
- `default`: the curated set of {n_default} scale-free features (technical plus five statistical);
- a family: `family:alpha158`, `family:statistical`, ...;
- a pattern: `rsi_*`, `alpha158_std*` (shell-style, matched against registered names);
- any TA-Lib function with parameters: `talib:RSI(timeperiod=21)`,
  `talib:BBANDS(timeperiod=30,nbdevup=2.5).upperband`.

`lookback` is the number of warm-up bars (NaN) before a value exists. Every value at bar *t* depends
only on bars at or before *t*. The test suite checks this for every registered feature by truncating
histories, and you can check any feature, your own included, with
`quanto features check-lookahead NAME…`.

`memory` says how far back a value reaches: `lookback` when it depends on the last `lookback` bars
only, `history` when it depends on the whole history (EMA, Wilder smoothing, cumulative sums). The
pipeline computes features incrementally (`features.incremental`, on by default): a longer history
computes only the new bars, with `lookback` bars of warm-up, or from the first bar for `history`
features, so the values equal a full recompute.

**Your own features.** Put `@register(...)` functions (see `quanto.features.spec.register`) in an
importable module and list it in `QUANTO_FEATURE_MODULES` (comma-separated) for the CLI and the
workers alike.

"""


def catalog_markdown(family: str | None = None) -> str:
    """docs/features.md: the selection rules and one table row per registered feature."""
    from quanto.features.engine import is_bounded

    lines = [_CATALOG_INTRO.replace("{n_default}", str(len(DEFAULT_FEATURES)))]
    lines.append("| name | family | lookback | memory | version | description |\n|---|---|---|---|---|---|")
    for spec in REGISTRY.values():
        if family is not None and spec.family != family:
            continue
        desc = spec.description.replace("|", "\\|")  # a literal | inside a Markdown cell
        memory = "lookback" if is_bounded(spec) else "history"
        lines.append(
            f"| `{spec.name}` | {spec.family} | {spec.lookback} | {memory} | {spec.version} | {desc} |"
        )
    return "\n".join(lines) + "\n"


def compute_features(
    bars: pd.DataFrame | pl.DataFrame, names: Iterable[str], *, threads: int | None = None
) -> pd.DataFrame:
    """Compute features for canonical bars of one or more symbols (pandas or polars input).

    Returns columns `symbol, ts` plus one float64 column per (expanded) feature name, one row per
    input bar, sorted by (symbol, ts) with a fresh index. Each symbol is computed on its own rows
    only, so no value leaks across symbols; symbols are spread over `threads` threads (default
    `engine.default_threads()`). Warm-up rows and undefined values (e.g. a zero denominator) are NaN,
    never +-inf. Raises ValueError for unknown names or repeated (symbol, ts) rows and KeyError for
    missing input columns.
    """
    specs = [REGISTRY[n] for n in expand_names(names)]
    panel = Panel.of(bars, [c for s in specs for c in s.inputs])
    rows, values = compute_panel(panel, specs, threads=threads)
    return feature_frame(panel, rows, specs, values)


def feature_frame(
    panel: Panel, rows: np.ndarray, specs: list[FeatureSpec], values: np.ndarray | list[np.ndarray]
) -> pd.DataFrame:
    """The engine's output as a frame: `symbol, ts` of the emitted rows, then one column per spec
    (`values[j]` for spec j)."""
    out = {"symbol": panel.symbol[rows], "ts": panel.ts[rows]}
    out.update({s.name: values[j] for j, s in enumerate(specs)})
    return pd.DataFrame(out)


def check_lookahead(
    bars: pd.DataFrame, names: Iterable[str], n_cuts: int = 5, seed: int = 0, rtol: float = 1e-7
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
            same = same_values(b, a, rtol=rtol)  # scaled by the full run's magnitudes
            if not same.all():
                bad[name] = bad.get(name, 0) + int((~same).sum())
    return bad
