"""Price paths per symbol: the layout every label shares, multi-horizon forward returns, next-bar range.

Labels are computed on each symbol's bars in time order and scattered back to the input's rows, so a
label never sees another symbol's bars and the output keeps the input's rows, order and index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_KEY = ("symbol", "ts")


@dataclass(frozen=True)
class SymbolPaths:
    """Rows of a (symbol, ts) frame laid out symbol by symbol in time order.

    Position j is a row of that sorted layout: `order[j]` is its input row, `step[j]` how many bars of
    its symbol precede it and `left[j]` how many follow it. Work happens in sorted positions;
    `frame` scatters sorted columns back to the input's rows, order and index.
    """

    order: np.ndarray
    step: np.ndarray
    left: np.ndarray
    symbol: np.ndarray
    ts: pd.DatetimeIndex
    index: pd.Index

    @classmethod
    def of(cls, frame: pd.DataFrame, needed: Iterable[str] = (), *, repeated_ts: bool = False) -> SymbolPaths:
        """Lay out `frame` per symbol by ts (ties keep input order).

        Raises KeyError for missing key or `needed` columns and, unless `repeated_ts`, ValueError for
        repeated (symbol, ts) rows (quotes may legitimately share a timestamp; bars may not).
        """
        missing = [c for c in (*_KEY, *needed) if c not in frame.columns]
        if missing:
            raise KeyError(f"frame is missing columns {missing} needed for labels")
        symbol = frame["symbol"].to_numpy()
        ts = pd.DatetimeIndex(frame["ts"])
        codes = pd.factorize(symbol, sort=True)[0]
        # lexsort is stable, so rows sharing (symbol, ts) keep their input order.
        order = np.lexsort((ts.asi8, codes))
        codes_sorted, ts_sorted = codes[order], ts.asi8[order]
        same_symbol = codes_sorted[1:] == codes_sorted[:-1]
        if not repeated_ts:
            same_key = same_symbol & (ts_sorted[1:] == ts_sorted[:-1])
            if same_key.any():
                i = order[int(np.flatnonzero(same_key)[0])]
                raise ValueError(f"repeated (symbol, ts) rows, e.g. {symbol[i]!r} at {ts[i]}")
        n = len(order)
        starts = np.flatnonzero(np.r_[True, ~same_symbol]) if n else np.array([], dtype=np.int64)
        lengths = np.diff(np.r_[starts, n])
        first = np.repeat(starts, lengths)
        step = np.arange(n) - first
        left = np.repeat(lengths, lengths) - step - 1
        return cls(order=order, step=step, left=left, symbol=symbol, ts=ts, index=frame.index)

    def __len__(self) -> int:
        return len(self.order)

    def values(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        """`frame[column]` as float64 in sorted positions."""
        return frame[column].to_numpy(dtype=np.float64, na_value=np.nan)[self.order]

    def series(self, series: pd.Series, name: str) -> np.ndarray:
        """A per-row input series (aligned on the frame's index) as float64 in sorted positions.

        A series whose index differs from the frame's is reindexed onto it; rows it lacks are NaN.
        """
        if not isinstance(series, pd.Series):
            raise TypeError(f"{name} must be a pandas Series aligned with the frame's index")
        if not series.index.equals(self.index):
            series = series.reindex(self.index)
        return series.to_numpy(dtype=np.float64, na_value=np.nan)[self.order]

    def ahead(self, k: int) -> np.ndarray:
        """Sorted position k bars later in the same symbol, or -1 beyond its last bar."""
        return np.where(self.left >= k, np.arange(len(self)) + k, -1)

    def behind(self, k: int) -> np.ndarray:
        """Sorted position k bars earlier in the same symbol, or -1 before its first bar."""
        return np.where(self.step >= k, np.arange(len(self)) - k, -1)

    def ts_at(self, positions: np.ndarray) -> pd.DatetimeIndex:
        """ts at sorted `positions` (-1 → NaT), still in sorted order."""
        rows = np.where(positions >= 0, self.order[np.maximum(positions, 0)], -1)
        return self.ts.take(rows, allow_fill=True, fill_value=pd.NaT)

    def frame(
        self, columns: dict[str, np.ndarray | pd.Index | pd.api.extensions.ExtensionArray]
    ) -> pd.DataFrame:
        """`symbol, ts` then `columns` (given in sorted positions) in the input's rows, order and index."""
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        out: dict[str, object] = {"symbol": self.symbol, "ts": self.ts.array}
        for name, sorted_values in columns.items():
            taken = sorted_values.take(inverse)
            out[name] = taken.array if isinstance(taken, pd.Index) else taken
        return pd.DataFrame(out, index=self.index)


def log_returns(paths: SymbolPaths, close: np.ndarray) -> np.ndarray:
    """One-bar log returns in sorted positions; NaN on each symbol's first bar (no previous close)."""
    prev = paths.behind(1)
    out = np.full(len(paths), np.nan)
    has = prev >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out[has] = np.log(close[has] / close[prev[has]])
    return out


def rolling_volatility(paths: SymbolPaths, close: np.ndarray, window: int) -> np.ndarray:
    """Std (ddof=1) of the last `window` one-bar log returns, known at the bar's close.

    NaN until a symbol has `window` returns (its first `window` bars) and wherever the window holds a
    missing return. Because each symbol's first return is NaN, no window mixes two symbols.
    """
    if int(window) != window or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    r = pd.Series(log_returns(paths, close))
    return r.rolling(int(window), min_periods=int(window)).std().to_numpy()


def forward_returns(bars: pd.DataFrame, horizons: Sequence[int]) -> pd.DataFrame:
    """Forward log returns over several horizons, per symbol.

    Returns `symbol, ts` then, for each h in `horizons`, `fwd_return_<h>` = log(close[t+h] / close[t])
    and `t1_<h>` = ts of bar t+h (the label's end time), exactly as `compute_labels(kind=
    "forward_return")` does for one horizon: the last h bars of a symbol are NaN / NaT. Same rows,
    order and index as `bars`. Raises ValueError for an empty, repeated or non-positive
    horizon list, and for repeated (symbol, ts) rows.
    """
    hs = [int(h) for h in horizons]
    if not hs or any(h < 1 or h != h0 for h, h0 in zip(hs, horizons, strict=True)) or len(set(hs)) != len(hs):
        raise ValueError(f"horizons must be distinct integers >= 1, got {list(horizons)!r}")
    paths = SymbolPaths.of(bars, ["close"])
    close = paths.values(bars, "close")
    columns: dict[str, np.ndarray | pd.Index] = {}
    for h in hs:
        end = paths.ahead(h)
        ret = np.full(len(paths), np.nan)
        has = end >= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ret[has] = np.log(close[end[has]] / close[has])
        columns[f"fwd_return_{h}"] = ret
        columns[f"t1_{h}"] = paths.ts_at(end)
    return paths.frame(columns)


def next_bar_range(bars: pd.DataFrame) -> pd.DataFrame:
    """Next bar's log range, log(high[t+1] / low[t+1]): a volatility target known at t+1's close.

    Returns `symbol, ts, label, t1` (t1 = ts of bar t+1) in the input's rows, order and index; label
    is NaN and t1 NaT on each symbol's last bar and where the next high or low is missing.
    """
    paths = SymbolPaths.of(bars, ["high", "low"])
    high, low = paths.values(bars, "high"), paths.values(bars, "low")
    nxt = paths.ahead(1)
    label = np.full(len(paths), np.nan)
    has = nxt >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        label[has] = np.log(high[nxt[has]] / low[nxt[has]])
    return paths.frame({"label": label, "t1": paths.ts_at(np.where(np.isfinite(label), nxt, -1))})
