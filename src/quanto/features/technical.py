"""Technical indicators computed by TA-Lib, expressed scale-free so they compare across symbols.

Price-level outputs (moving averages, MACD, ATR) are divided by close; bounded oscillators (RSI,
stochastics, ADX, ...) keep TA-Lib's own units. Every indicator value comes from TA-Lib itself; the
only arithmetic here is the normalization and rolling z-scores of unbounded series (volume, OBV).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import talib

from quanto.features.spec import register

FAMILY = "technical"
_PRICE = ("close",)
_HLC = ("high", "low", "close")


def _arr(bars: pd.DataFrame, column: str) -> np.ndarray:
    """A bar column as the contiguous float64 array TA-Lib requires."""
    return np.ascontiguousarray(bars[column].to_numpy(dtype=np.float64))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where the ratio is undefined (zero denominator), never +-inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(num / den, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _zscore(values: np.ndarray, window: int) -> np.ndarray:
    """Rolling z-score over `window` bars ending at each bar (backward-looking).

    pandas' rolling moments are used rather than talib.STDDEV: TA-Lib keeps running sums of x and
    x^2, which lose precision on large cumulative series such as OBV.
    """
    s = pd.Series(values)
    roll = s.rolling(window, min_periods=window)
    return _div((s - roll.mean()).to_numpy(), roll.std(ddof=0).to_numpy())


# --- trend: distance from moving averages -------------------------------------------------------


def _sma_ratio(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """close / SMA - 1."""
    close = _arr(bars, "close")
    return _div(close, talib.SMA(close, timeperiod=timeperiod)) - 1.0


def _ema_ratio(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """close / EMA - 1."""
    close = _arr(bars, "close")
    return _div(close, talib.EMA(close, timeperiod=timeperiod)) - 1.0


for _n in (5, 10, 20, 50, 200):
    register(
        f"sma_ratio_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params={"timeperiod": _n},
        description=f"close / SMA({_n}) - 1",
    )(_sma_ratio)

for _n in (12, 26):
    register(
        f"ema_ratio_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params={"timeperiod": _n},
        description=f"close / EMA({_n}) - 1",
    )(_ema_ratio)

_MACD = {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}


def _macd_over_close(bars: pd.DataFrame, part: int, **macd_params: int) -> np.ndarray:
    """One MACD output (0 line, 1 signal, 2 histogram) divided by close."""
    close = _arr(bars, "close")
    return _div(talib.MACD(close, **macd_params)[part], close)


for _suffix, _part, _what in (("", 0, "line"), ("_signal", 1, "signal"), ("_hist", 2, "histogram")):
    register(
        f"macd{_suffix}_12_26_9",
        family=FAMILY,
        inputs=_PRICE,
        lookback=33,
        params={"part": _part, **_MACD},
        description=f"MACD(12, 26, 9) {_what} / close",
    )(_macd_over_close)


@register(
    "adx_14",
    family=FAMILY,
    inputs=_HLC,
    lookback=27,
    params={"timeperiod": 14},
    description="ADX(14): trend strength, 0..100",
)
def _adx(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib ADX."""
    return talib.ADX(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


@register(
    "plus_di_14",
    family=FAMILY,
    inputs=_HLC,
    lookback=14,
    params={"timeperiod": 14},
    description="+DI(14): upward directional indicator, 0..100",
)
def _plus_di(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib PLUS_DI."""
    return talib.PLUS_DI(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


@register(
    "minus_di_14",
    family=FAMILY,
    inputs=_HLC,
    lookback=14,
    params={"timeperiod": 14},
    description="-DI(14): downward directional indicator, 0..100",
)
def _minus_di(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib MINUS_DI."""
    return talib.MINUS_DI(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


@register(
    "aroon_osc_14",
    family=FAMILY,
    inputs=("high", "low"),
    lookback=14,
    params={"timeperiod": 14},
    description="Aroon oscillator(14): Aroon up - Aroon down, -100..100",
)
def _aroon_osc(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib AROONOSC."""
    return talib.AROONOSC(_arr(bars, "high"), _arr(bars, "low"), timeperiod=timeperiod)


# --- momentum oscillators -------------------------------------------------------------------------


@register(
    "rsi_14",
    family=FAMILY,
    inputs=_PRICE,
    lookback=14,
    params={"timeperiod": 14},
    description="RSI(14), 0..100",
)
def _rsi(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib RSI."""
    return talib.RSI(_arr(bars, "close"), timeperiod=timeperiod)


_STOCH = {"fastk_period": 14, "slowk_period": 3, "slowk_matype": 0, "slowd_period": 3, "slowd_matype": 0}


def _stoch(bars: pd.DataFrame, part: int, **stoch_params: int) -> np.ndarray:
    """One slow-stochastic output: 0 %K, 1 %D."""
    high, low, close = _arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close")
    return talib.STOCH(high, low, close, **stoch_params)[part]


for _name, _part, _what in (("stoch_k_14", 0, "%K"), ("stoch_d_14", 1, "%D")):
    register(
        _name,
        family=FAMILY,
        inputs=_HLC,
        lookback=17,
        params={"part": _part, **_STOCH},
        description=f"slow stochastic {_what} (14, 3, 3), 0..100",
    )(_stoch)


@register(
    "cci_20",
    family=FAMILY,
    inputs=_HLC,
    lookback=19,
    params={"timeperiod": 20},
    description="commodity channel index(20)",
)
def _cci(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib CCI."""
    return talib.CCI(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


@register(
    "roc_10",
    family=FAMILY,
    inputs=_PRICE,
    lookback=10,
    params={"timeperiod": 10},
    description="rate of change(10) in percent",
)
def _roc(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib ROC."""
    return talib.ROC(_arr(bars, "close"), timeperiod=timeperiod)


@register(
    "willr_14",
    family=FAMILY,
    inputs=_HLC,
    lookback=13,
    params={"timeperiod": 14},
    description="Williams %R(14), -100..0",
)
def _willr(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib WILLR."""
    return talib.WILLR(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


@register(
    "ultosc_7_14_28",
    family=FAMILY,
    inputs=_HLC,
    lookback=28,
    params={"timeperiod1": 7, "timeperiod2": 14, "timeperiod3": 28},
    description="ultimate oscillator(7, 14, 28), 0..100",
)
def _ultosc(bars: pd.DataFrame, timeperiod1: int, timeperiod2: int, timeperiod3: int) -> np.ndarray:
    """TA-Lib ULTOSC."""
    return talib.ULTOSC(
        _arr(bars, "high"),
        _arr(bars, "low"),
        _arr(bars, "close"),
        timeperiod1=timeperiod1,
        timeperiod2=timeperiod2,
        timeperiod3=timeperiod3,
    )


@register(
    "bop",
    family=FAMILY,
    inputs=("open", "high", "low", "close"),
    lookback=0,
    description="balance of power: (close - open) / (high - low), -1..1",
)
def _bop(bars: pd.DataFrame) -> np.ndarray:
    """TA-Lib BOP."""
    return talib.BOP(_arr(bars, "open"), _arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"))


# --- volatility -----------------------------------------------------------------------------------

_BB = {"timeperiod": 20, "nbdevup": 2.0, "nbdevdn": 2.0, "matype": 0}


@register(
    "bb_width_20",
    family=FAMILY,
    inputs=_PRICE,
    lookback=19,
    params=_BB,
    description="Bollinger(20, 2) band width / middle band",
)
def _bb_width(bars: pd.DataFrame, **bb_params: float) -> np.ndarray:
    """(upper - lower) / middle."""
    upper, middle, lower = talib.BBANDS(_arr(bars, "close"), **bb_params)
    return _div(upper - lower, middle)


@register(
    "bb_pctb_20",
    family=FAMILY,
    inputs=_PRICE,
    lookback=19,
    params=_BB,
    description="Bollinger(20, 2) %b: position of close within the bands (0 lower, 1 upper)",
)
def _bb_pctb(bars: pd.DataFrame, **bb_params: float) -> np.ndarray:
    """(close - lower) / (upper - lower); NaN when the bands collapse."""
    close = _arr(bars, "close")
    upper, _, lower = talib.BBANDS(close, **bb_params)
    return _div(close - lower, upper - lower)


@register(
    "natr_14",
    family=FAMILY,
    inputs=_HLC,
    lookback=14,
    params={"timeperiod": 14},
    description="normalized ATR(14): 100 * ATR / close",
)
def _natr(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib NATR (ATR / close in percent; a raw ATR would carry the price scale)."""
    return talib.NATR(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


# --- volume ---------------------------------------------------------------------------------------


@register(
    "mfi_14",
    family=FAMILY,
    inputs=(*_HLC, "volume"),
    lookback=14,
    params={"timeperiod": 14},
    description="money flow index(14), 0..100",
)
def _mfi(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib MFI."""
    high, low, close, volume = (_arr(bars, c) for c in ("high", "low", "close", "volume"))
    return talib.MFI(high, low, close, volume, timeperiod=timeperiod)


@register(
    "obv_z_20",
    family=FAMILY,
    inputs=("close", "volume"),
    lookback=19,
    params={"window": 20},
    description="on-balance volume z-score over 20 bars",
)
def _obv_z(bars: pd.DataFrame, window: int) -> np.ndarray:
    """OBV's level depends on where history starts; its rolling z-score does not."""
    return _zscore(talib.OBV(_arr(bars, "close"), _arr(bars, "volume")), window)


@register(
    "volume_z_20",
    family=FAMILY,
    inputs=("volume",),
    lookback=19,
    params={"window": 20},
    description="volume z-score over 20 bars",
)
def _volume_z(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Rolling z-score of raw volume (scale-free across symbols)."""
    return _zscore(_arr(bars, "volume"), window)
