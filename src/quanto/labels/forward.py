"""Forward-return and direction labels over `horizon` bars, per symbol, with the label end time t1."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

LabelKind = Literal["forward_return", "direction"]
LABEL_KINDS: tuple[str, ...] = ("forward_return", "direction")
_KEY = ["symbol", "ts"]


def compute_labels(bars: pd.DataFrame, kind: LabelKind, horizon: int, threshold: float) -> pd.DataFrame:
    """Label each bar with what happens over the next `horizon` bars of the same symbol.

    Returns columns `symbol, ts, fwd_return, label, t1` with the input's rows, order and index:
    fwd_return = log(close[t+h] / close[t]); t1 = ts of bar t+h (the label's end time, for purging);
    label = fwd_return (`forward_return`) or 1.0 if fwd_return > threshold else 0.0 (`direction`).
    The last `horizon` bars of each symbol have NaN fwd_return and label and NaT t1: their future is
    unknown, so they are never filled. Bars are ordered by ts within each symbol whatever the input
    order. Raises ValueError for an unknown kind, horizon < 1, a non-finite threshold or repeated
    (symbol, ts) rows, and KeyError for missing columns.
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {kind!r}; expected one of {list(LABEL_KINDS)}")
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    horizon = int(horizon)
    missing = [c for c in (*_KEY, "close") if c not in bars.columns]
    if missing:
        raise KeyError(f"bars are missing columns {missing} needed for labels")

    symbol = bars["symbol"].to_numpy()
    ts = pd.DatetimeIndex(bars["ts"])
    close = bars["close"].to_numpy(dtype=np.float64)

    # Positions of the rows in (symbol, ts) order; results are computed there and scattered back.
    order = np.lexsort((ts.asi8, pd.factorize(symbol, sort=True)[0]))
    sym_sorted, ts_sorted = symbol[order], ts.asi8[order]
    same_key = (sym_sorted[1:] == sym_sorted[:-1]) & (ts_sorted[1:] == ts_sorted[:-1])
    if same_key.any():
        i = order[int(np.flatnonzero(same_key)[0])]
        raise ValueError(f"bars have repeated (symbol, ts) rows, e.g. {symbol[i]!r} at {ts[i]}")

    n = len(order)
    ahead = np.arange(n) + horizon  # sorted position of bar t+h
    valid = ahead < n
    valid[valid] = sym_sorted[ahead[valid]] == sym_sorted[valid]  # t+h must be the same symbol

    # end[i] = input row of bar t+h for input row i, or -1 when it lies beyond the symbol's history.
    end = np.full(n, -1, dtype=np.int64)
    end[order[valid]] = order[ahead[valid]]
    has_end = end >= 0
    fwd_return = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        fwd_return[has_end] = np.log(close[end[has_end]] / close[has_end])
    if kind == "direction":
        label = np.where(has_end, (fwd_return > threshold).astype(np.float64), np.nan)
    else:
        label = fwd_return.copy()

    return pd.DataFrame(
        {
            "symbol": symbol,
            "ts": ts.array,
            "fwd_return": fwd_return,
            "label": label,
            "t1": ts.take(end, allow_fill=True, fill_value=pd.NaT).array,
        },
        index=bars.index,
    )
