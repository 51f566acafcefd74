"""Triple-barrier labels and meta-labels (López de Prado, *Advances in Financial Machine Learning*, ch. 3).

Barriers are checked on the CLOSE path (the standard choice): a bar's high or low may pierce a barrier
intrabar without the position being closable there, and the order of high and low inside a bar is
unknown, so closes give an unambiguous first touch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.labels.paths import SymbolPaths, rolling_volatility

# Rows processed per block: bounds the (rows × max_bars) path matrices to a few hundred MB.
_BLOCK_ROWS = 1 << 20


def triple_barrier(
    bars: pd.DataFrame,
    *,
    vol_window: int = 20,
    pt_mult: float = 2.0,
    sl_mult: float = 2.0,
    max_bars: int = 10,
    side: pd.Series | None = None,
) -> pd.DataFrame:
    """Label each bar by which of three barriers its symbol's close path touches first.

    At bar t, vol = std of the last `vol_window` one-bar log returns (known at t's close). Over the next
    `max_bars` bars, with path_k = log(close[t+k] / close[t]) (times `side`, when given):
    the profit-take is hit when path_k > pt_mult·vol (close above close_t·exp(pt_mult·vol) for a long),
    the stop-loss when path_k < −sl_mult·vol, and the vertical barrier is bar t+max_bars. Barriers count
    as touched when the close goes strictly beyond them, as in López de Prado. A multiplier of
    `math.inf` disables that barrier.

    Returns `symbol, ts, label, t1, ret, barrier` in the input's rows, order and index: label = +1
    (pt first), −1 (sl first) or 0 (vertical); t1 = ts of the touching bar (or of bar t+max_bars);
    ret = path at t1 (in the side's direction when `side` is given); barrier = "pt" | "sl" | "vertical".

    `side` (a primary model's bet, +1 long / −1 short, aligned on the bars' index) turns the barriers
    into profit-take and stop-loss of that trade: label +1 means the trade made money at its
    profit-take, whichever its direction. Side 0 or NaN means no bet, hence no label.

    Undefined (label and ret NaN, t1 NaT, barrier missing): no vol yet (a symbol's first `vol_window`
    bars), a missing close at t, no side, or a path that ends (end of the symbol's history or a missing
    close) before a barrier is touched; a touch before such a gap is a known outcome and stays labelled.
    So appending future bars never changes an existing label.
    """
    if int(vol_window) != vol_window or vol_window < 2:
        raise ValueError(f"vol_window must be an integer >= 2, got {vol_window!r}")
    if int(max_bars) != max_bars or max_bars < 1:
        raise ValueError(f"max_bars must be an integer >= 1, got {max_bars!r}")
    for name, mult in (("pt_mult", pt_mult), ("sl_mult", sl_mult)):
        if not mult > 0:
            raise ValueError(f"{name} must be > 0 (math.inf disables the barrier), got {mult!r}")
    paths = SymbolPaths.of(bars, ["close"])
    close = paths.values(bars, "close")
    vol = rolling_volatility(paths, close, int(vol_window))
    n = len(paths)
    if side is None:
        direction = np.ones(n)
    else:
        direction = paths.series(side, "side")
        bad = ~np.isnan(direction) & ~np.isin(direction, (-1.0, 0.0, 1.0))
        if bad.any():
            raise ValueError(f"side must be +1, -1, 0 or NaN, got {direction[bad][0]!r}")
        direction = np.where(direction == 0, np.nan, direction)

    k_end = np.full(n, -1, dtype=np.int64)  # offset of t1 minus one, or -1 when undefined
    kind = np.zeros(n, dtype=np.int8)  # +1 pt, -1 sl, 0 vertical
    ret = np.full(n, np.nan)
    for start in range(0, n, _BLOCK_ROWS):
        block = slice(start, min(start + _BLOCK_ROWS, n))
        k_end[block], kind[block], ret[block] = _first_touch(
            close, vol, direction, paths.left, block, int(max_bars), float(pt_mult), float(sl_mult)
        )

    defined = k_end >= 0
    label = np.where(defined, kind.astype(np.float64), np.nan)
    end = np.where(defined, np.arange(n) + k_end + 1, -1)
    names = np.array([None, "sl", "vertical", "pt"], dtype=object)[np.where(defined, kind + 2, 0)]
    return paths.frame(
        {
            "label": label,
            "t1": paths.ts_at(end),
            "ret": ret,
            "barrier": pd.array(names, dtype="str"),
        }
    )


def _first_touch(
    close: np.ndarray,
    vol: np.ndarray,
    direction: np.ndarray,
    left: np.ndarray,
    block: slice,
    max_bars: int,
    pt_mult: float,
    sl_mult: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First barrier touch for the sorted rows in `block`: (offset − 1 or −1, kind, path return)."""
    rows = np.arange(block.start, block.stop)
    offsets = np.arange(1, max_bars + 1)
    ahead = rows[:, None] + offsets
    inside = left[rows][:, None] >= offsets  # t+k still belongs to the same symbol
    future = np.where(inside, close[np.where(inside, ahead, 0)], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        path = direction[rows][:, None] * np.log(future / close[rows][:, None])
        upper = pt_mult * vol[rows]
        lower = -sl_mult * vol[rows]
    k_pt = _first(path > upper[:, None], max_bars)
    k_sl = _first(path < lower[:, None], max_bars)
    k_gap = _first(np.isnan(path), max_bars)
    k_touch = np.minimum(k_pt, k_sl)
    known = np.isfinite(vol[rows]) & np.isfinite(direction[rows])
    # A touch counts only if the path is complete up to it; with no touch, the whole path must exist.
    touched = known & (k_touch < k_gap)
    vertical = known & ~touched & (k_gap == max_bars)
    k = np.where(touched, k_touch, max_bars - 1)
    kind = np.where(touched, np.where(k_pt < k_sl, 1, -1), 0).astype(np.int8)
    ret = np.where(touched | vertical, path[np.arange(len(rows)), k], np.nan)
    return np.where(touched | vertical, k, -1), kind, ret


def _first(hit: np.ndarray, none: int) -> np.ndarray:
    """Column of each row's first True, or `none` when the row has none."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1), none)


def meta_labels(bars: pd.DataFrame, side: pd.Series, **barrier_kw: object) -> pd.DataFrame:
    """Meta-labels for a primary model's `side`: 1.0 if its trade paid off, else 0.0.

    Runs `triple_barrier(bars, side=side, **barrier_kw)`; the trade paid off when it reached its
    profit-take, or reached the vertical barrier with a positive return in its direction. Returns the
    same columns as `triple_barrier` with `label` replaced by the meta-label; rows without a bet or an
    outcome stay NaN. A secondary model trained on these learns when to act on the primary's bets.
    """
    out = triple_barrier(bars, side=side, **barrier_kw)  # type: ignore[arg-type]
    barrier = out["barrier"]
    won = (barrier == "pt") | ((barrier == "vertical") & (out["ret"] > 0))
    out["label"] = np.where(barrier.notna(), won.astype(np.float64), np.nan)
    return out
