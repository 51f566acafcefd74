"""Statistical features: backward-looking returns, realized volatility, return moments and volume.

Every value is per bar (not annualized) and depends only on the bars up to and including its own.
Windows count bars ending at the current one; a feature built on 1-bar log returns needs one extra
bar of warm-up, because the first bar has no return. Undefined values (a zero denominator, the log of
a non-positive number, a window with no variation) are NaN, never +-inf.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from quanto.features.spec import register

FAMILY = "statistical"
_CLOSE = ("close",)
_OHLC = ("open", "high", "low", "close")


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where the ratio is undefined (zero denominator), never +-inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(num / den, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _log(values: np.ndarray) -> np.ndarray:
    """Natural log with NaN (not -inf or a warning) for non-positive inputs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.asarray(values, dtype=np.float64))
    out[~np.isfinite(out)] = np.nan
    return out


def _log_column(bars: pd.DataFrame, column: str) -> np.ndarray:
    """log of a bar column; a non-positive value (never valid bars) gives NaN."""
    return _log(bars[column].to_numpy(dtype=np.float64))


def _diff(values: np.ndarray, periods: int) -> np.ndarray:
    """values[t] - values[t - periods]; NaN for the first `periods` entries."""
    out = np.full_like(values, np.nan)
    out[periods:] = values[periods:] - values[:-periods]
    return out


def log_returns(bars: pd.DataFrame, periods: int = 1) -> np.ndarray:
    """log(close[t] / close[t - periods]); NaN for the first `periods` bars.

    Public because the risk family builds its VaR and expected shortfall on the same 1-bar returns.
    """
    return _diff(_log_column(bars, "close"), periods)


def _vol(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Sample standard deviation of the last `window` one-bar log returns."""
    returns = pd.Series(log_returns(bars, 1))
    return returns.rolling(window, min_periods=window).std(ddof=1).to_numpy()


for _n in (1, 2, 5, 10, 20, 60):
    register(
        f"logret_{_n}",
        family=FAMILY,
        inputs=_CLOSE,
        lookback=_n,
        params={"periods": _n},
        description=f"log return over the last {_n} bar(s)",
    )(log_returns)

for _n in (10, 20, 60):
    register(
        f"vol_{_n}",
        family=FAMILY,
        inputs=_CLOSE,
        lookback=_n,
        params={"window": _n},
        description=f"standard deviation of 1-bar log returns over the last {_n} bars",
    )(_vol)


# --- range-based volatility -------------------------------------------------------------------------

# ln(H/L)^2 / (4 ln 2) is an unbiased per-bar variance estimate for a driftless Brownian motion.
_PARKINSON_SCALE = 1.0 / (4.0 * math.log(2.0))
_GK_CLOSE_OPEN = 2.0 * math.log(2.0) - 1.0


def _rolling_sqrt_mean(per_bar: np.ndarray, window: int) -> np.ndarray:
    """sqrt of the mean of `per_bar` over the last `window` bars; NaN for a negative mean.

    pandas' rolling mean clamps a window of non-negative values at 0 (no float-drift negatives), so a
    NaN here means the bars themselves were inconsistent (e.g. a close outside [low, high]).
    """
    mean = pd.Series(per_bar).rolling(window, min_periods=window).mean().to_numpy()
    with np.errstate(invalid="ignore"):
        return np.sqrt(mean)


def _parkinson_vol(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Parkinson volatility: sqrt(mean(ln(H/L)^2) / (4 ln 2)) over the last `window` bars."""
    hl = _log_column(bars, "high") - _log_column(bars, "low")
    return _rolling_sqrt_mean(_PARKINSON_SCALE * hl**2, window)


def _garman_klass_vol(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Garman-Klass volatility: sqrt(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2)) over `window` bars."""
    hl = _log_column(bars, "high") - _log_column(bars, "low")
    co = _log_column(bars, "close") - _log_column(bars, "open")
    return _rolling_sqrt_mean(0.5 * hl**2 - _GK_CLOSE_OPEN * co**2, window)


for _n in (20, 60):
    register(
        f"parkinson_vol_{_n}",
        family=FAMILY,
        inputs=("high", "low"),
        lookback=_n - 1,  # uses each bar's own range, no previous close
        params={"window": _n},
        description=f"Parkinson high-low volatility over the last {_n} bars: sqrt(mean(ln(H/L)^2) / (4 ln 2))",
    )(_parkinson_vol)
    register(
        f"garman_klass_vol_{_n}",
        family=FAMILY,
        inputs=_OHLC,
        lookback=_n - 1,
        params={"window": _n},
        description=(
            f"Garman-Klass OHLC volatility over the last {_n} bars: "
            "sqrt(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2))"
        ),
    )(_garman_klass_vol)


# --- higher moments and serial dependence of 1-bar log returns ---------------------------------------


def _ret_skew(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Bias-adjusted sample skewness (G1) of the last `window` 1-bar log returns; NaN when flat."""
    returns = pd.Series(log_returns(bars, 1))
    return returns.rolling(window, min_periods=window).skew().to_numpy()


def _ret_kurt(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Bias-adjusted excess kurtosis (Fisher G2, 0 for a normal) of the last `window` 1-bar log returns."""
    returns = pd.Series(log_returns(bars, 1))
    return returns.rolling(window, min_periods=window).kurt().to_numpy()


def _ret_autocorr(bars: pd.DataFrame, lag: int, window: int) -> np.ndarray:
    """Pearson correlation of r[t] with r[t - lag] over the last `window` pairs of 1-bar log returns.

    Each window pairs returns ending at t with the same returns shifted by `lag`, so it reaches back
    `window + lag` bars; NaN when either side has no variation.
    """
    returns = pd.Series(log_returns(bars, 1))
    corr = returns.rolling(window, min_periods=window).corr(returns.shift(lag)).to_numpy()
    return np.where(np.isfinite(corr), corr, np.nan)  # a flat window is 0/0: undefined, never +-inf


for _n in (20, 60):
    register(
        f"ret_skew_{_n}",
        family=FAMILY,
        inputs=_CLOSE,
        lookback=_n,
        params={"window": _n},
        description=f"sample skewness (bias-adjusted G1) of 1-bar log returns over the last {_n} bars",
    )(_ret_skew)
    register(
        f"ret_kurt_{_n}",
        family=FAMILY,
        inputs=_CLOSE,
        lookback=_n,
        params={"window": _n},
        description=(
            f"excess kurtosis (Fisher, bias-adjusted G2; 0 for a normal) of 1-bar log returns "
            f"over the last {_n} bars"
        ),
    )(_ret_kurt)

_AUTOCORR_WINDOW = 60
for _lag in (1, 2, 5):
    register(
        f"ret_autocorr_lag{_lag}_{_AUTOCORR_WINDOW}",
        family=FAMILY,
        inputs=_CLOSE,
        lookback=_AUTOCORR_WINDOW + _lag,
        params={"lag": _lag, "window": _AUTOCORR_WINDOW},
        description=(
            f"autocorrelation of 1-bar log returns at lag {_lag} over the last "
            f"{_AUTOCORR_WINDOW} return pairs"
        ),
    )(_ret_autocorr)


# --- volume -----------------------------------------------------------------------------------------


def _log_volume_change(bars: pd.DataFrame, periods: int) -> np.ndarray:
    """log(volume[t] / volume[t - periods]); NaN when either volume is zero."""
    return _diff(_log_column(bars, "volume"), periods)


def _dollar_volume_z(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Rolling z-score of close * volume over the last `window` bars (population std, like volume_z)."""
    dollar = pd.Series(bars["close"].to_numpy(dtype=np.float64) * bars["volume"].to_numpy(dtype=np.float64))
    roll = dollar.rolling(window, min_periods=window)
    return _div((dollar - roll.mean()).to_numpy(), roll.std(ddof=0).to_numpy())


register(
    "log_volume_change_1",
    family=FAMILY,
    inputs=("volume",),
    lookback=1,
    params={"periods": 1},
    description="log change of volume from the previous bar; NaN when either volume is zero",
)(_log_volume_change)

register(
    "dollar_volume_z_20",
    family=FAMILY,
    inputs=("close", "volume"),
    lookback=19,
    params={"window": 20},
    description="z-score of dollar volume (close * volume) against the last 20 bars (population std)",
)(_dollar_volume_z)
