"""Reward-style labels: a reinforcement-learning reward for held positions, and spread explosions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.labels.paths import SymbolPaths

_BPS = 1e-4


def rl_reward(bars: pd.DataFrame, position: pd.Series, *, cost_bps: float) -> pd.DataFrame:
    """Next-bar reward of holding `position` from close t to close t+1, net of trading costs.

    `position` (aligned on the bars' index) is the fraction of equity held after trading at close t
    (1 = fully long, −0.5 = half short). pnl = position_t · (close[t+1] / close[t] − 1) (a simple
    return: positions scale simple, not log, returns); cost = |position_t − position_{t−1}| ·
    cost_bps / 10 000, the cost of trading into position_t at close t, with each symbol starting
    flat (position_{−1} = 0). label = pnl − cost.

    Returns `symbol, ts, label, t1, pnl, cost` in the input's rows, order and index, t1 = ts of bar
    t+1. A symbol's last bar has no next close (pnl, label NaN); a missing position or close makes
    the rows that use it NaN (a missing position also spoils the next row's cost). t1 is NaT exactly
    where label is NaN.
    """
    if not np.isfinite(cost_bps) or cost_bps < 0:
        raise ValueError(f"cost_bps must be finite and >= 0, got {cost_bps!r}")
    paths = SymbolPaths.of(bars, ["close"])
    close = paths.values(bars, "close")
    pos = paths.series(position, "position")
    nxt, prev = paths.ahead(1), paths.behind(1)
    pnl = np.full(len(paths), np.nan)
    has = nxt >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pnl[has] = pos[has] * (close[nxt[has]] / close[has] - 1.0)
    before = np.where(prev >= 0, pos[np.maximum(prev, 0)], 0.0)
    cost = np.abs(pos - before) * cost_bps * _BPS
    label = pnl - cost
    t1 = paths.ts_at(np.where(np.isfinite(label), nxt, -1))
    return paths.frame({"label": label, "t1": t1, "pnl": pnl, "cost": cost})


def spread_explosion(quotes: pd.DataFrame, *, window: int = 100, k: float = 2.0) -> pd.DataFrame:
    """1.0 if the next quote's spread blows out above its recent range, else 0.0, per symbol.

    spread = ask_px − bid_px. At quote t, mean and std (ddof=1) of the `window` spreads ending at t
    (all known at t) set threshold = mean + k·std; label = 1.0 if spread[t+1] > threshold else 0.0.

    Returns `symbol, ts, label, t1, spread, threshold` in the input's rows, order and index, t1 = ts of
    quote t+1. Quotes sharing a ts keep their input order. label is NaN (t1 NaT) for a symbol's first
    `window − 1` quotes, its last quote, and wherever a spread in the window or at t+1 is missing
    (one-sided quotes).
    """
    if int(window) != window or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    if not np.isfinite(k):
        raise ValueError(f"k must be finite, got {k!r}")
    paths = SymbolPaths.of(quotes, ["bid_px", "ask_px"], repeated_ts=True)
    spread = paths.values(quotes, "ask_px") - paths.values(quotes, "bid_px")
    roll = pd.Series(spread).rolling(int(window), min_periods=int(window))
    # A window reaching back past the symbol's first quote would mix symbols.
    threshold = np.where(paths.step >= int(window) - 1, (roll.mean() + k * roll.std()).to_numpy(), np.nan)

    nxt = paths.ahead(1)
    ahead = np.where(nxt >= 0, spread[np.maximum(nxt, 0)], np.nan)
    defined = np.isfinite(threshold) & np.isfinite(ahead)
    label = np.where(defined, (ahead > threshold).astype(np.float64), np.nan)
    t1 = paths.ts_at(np.where(defined, nxt, -1))
    return paths.frame({"label": label, "t1": t1, "spread": spread, "threshold": threshold})
