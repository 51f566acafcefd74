"""Risk features: rolling VaR, expected shortfall and drawdown, per symbol and backward-looking.

VaR and expected shortfall are built on 1-bar log returns and reported as positive losses (a
fraction of price, per bar, not annualized); drawdowns are negative fractions of a peak close. Each
value depends only on the bars up to and including its own; warm-up rows and undefined values are
NaN, never +-inf.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pandas as pd

from quanto.features.spec import register
from quanto.features.statistical import log_returns

FAMILY = "risk"
_CLOSE = ("close",)
# Bound the temporary (rows x window) blocks of the exact window computations to ~8 MB.
_BLOCK_VALUES = 1 << 20


def _rolling_blocks(
    values: np.ndarray, window: int, reduce: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply `reduce` (a (rows, window) block -> one value per row) to every full trailing window.

    Row t of the result summarizes values[t - window + 1 : t + 1]; the first window - 1 rows are NaN.
    Used where pandas has no rolling equivalent; blocks keep memory flat on long histories.
    """
    out = np.full(len(values), np.nan)
    if len(values) < window:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(values, window)
    rows = max(1, _BLOCK_VALUES // window)
    for start in range(0, len(windows), rows):
        block = windows[start : start + rows]
        out[start + window - 1 : start + window - 1 + len(block)] = reduce(block)
    return out


def _positive_close(bars: pd.DataFrame) -> np.ndarray:
    """close as float64 with non-positive prices (never valid bars) as NaN, so ratios stay finite."""
    close = bars["close"].to_numpy(dtype=np.float64).copy()
    close[~(close > 0)] = np.nan
    return close


# --- value at risk and expected shortfall ------------------------------------------------------------


def _var_historical(bars: pd.DataFrame, level: int, window: int) -> np.ndarray:
    """Historical VaR: minus the (100 - level)% empirical quantile of the last `window` 1-bar log returns.

    The quantile interpolates linearly between order statistics (numpy's default).
    """
    returns = pd.Series(log_returns(bars, 1))
    quantile = returns.rolling(window, min_periods=window).quantile(
        (100 - level) / 100, interpolation="linear"
    )
    return 0.0 - quantile.to_numpy()  # 0.0 - q rather than -q: a zero quantile reads 0.0, not -0.0


def _var_gaussian(bars: pd.DataFrame, level: int, window: int) -> np.ndarray:
    """Parametric VaR: z * std - mean of the last `window` 1-bar log returns (normal quantile z)."""
    z = NormalDist().inv_cdf(level / 100)
    roll = pd.Series(log_returns(bars, 1)).rolling(window, min_periods=window)
    return (z * roll.std(ddof=1) - roll.mean()).to_numpy()


def _cvar_historical(bars: pd.DataFrame, level: int, window: int) -> np.ndarray:
    """Expected shortfall: minus the mean of the worst (100 - level)% of the last `window` 1-bar log returns.

    The tail holds tail_n = (100 - level) * window / 100 returns; when that is fractional the next-worst
    return enters with the fractional weight (Acerbi-Tasche), which makes the estimate coherent and
    independent of how ties are broken. It is always >= the historical VaR of the same window.
    """
    tail_n = (100 - level) * window / 100
    whole = (100 - level) * window // 100  # exact integer arithmetic, no float floor surprises
    frac = tail_n - whole

    def reduce(block: np.ndarray) -> np.ndarray:
        worst = np.partition(block, whole, axis=1)  # [:, :whole] the worst, [:, whole] the next one
        tail_sum = worst[:, :whole].sum(axis=1) + frac * worst[:, whole]
        out = 0.0 - tail_sum / tail_n
        out[np.isnan(block).any(axis=1)] = np.nan  # partition sorts NaN last; a gap voids the window
        return out

    return _rolling_blocks(log_returns(bars, 1), window, reduce)


for _window in (60, 250):
    for _level in (95, 99):
        register(
            f"var_hist_{_level}_{_window}",
            family=FAMILY,
            inputs=_CLOSE,
            lookback=_window,
            params={"level": _level, "window": _window},
            description=(
                f"historical {_level}% VaR: minus the {100 - _level}% quantile of 1-bar log returns "
                f"over the last {_window} bars (a positive loss)"
            ),
        )(_var_historical)

register(
    "var_gauss_95_60",
    family=FAMILY,
    inputs=_CLOSE,
    lookback=60,
    params={"level": 95, "window": 60},
    description="Gaussian 95% VaR: 1.645 * std - mean of 1-bar log returns over the last 60 bars (a positive loss)",
)(_var_gaussian)

register(
    "cvar_hist_95_250",
    family=FAMILY,
    inputs=_CLOSE,
    lookback=250,
    params={"level": 95, "window": 250},
    description="historical 95% expected shortfall: minus the mean of the worst 5% of 1-bar log returns over the last 250 bars",
)(_cvar_historical)


# --- drawdown -----------------------------------------------------------------------------------------


def _max_drawdown(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Worst close / running-peak - 1 inside the last `window` closes (peak measured from the window start)."""

    def reduce(block: np.ndarray) -> np.ndarray:
        # NaN propagates through the peaks and the min: a missing close voids its window, never hides a loss.
        peaks = np.maximum.accumulate(block, axis=1)
        return (block / peaks - 1.0).min(axis=1)

    return _rolling_blocks(_positive_close(bars), window, reduce)


def _drawdown(bars: pd.DataFrame, window: int) -> np.ndarray:
    """close / highest close of the last `window` bars - 1: the current drawdown, <= 0."""
    close = pd.Series(_positive_close(bars))
    return (close / close.rolling(window, min_periods=window).max() - 1.0).to_numpy()


for _window in (20, 60, 250):
    register(
        f"max_drawdown_{_window}",
        family=FAMILY,
        inputs=_CLOSE,
        lookback=_window - 1,
        params={"window": _window},
        description=(
            f"maximum drawdown inside the last {_window} closes: min of close / running peak - 1 (<= 0)"
        ),
    )(_max_drawdown)

register(
    "drawdown_250",
    family=FAMILY,
    inputs=_CLOSE,
    lookback=249,
    params={"window": 250},
    description="current drawdown: close / highest close of the last 250 bars - 1 (<= 0)",
)(_drawdown)
