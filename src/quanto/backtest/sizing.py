"""Position sizing: how a decision becomes a target quantity, and when a position is traded toward it.

Decisions come in three kinds (one per run):

- **signal** in {−1, 0, 1}: enter, exit or reverse. The position is sized when it is entered (or
  reversed) and then held unchanged while the signal keeps its side: a signal is not a rebalancing
  instruction (pass target weights for that). Sizing methods (``backtest.sizing``), each giving the
  signed fraction of equity w (or a quantity) at the decision bar:

  - ``fraction``: w = signal · fraction, where fraction defaults to 1 / (number of traded symbols);
  - ``fixed_qty``: quantity = signal · fixed_qty units;
  - ``risk`` (fixed-fractional): w = signal · risk_per_trade / stop_loss, so that a stop-loss exit
    loses risk_per_trade of equity (before slippage and gaps through the stop);
  - ``kelly``: w = signal · fraction · min(kelly_cap, max(0, signal · μ / σ²)), with μ and σ² the mean
    and sample variance (ddof 1) of the symbol's last ``sizing_window`` bar-to-bar close returns (the
    continuous-time Kelly fraction of the side the signal takes; 0 when that side has no edge);
  - ``vol_target``: w = signal · fraction · vol_target / (σ · √periods_per_year) with σ as above, so
    each position's annualized volatility is vol_target times its capital share.

  ``kelly`` and ``vol_target`` give 0 (no position) until the symbol has ``sizing_window`` returns
  and when σ² = 0. Every weight is then capped by the portfolio's leverage limit in the engine.
- **target_weight**: the signed fraction of equity to hold; traded whenever the position's weight
  at the decision differs from the target by more than ``drift_threshold`` (0: at every decision
  where they differ), or its side changes.
- **target_qty**: the signed number of units to hold; traded whenever it differs from the position.

A weight becomes a quantity at the decision bar: ``w · equity / close`` (equity and close of that
bar, what is known when deciding; the fill may then be at another price). With whole units
(``fractional_units: false``) every target quantity is rounded toward zero.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numba import njit

from quanto.config.models import BacktestConfig

# Decision kinds inside compiled code.
SIGNAL_WEIGHT, SIGNAL_QTY, TARGET_WEIGHT, TARGET_QTY = 0, 1, 2, 3


def trailing_return_stats(close: np.ndarray, has: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance (ddof 1) of each symbol's last `window` close-to-close returns, at
    every bar of a (bars × symbols) grid (NaN where a symbol has no bar or fewer than `window` returns).

    Returns are taken between a symbol's consecutive bars (its missing bars are skipped) and include
    the return into the bar itself: at the close of bar t everything used is known.
    """
    if window < 2:
        raise ValueError(f"sizing_window must be >= 2, got {window}")
    mean = np.full(close.shape, np.nan)
    var = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        rows = np.flatnonzero(has[:, j])
        if rows.size <= window:
            continue
        px = close[rows, j]
        returns = pd.Series(px[1:] / px[:-1] - 1.0)
        rolling = returns.rolling(window, min_periods=window)
        mean[rows[1:], j] = rolling.mean().to_numpy()
        var[rows[1:], j] = rolling.var(ddof=1).to_numpy()
    return mean, var


def signal_targets(
    signal: np.ndarray,
    close: np.ndarray,
    has: np.ndarray,
    cfg: BacktestConfig,
    n_symbols: int,
    periods_per_year: float | None,
) -> tuple[np.ndarray, int]:
    """(target, kind) for a (bars × symbols) grid of signals in {−1, 0, 1}: signed weights
    (kind SIGNAL_WEIGHT) or, for ``fixed_qty``, signed quantities (kind SIGNAL_QTY), by the method in
    ``cfg.sizing`` (module docstring)."""
    base = cfg.fraction if cfg.fraction is not None else 1.0 / n_symbols
    if cfg.sizing == "fixed_qty":
        return signal * float(cfg.fixed_qty), SIGNAL_QTY  # type: ignore[arg-type]
    if cfg.sizing == "fraction":
        return signal * base, SIGNAL_WEIGHT
    if cfg.sizing == "risk":
        return signal * (cfg.risk_per_trade / float(cfg.stop_loss)), SIGNAL_WEIGHT  # type: ignore[arg-type]
    mean, var = trailing_return_stats(close, has, cfg.sizing_window)
    usable = np.isfinite(var) & (var > 0)
    safe_var = np.where(usable, var, 1.0)
    if cfg.sizing == "kelly":
        edge = np.clip(signal * np.where(usable, mean, 0.0) / safe_var, 0.0, cfg.kelly_cap)
        return signal * base * np.where(usable, edge, 0.0), SIGNAL_WEIGHT
    if cfg.sizing == "vol_target":
        if periods_per_year is None:
            raise ValueError("sizing 'vol_target' needs periods_per_year to annualize volatility")
        scale = cfg.vol_target / np.sqrt(safe_var * periods_per_year)
        return signal * base * np.where(usable, scale, 0.0), SIGNAL_WEIGHT
    raise ValueError(f"unknown sizing {cfg.sizing!r}")


@njit(cache=True)
def target_quantity(kind: int, target: float, equity: float, price: float, fractional: bool) -> float:
    """The signed quantity a decision asks for: a weight times equity / price (0 when equity ≤ 0),
    or the quantity itself; rounded toward zero to whole units unless `fractional`."""
    if kind in (SIGNAL_WEIGHT, TARGET_WEIGHT):
        qty = target * equity / price if equity > 0.0 else 0.0
    else:
        qty = target
    return qty if fractional else float(math.trunc(qty))


@njit(cache=True)
def needs_order(
    kind: int, goal: float, qty: float, wanted: float, price: float, equity: float, drift: float
) -> bool:
    """Whether a position of `qty` units is traded to `wanted` units (the sized decision `goal`).

    Signals: when the signal's side differs from the position's (entry, exit, reversal) and the
    sized quantity differs (a signal too small for one whole unit places no order). Targets: a change
    of side always; target quantities any difference; target weights a gap in weight (at `price`
    and `equity`) above `drift`.
    """
    if kind in (SIGNAL_WEIGHT, SIGNAL_QTY):
        return np.sign(goal) != np.sign(qty) and wanted != qty
    if np.sign(wanted) != np.sign(qty):
        return True
    if kind == TARGET_QTY or equity <= 0.0:
        return wanted != qty
    return abs(wanted - qty) * price / equity > drift
