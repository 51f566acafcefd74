"""Offline `sample` vendor: real daily OHLCV shipped inside installed PyPI packages.

Sources (nothing is downloaded at run time):

- `arch.data.sp500` / `arch.data.nasdaq`: S&P 500 and NASDAQ Composite index levels, 1999-01-04..2018-12-31.
- `bokeh_sampledata.stocks`: AAPL, IBM, MSFT (2000-03-01..2013-03-01), GOOG (2004-08-19..2013-03-01)
  and FB (2012-05-18..2013-03-01).

With `adjustment="raw"` prices are the open/high/low/close as shipped, so stock splits show up as
price jumps (AAPL 2000-06-21 and 2005-02-28, MSFT 2003-02-18). With `adjustment="all"` (the default
of job files, like a vendor's adjusted feed) every price is scaled by the shipped adj_close/close
factor of its day and volume by its inverse, so splits and dividends no longer look like returns.
Vendor oddities (two IXIC days with zero volume) reach validation untouched either way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd

from quanto.data.schemas import conform_bars, empty_bars

VENDOR = "sample"
TIMEFRAME = "1d"
# Daily bars are stamped with their open: the regular-session open of the US cash market.
SESSION_OPEN = dt.time(9, 30)
SESSION_TZ = "America/New_York"

SAMPLE_SYMBOLS: dict[str, str] = {
    "SPX": "S&P 500 index, daily 1999-01-04..2018-12-31 (arch.data.sp500)",
    "IXIC": "NASDAQ Composite index, daily 1999-01-04..2018-12-31 (arch.data.nasdaq)",
    "AAPL": "Apple Inc., daily 2000-03-01..2013-03-01, unadjusted (bokeh_sampledata.stocks)",
    "IBM": "IBM Corp., daily 2000-03-01..2013-03-01, unadjusted (bokeh_sampledata.stocks)",
    "MSFT": "Microsoft Corp., daily 2000-03-01..2013-03-01, unadjusted (bokeh_sampledata.stocks)",
    "GOOG": "Alphabet (Google) Inc., daily 2004-08-19..2013-03-01, unadjusted (bokeh_sampledata.stocks)",
    "FB": "Meta (Facebook) Inc., daily 2012-05-18..2013-03-01, unadjusted (bokeh_sampledata.stocks)",
}


def _load_arch(module: str) -> pd.DataFrame:
    """One `arch.data.<module>` data set as (date, open, high, low, close, volume)."""
    import importlib

    # Imported lazily: importing `arch` costs over a second and most callers never need it.
    raw = importlib.import_module(f"arch.data.{module}").load()
    return pd.DataFrame(
        {
            "date": pd.DatetimeIndex(raw.index).normalize(),
            "open": raw["Open"].to_numpy(),
            "high": raw["High"].to_numpy(),
            "low": raw["Low"].to_numpy(),
            "close": raw["Close"].to_numpy(),
            "volume": raw["Volume"].to_numpy(),
            "adj_close": raw["Adj Close"].to_numpy(),
        }
    )


def _load_bokeh(ticker: str) -> pd.DataFrame:
    """One `bokeh_sampledata.stocks` ticker as (date, open, high, low, close, volume)."""
    import bokeh_sampledata.stocks as stocks

    raw = getattr(stocks, ticker)
    return pd.DataFrame(
        {
            "date": pd.to_datetime(raw["date"], format="%Y-%m-%d"),
            "open": raw["open"],
            "high": raw["high"],
            "low": raw["low"],
            "close": raw["close"],
            "volume": raw["volume"],
            "adj_close": raw["adj_close"],
        }
    )


_LOADERS: dict[str, Callable[[], pd.DataFrame]] = {
    "SPX": lambda: _load_arch("sp500"),
    "IXIC": lambda: _load_arch("nasdaq"),
    **{t: (lambda t=t: _load_bokeh(t)) for t in ("AAPL", "IBM", "MSFT", "GOOG", "FB")},
}


@lru_cache(maxsize=len(_LOADERS))
def _daily_bars(symbol: str) -> pd.DataFrame:
    """All shipped rows of one symbol as canonical bars (cached; callers must not mutate it)."""
    raw = _LOADERS[symbol]()
    sessions = pd.DatetimeIndex(raw["date"])
    open_at = sessions + pd.Timedelta(hours=SESSION_OPEN.hour, minutes=SESSION_OPEN.minute)
    # Localizing 09:30 wall-clock time picks EST or EDT per date, so DST is handled by tzdata.
    ts = open_at.tz_localize(SESSION_TZ).tz_convert("UTC")
    n = len(raw)
    bars = pd.DataFrame(
        {
            "symbol": symbol,
            "ts": ts,
            "timeframe": TIMEFRAME,
            "open": raw["open"].astype("float64").to_numpy(),
            "high": raw["high"].astype("float64").to_numpy(),
            "low": raw["low"].astype("float64").to_numpy(),
            "close": raw["close"].astype("float64").to_numpy(),
            "volume": raw["volume"].astype("float64").to_numpy(),
            "vwap": np.full(n, np.nan),
            "trades": pd.array([pd.NA] * n, dtype="Int64"),
            "vendor": VENDOR,
            "imputed": np.zeros(n, dtype=bool),
            "_session": sessions,
            "_factor": (raw["adj_close"].astype("float64") / raw["close"].astype("float64")).to_numpy(),
        }
    )
    # Sort without dropping or repairing anything: bad vendor rows must reach validation as shipped.
    return bars.sort_values("ts", kind="stable").reset_index(drop=True)


def load_sample_bars(
    symbols: list[str], start: dt.date, end: dt.date, adjustment: Literal["raw", "all"] = "raw"
) -> pd.DataFrame:
    """Canonical daily bars of the shipped sample data for sessions `start <= date < end`.

    `ts` is the bar open: the session date at 09:30 America/New_York, in UTC. Prices are raw as
    shipped, or split- and dividend-adjusted with `adjustment="all"` (see the module docstring); `vwap` and `trades` are null. Symbols without rows in the range are
    simply absent. Rows are sorted by (symbol, ts).

    Raises ValueError naming any unknown symbol and listing the available ones.
    """
    unknown = [s for s in symbols if s not in SAMPLE_SYMBOLS]
    if unknown:
        raise ValueError(
            f"unknown sample symbol(s) {unknown}; available sample symbols: {sorted(SAMPLE_SYMBOLS)}"
        )
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    parts = []
    for symbol in sorted(set(symbols)):
        bars = _daily_bars(symbol)
        in_range = (bars["_session"] >= lo) & (bars["_session"] < hi)
        part = bars.loc[in_range].copy()
        if adjustment == "all":
            factor = part["_factor"].to_numpy()
            for col in ("open", "high", "low", "close"):
                part[col] = part[col].to_numpy() * factor
            part["volume"] = part["volume"].to_numpy() / factor
        parts.append(part)
    parts = [p for p in parts if len(p)]
    if not parts:
        return conform_bars(empty_bars())
    return conform_bars(pd.concat(parts, ignore_index=True))
