"""Statistical features: backward-looking log returns and realized volatility, per bar (not annualized)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.features.spec import register

FAMILY = "statistical"


def _log_close(bars: pd.DataFrame) -> np.ndarray:
    """log(close); a non-positive close (never valid bars) gives NaN rather than a warning."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(bars["close"].to_numpy(dtype=np.float64))
    out[~np.isfinite(out)] = np.nan
    return out


def _logret(bars: pd.DataFrame, periods: int) -> np.ndarray:
    """log(close[t] / close[t - periods]); NaN for the first `periods` bars."""
    log_close = _log_close(bars)
    out = np.full_like(log_close, np.nan)
    out[periods:] = log_close[periods:] - log_close[:-periods]
    return out


def _vol(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Sample standard deviation of the last `window` one-bar log returns."""
    returns = pd.Series(_logret(bars, 1))
    return returns.rolling(window, min_periods=window).std(ddof=1).to_numpy()


for _n in (1, 5, 20):
    register(
        f"logret_{_n}",
        family=FAMILY,
        inputs=("close",),
        lookback=_n,
        params={"periods": _n},
        description=f"log return over the last {_n} bar(s)",
    )(_logret)

for _n in (20, 60):
    register(
        f"vol_{_n}",
        family=FAMILY,
        inputs=("close",),
        lookback=_n,
        params={"window": _n},
        description=f"standard deviation of 1-bar log returns over the last {_n} bars",
    )(_vol)
