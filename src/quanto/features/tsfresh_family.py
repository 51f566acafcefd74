"""tsfresh features: tsfresh's own feature calculators on rolling windows of one bar's history.

Each feature is one tsfresh calculator (`tsfresh.feature_extraction.feature_calculators`) with fixed
parameters, evaluated on the last `window` one-bar log returns (or, for a few, the last `window` bars'
log(1 + volume)); values come from tsfresh itself, nothing here re-derives them. Calculators were
chosen for being meaningful on ~30 points and cheap (no ADF, sample entropy, Langevin or matrix
profile). The family is slow (a Python call per window and calculator, about 3 ms per bar for the
whole family) and is not in the default set: select it with `family:tsfresh` (or by name), on small
universes.

Names follow tsfresh's parameter names: `tsf_<calculator>[_<param>_<value>...]_w<window>`, with
`tsf_logvolume_` for the volume features, e.g. `tsf_quantile_q_0p1_w30` is
`quantile(x, q=0.1)` on the last 30 returns (`.` is written `p`, `-` is `m`). One window, 30, is
registered; `WINDOWS` lists them. Lookback: `window` bars on returns (the first bar has none),
`window - 1` on volume. A window holding a NaN gives NaN; calculators that are undefined on a window
(autocorrelation of a flat window, ...) give NaN, never +-inf.

Calculators that share work take all their parameters at once (tsfresh's "combiner" type, e.g. one
AR fit serves every AR coefficient), and every calculator is run once per input series for all the
features that use it: results are memoized per thread for the latest input of each series and reused
only for a bit-identical input (never across symbols with different data, never for a frame changed
in place).
"""

from __future__ import annotations

import threading
import warnings
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from quanto.features.spec import register
from quanto.features.statistical import log_returns

FAMILY = "tsfresh"
WINDOWS = (30,)
RETURNS, LOG_VOLUME = "logret", "logvolume"

# (calculator, parameters): one registered feature per row and window. Calculator names are those of
# tsfresh.feature_extraction.feature_calculators; a combiner's row holds one element of its `param` list.
ON_RETURNS: tuple[tuple[str, dict[str, Any]], ...] = (
    # location, dispersion and shape of the return distribution
    ("mean", {}),
    ("median", {}),
    ("sum_values", {}),
    ("standard_deviation", {}),
    ("root_mean_square", {}),
    ("skewness", {}),
    ("kurtosis", {}),
    ("maximum", {}),
    ("minimum", {}),
    ("absolute_maximum", {}),
    *(("mean_n_absolute_max", {"number_of_maxima": k}) for k in (3, 5)),
    *(("quantile", {"q": q}) for q in (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9)),
    *(("ratio_beyond_r_sigma", {"r": r}) for r in (0.5, 1, 1.5, 2, 2.5, 3)),
    ("count_above", {"t": 0}),
    ("count_above_mean", {}),
    # the path inside the window
    ("absolute_sum_of_changes", {}),
    ("mean_abs_change", {}),
    ("mean_change", {}),
    ("mean_second_derivative_central", {}),
    *(("cid_ce", {"normalize": b}) for b in (True, False)),
    ("longest_strike_above_mean", {}),
    ("longest_strike_below_mean", {}),
    ("first_location_of_maximum", {}),
    ("first_location_of_minimum", {}),
    ("number_crossing_m", {"m": 0}),
    *(("number_peaks", {"n": n}) for n in (1, 3, 5)),
    *(("energy_ratio_by_chunks", {"num_segments": 3, "segment_focus": i}) for i in range(3)),
    *(("index_mass_quantile", {"q": q}) for q in (0.25, 0.5, 0.75)),
    # serial dependence and nonlinearity
    *(("autocorrelation", {"lag": lag}) for lag in range(1, 6)),
    *(("agg_autocorrelation", {"f_agg": f, "maxlag": 10}) for f in ("mean", "median", "var")),
    *(("partial_autocorrelation", {"lag": lag}) for lag in range(1, 6)),
    *(("ar_coefficient", {"coeff": c, "k": 3}) for c in range(4)),
    *(("time_reversal_asymmetry_statistic", {"lag": lag}) for lag in (1, 2, 3)),
    *(("c3", {"lag": lag}) for lag in (1, 2, 3)),
    *(("linear_trend", {"attr": a}) for a in ("slope", "rvalue", "stderr")),
    # complexity and entropy
    *(("binned_entropy", {"max_bins": b}) for b in (5, 10)),
    *(("permutation_entropy", {"tau": 1, "dimension": d}) for d in (3, 4, 5)),
    *(("lempel_ziv_complexity", {"bins": b}) for b in (2, 3, 5)),
    *(("approximate_entropy", {"m": 2, "r": r}) for r in (0.3, 0.5)),
    ("fourier_entropy", {"bins": 5}),  # a Welch spectrum per call: one bin count only
    # spectrum
    *(("fft_coefficient", {"coeff": c, "attr": "abs"}) for c in range(1, 6)),
    *(("fft_aggregated", {"aggtype": a}) for a in ("centroid", "variance", "skew", "kurtosis")),
    *(("spkt_welch_density", {"coeff": c}) for c in (2, 5, 8)),
)

# Volume: scale-free shape and trend of log volume only (its level differs from symbol to symbol).
ON_LOG_VOLUME: tuple[tuple[str, dict[str, Any]], ...] = (
    ("standard_deviation", {}),
    ("skewness", {}),
    ("cid_ce", {"normalize": True}),
    ("ratio_beyond_r_sigma", {"r": 2}),
    ("last_location_of_maximum", {}),
    ("autocorrelation", {"lag": 1}),
    *(("linear_trend", {"attr": a}) for a in ("slope", "rvalue")),
)

_SERIES_TEXT = {RETURNS: "one-bar log returns", LOG_VOLUME: "bars' log(1 + volume)"}
_INPUTS = {RETURNS: ("close",), LOG_VOLUME: ("volume",)}

ParamsKey = tuple[tuple[str, Any], ...]
# (series, window, calculator) -> the parameter sets registered for it, in registration order: a
# calculator is evaluated once for all of them.
_GROUPS: dict[tuple[str, int, str], list[ParamsKey]] = {}


def _token(value: Any) -> str:
    """A parameter value as a name token: 0.1 -> 0p1, -2 -> m2, True -> true, 'abs' -> abs."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).lower().replace(".", "p").replace("-", "m")


def feature_name(series: str, calculator: str, params: dict[str, Any], window: int) -> str:
    """The registered name of `calculator(**params)` on `window` values of `series`."""
    parts = ["tsf", *([series] if series == LOG_VOLUME else []), calculator]
    for key, value in params.items():
        parts += [key, _token(value)]
    return "_".join([*parts, f"w{window}"])


def lookback(series: str, window: int) -> int:
    """Warm-up bars before the first full window: `window` returns need `window + 1` closes."""
    return window if series == RETURNS else window - 1


# --- the input series --------------------------------------------------------------------------------


def _input_series(bars: pd.DataFrame, series: str) -> np.ndarray:
    """One-bar log returns (NaN on the first bar) or log(1 + volume) (NaN for a negative volume)."""
    if series == RETURNS:
        return np.ascontiguousarray(log_returns(bars, 1), dtype=np.float64)
    volume = bars["volume"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log1p(volume)
    out[~np.isfinite(out)] = np.nan
    return out


# --- tsfresh, imported on first use ------------------------------------------------------------------

_calculators_module: ModuleType | None = None
_import_lock = threading.Lock()


def _calculators() -> ModuleType:
    """tsfresh's feature_calculators module; imported lazily because the import takes ~2.5 s and the
    CLI imports the registry for every command."""
    global _calculators_module
    with _import_lock:
        if _calculators_module is None:
            from tsfresh.feature_extraction import feature_calculators

            _calculators_module = feature_calculators
    # AutoReg on a (nearly) flat window of returns warns that its design is rank-deficient (it still
    # returns the coefficients), once per window. Re-added on each use because test runners reset
    # the filters; adding a filter that exists only moves it to the front.
    warnings.filterwarnings("ignore", message="The design matrix is rank-deficient", module="statsmodels")
    return _calculators_module


def _evaluate(x: np.ndarray, window: int, calculator: str, params: list[ParamsKey]) -> np.ndarray:
    """calculator on every full window of x, for each parameter set: a (len(params), len(x)) array.

    Row j, column t holds the value for params[j] on x[t - window + 1 : t + 1]; NaN before the first
    full window, for windows holding a NaN, and where tsfresh's value is not finite.
    """
    out = np.full((len(params), len(x)), np.nan)
    if len(x) < window:
        return out
    fn = getattr(_calculators(), calculator)
    combiner = getattr(fn, "fctype", "simple") == "combiner"
    kwargs = [dict(p) for p in params]
    windows = sliding_window_view(x, window)  # read-only views: a calculator cannot change x
    valid = np.flatnonzero(np.isfinite(windows).all(axis=1))
    values = np.full((len(valid), len(params)), np.nan)
    with np.errstate(all="ignore"):  # 0/0 on a flat window is NaN, reported as such
        for row, i in enumerate(valid):
            if combiner:
                values[row] = [value for _, value in fn(windows[i], kwargs)]
            else:
                values[row] = [fn(windows[i], **kw) for kw in kwargs]
    values[~np.isfinite(values)] = np.nan
    out[:, valid + window - 1] = values.T
    return out


# --- memo: each calculator once per input series -----------------------------------------------------

# Per thread (symbols run on a thread pool): series name -> (the input's bytes, {(window, calculator):
# values}). One input per series is all compute_features needs, since it hands one symbol's rows to
# every feature in turn; keeping no more bounds the memory to about one symbol's output.
_memo = threading.local()


def _group_values(x: np.ndarray, series: str, window: int, calculator: str) -> np.ndarray:
    """Every registered parameter set of (series, window, calculator) on x, computed once per x.

    Results are reused only for an input with exactly the same bytes, so another symbol, a truncated
    history or a frame changed in place is always recomputed.
    """
    slots: dict[str, tuple[bytes, dict]] | None = getattr(_memo, "slots", None)
    if slots is None:
        slots = _memo.slots = {}
    key = x.tobytes()
    slot = slots.get(series)
    if slot is None or slot[0] != key:
        slot = slots[series] = (key, {})
    results = slot[1]
    group = (window, calculator)
    if group not in results:
        results[group] = _evaluate(x, window, calculator, _GROUPS[(series, window, calculator)])
    return results[group]


def tsfresh_feature(
    bars: pd.DataFrame, series: str, window: int, calculator: str, params: dict[str, Any]
) -> np.ndarray:
    """tsfresh `calculator` with `params` on the trailing `window` values of `series` at every bar.

    `series` is "logret" (one-bar log returns) or "logvolume" (log(1 + volume)); `params` must be a
    registered parameter set of that (series, window, calculator). NaN for the first
    `lookback(series, window)` bars, windows holding a NaN and undefined values.
    """
    x = _input_series(bars, series)
    row = _GROUPS[(series, window, calculator)].index(tuple(params.items()))
    return _group_values(x, series, window, calculator)[row].copy()


def _register_all() -> None:
    """One registration per (window, series, table row), all backed by `tsfresh_feature`."""
    for window in WINDOWS:
        for series, table in ((RETURNS, ON_RETURNS), (LOG_VOLUME, ON_LOG_VOLUME)):
            for calculator, params in table:
                _GROUPS.setdefault((series, window, calculator), []).append(tuple(params.items()))
                shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                register(
                    feature_name(series, calculator, params, window),
                    family=FAMILY,
                    inputs=_INPUTS[series],
                    lookback=lookback(series, window),
                    params={"series": series, "window": window, "calculator": calculator, "params": params},
                    description=f"tsfresh {calculator}({shown}) of the last {window} {_SERIES_TEXT[series]}",
                    bounded=True,
                )(tsfresh_feature)


_register_all()
