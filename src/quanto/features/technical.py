"""Technical indicators computed by TA-Lib, expressed scale-free so they compare across symbols.

Price-level outputs (moving averages, MACD, ATR, SAR, regression slopes) are divided by close;
bounded oscillators (RSI, stochastics, ADX, ...) keep TA-Lib's own units. Every indicator value comes
from TA-Lib itself; the only arithmetic here is the normalization and rolling z-scores of unbounded
series (volume, OBV). So a symbol at price 1000 gets the same values as one at price 10 with the
same returns, and features compare across symbols. The raw, unnormalized catalog is `talib_catalog`.
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


for _n in (5, 10, 20, 50, 100, 200):
    register(
        f"sma_ratio_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params={"timeperiod": _n},
        description=f"close / SMA({_n}) - 1",
    )(_sma_ratio)

for _n in (5, 10, 12, 20, 26, 50, 100, 200):
    register(
        f"ema_ratio_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params={"timeperiod": _n},
        description=f"close / EMA({_n}) - 1",
    )(_ema_ratio)


@register(
    "kama_ratio_10",
    family=FAMILY,
    inputs=_PRICE,
    lookback=10,
    params={"timeperiod": 10},
    description="close / KAMA(10) - 1 (Kaufman adaptive moving average)",
)
def _kama_ratio(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """close / KAMA - 1."""
    close = _arr(bars, "close")
    return _div(close, talib.KAMA(close, timeperiod=timeperiod)) - 1.0


@register(
    "ht_trendline_ratio",
    family=FAMILY,
    inputs=_PRICE,
    lookback=63,
    description="close / Hilbert-transform instantaneous trendline - 1",
)
def _ht_trendline_ratio(bars: pd.DataFrame) -> np.ndarray:
    """close / HT_TRENDLINE - 1."""
    close = _arr(bars, "close")
    return _div(close, talib.HT_TRENDLINE(close)) - 1.0


@register(
    "tsf_ratio_14",
    family=FAMILY,
    inputs=_PRICE,
    lookback=13,
    params={"timeperiod": 14},
    description="close / time-series forecast(14) - 1 (distance from the regression line's next value)",
)
def _tsf_ratio(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """close / TSF - 1."""
    close = _arr(bars, "close")
    return _div(close, talib.TSF(close, timeperiod=timeperiod)) - 1.0


def _linreg_slope(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """Least-squares slope of close over the window (price per bar) divided by close."""
    close = _arr(bars, "close")
    return _div(talib.LINEARREG_SLOPE(close, timeperiod=timeperiod), close)


for _n in (14, 50):
    register(
        f"linreg_slope_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params={"timeperiod": _n},
        description=f"linear-regression slope over {_n} bars / close (fractional drift per bar)",
    )(_linreg_slope)


@register(
    "sar_dist",
    family=FAMILY,
    inputs=_HLC,
    lookback=1,
    params={"acceleration": 0.02, "maximum": 0.2},
    description="(close - parabolic SAR(0.02, 0.2)) / close: signed distance from the stop",
)
def _sar_dist(bars: pd.DataFrame, acceleration: float, maximum: float) -> np.ndarray:
    """(close - SAR) / close; SAR itself reads high and low only."""
    close = _arr(bars, "close")
    sar = talib.SAR(_arr(bars, "high"), _arr(bars, "low"), acceleration=acceleration, maximum=maximum)
    return _div(close - sar, close)


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
    "ppo_12_26",
    family=FAMILY,
    inputs=_PRICE,
    lookback=25,
    params={"fastperiod": 12, "slowperiod": 26, "matype": 1},
    description="percentage price oscillator(12, 26) on EMAs, in percent",
)
def _ppo(bars: pd.DataFrame, fastperiod: int, slowperiod: int, matype: int) -> np.ndarray:
    """TA-Lib PPO (the MACD line as a percentage of the slow average)."""
    return talib.PPO(_arr(bars, "close"), fastperiod=fastperiod, slowperiod=slowperiod, matype=matype)


@register(
    "trix_15",
    family=FAMILY,
    inputs=_PRICE,
    lookback=43,
    params={"timeperiod": 15},
    description="TRIX(15): 1-bar rate of change of a triple EMA, in percent",
)
def _trix(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib TRIX."""
    return talib.TRIX(_arr(bars, "close"), timeperiod=timeperiod)


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
    "adxr_14",
    family=FAMILY,
    inputs=_HLC,
    lookback=40,
    params={"timeperiod": 14},
    description="ADXR(14): ADX averaged with its value 13 bars ago, 0..100",
)
def _adxr(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib ADXR."""
    return talib.ADXR(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


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


def _aroon(bars: pd.DataFrame, part: int, timeperiod: int) -> np.ndarray:
    """One Aroon output: 0 down, 1 up."""
    return talib.AROON(_arr(bars, "high"), _arr(bars, "low"), timeperiod=timeperiod)[part]


for _name, _part, _what in (("aroon_down_14", 0, "down"), ("aroon_up_14", 1, "up")):
    register(
        _name,
        family=FAMILY,
        inputs=("high", "low"),
        lookback=14,
        params={"part": _part, "timeperiod": 14},
        description=f"Aroon {_what}(14): recency of the 14-bar extreme, 0..100",
    )(_aroon)


@register(
    "ht_dcperiod",
    family=FAMILY,
    inputs=_PRICE,
    lookback=32,
    description="Hilbert-transform dominant cycle period, in bars",
)
def _ht_dcperiod(bars: pd.DataFrame) -> np.ndarray:
    """TA-Lib HT_DCPERIOD."""
    return talib.HT_DCPERIOD(_arr(bars, "close"))


# --- momentum oscillators -------------------------------------------------------------------------


def _rsi(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib RSI."""
    return talib.RSI(_arr(bars, "close"), timeperiod=timeperiod)


for _n in (7, 14, 21):
    register(
        f"rsi_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n,
        params={"timeperiod": _n},
        description=f"RSI({_n}), 0..100",
    )(_rsi)


@register(
    "cmo_14",
    family=FAMILY,
    inputs=_PRICE,
    lookback=14,
    params={"timeperiod": 14},
    description="Chande momentum oscillator(14), -100..100",
)
def _cmo(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib CMO."""
    return talib.CMO(_arr(bars, "close"), timeperiod=timeperiod)


@register(
    "mom_ratio_10",
    family=FAMILY,
    inputs=_PRICE,
    lookback=10,
    params={"timeperiod": 10},
    description="momentum(10) / close: (close - close 10 bars ago) / close",
)
def _mom_ratio(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib MOM divided by close."""
    close = _arr(bars, "close")
    return _div(talib.MOM(close, timeperiod=timeperiod), close)


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


_STOCHRSI = {"timeperiod": 14, "fastk_period": 5, "fastd_period": 3, "fastd_matype": 0}


def _stochrsi(bars: pd.DataFrame, part: int, **stochrsi_params: int) -> np.ndarray:
    """One stochastic-RSI output: 0 fast %K, 1 fast %D."""
    return talib.STOCHRSI(_arr(bars, "close"), **stochrsi_params)[part]


for _name, _part, _what in (("stochrsi_k_14", 0, "%K"), ("stochrsi_d_14", 1, "%D")):
    register(
        _name,
        family=FAMILY,
        inputs=_PRICE,
        lookback=20,
        params={"part": _part, **_STOCHRSI},
        description=f"stochastic RSI {_what} (14, 5, 3), 0..100",
    )(_stochrsi)


def _cci(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib CCI."""
    return talib.CCI(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


for _n in (14, 20):
    register(
        f"cci_{_n}",
        family=FAMILY,
        inputs=_HLC,
        lookback=_n - 1,
        params={"timeperiod": _n},
        description=f"commodity channel index({_n})",
    )(_cci)


def _roc(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib ROC."""
    return talib.ROC(_arr(bars, "close"), timeperiod=timeperiod)


for _n in (5, 10, 20):
    register(
        f"roc_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n,
        params={"timeperiod": _n},
        description=f"rate of change({_n}) in percent",
    )(_roc)


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


def _bb_width(bars: pd.DataFrame, **bb_params: float) -> np.ndarray:
    """(upper - lower) / middle."""
    upper, middle, lower = talib.BBANDS(_arr(bars, "close"), **bb_params)
    return _div(upper - lower, middle)


def _bb_pctb(bars: pd.DataFrame, **bb_params: float) -> np.ndarray:
    """(close - lower) / (upper - lower); NaN when the bands collapse."""
    close = _arr(bars, "close")
    upper, _, lower = talib.BBANDS(close, **bb_params)
    return _div(close - lower, upper - lower)


for _n in (20, 50):
    _bb = {"timeperiod": _n, "nbdevup": 2.0, "nbdevdn": 2.0, "matype": 0}
    register(
        f"bb_width_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params=_bb,
        description=f"Bollinger({_n}, 2) band width / middle band",
    )(_bb_width)
    register(
        f"bb_pctb_{_n}",
        family=FAMILY,
        inputs=_PRICE,
        lookback=_n - 1,
        params=_bb,
        description=f"Bollinger({_n}, 2) %b: position of close within the bands (0 lower, 1 upper)",
    )(_bb_pctb)


def _natr(bars: pd.DataFrame, timeperiod: int) -> np.ndarray:
    """TA-Lib NATR (ATR / close in percent; a raw ATR would carry the price scale)."""
    return talib.NATR(_arr(bars, "high"), _arr(bars, "low"), _arr(bars, "close"), timeperiod=timeperiod)


for _n in (14, 28):
    register(
        f"natr_{_n}",
        family=FAMILY,
        inputs=_HLC,
        lookback=_n,
        params={"timeperiod": _n},
        description=f"normalized ATR({_n}): 100 * ATR / close",
    )(_natr)


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


def _obv_z(bars: pd.DataFrame, window: int) -> np.ndarray:
    """OBV's level depends on where history starts; its rolling z-score does not."""
    return _zscore(talib.OBV(_arr(bars, "close"), _arr(bars, "volume")), window)


def _volume_z(bars: pd.DataFrame, window: int) -> np.ndarray:
    """Rolling z-score of raw volume (scale-free across symbols)."""
    return _zscore(_arr(bars, "volume"), window)


for _n in (20, 60):
    register(
        f"obv_z_{_n}",
        family=FAMILY,
        inputs=("close", "volume"),
        lookback=_n - 1,
        params={"window": _n},
        description=f"on-balance volume z-score over {_n} bars",
        # Bounded in exact arithmetic, but OBV is a running sum: the further its level drifts from 0
        # (a long history, or other symbols ahead in a batch), the more the z-score's cancellation
        # loses; computed from the symbol's first bar, it matches a per-symbol TA-Lib run.
        bounded=False,
    )(_obv_z)
    register(
        f"volume_z_{_n}",
        family=FAMILY,
        inputs=("volume",),
        lookback=_n - 1,
        params={"window": _n},
        description=f"volume z-score over {_n} bars",
    )(_volume_z)


@register(
    "vwap_dist",
    family=FAMILY,
    inputs=(*_HLC, "volume", "vwap"),
    lookback=19,
    params={"window": 20},
    description="close / VWAP - 1: the bar's vwap where the vendor gives one, else the 20-bar "
    "typical-price VWAP",
)
def _vwap_dist(bars: pd.DataFrame, window: int) -> np.ndarray:
    """close / vwap - 1, falling back per bar to sum(typical price * volume) / sum(volume).

    The first `window - 1` bars are NaN whichever anchor applies, so the warm-up does not depend on
    whether a vendor fills `vwap` (the declared lookback stays exact).
    """
    high, low, close, volume = (_arr(bars, c) for c in ("high", "low", "close", "volume"))
    typical = (high + low + close) / 3.0
    rolling = _div(talib.SUM(typical * volume, timeperiod=window), talib.SUM(volume, timeperiod=window))
    vendor = _arr(bars, "vwap")
    anchor = np.where(np.isfinite(vendor) & (vendor > 0), vendor, rolling)
    out = _div(close, anchor) - 1.0
    out[: window - 1] = np.nan
    return out
