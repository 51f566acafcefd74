"""Performance metrics of a return series and its trade log, as JSON-friendly numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Timeframe → bars per year: 252 sessions; US equities trade 6.5 hours = 78 five-minute = 390 one-minute bars.
_PERIODS_PER_YEAR = {
    "1d": 252.0,
    "1h": 252.0 * 6.5,
    "15min": 252.0 * 26,
    "5min": 252.0 * 78,
    "1min": 252.0 * 390,
}

# A drawdown "ends" when equity is back within this relative distance of its peak; it absorbs the float
# noise of compounding (1.1 * (1/1.1) is not exactly 1) without hiding any real loss.
_RECOVERY_RTOL = 1e-12


def periods_per_year_for(timeframe: str) -> float:
    """Bars per year for a timeframe: 1d → 252, 1h → 252·6.5, 5min → 252·78, 1min → 252·390."""
    try:
        return _PERIODS_PER_YEAR[timeframe]
    except KeyError:
        raise ValueError(
            f"unknown timeframe {timeframe!r}; expected one of {sorted(_PERIODS_PER_YEAR)}"
        ) from None


def _clean(x: float | None) -> float | None:
    """Python float, or None for anything not finite (JSON has no NaN or inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def performance_metrics(
    returns: pd.Series | np.ndarray,
    trades: pd.DataFrame | None,
    periods_per_year: float,
    risk_free: float = 0.0,
    positions: pd.DataFrame | None = None,
) -> dict[str, float | int | None]:
    """Summary statistics of per-period simple returns, closed/open trades and positions.

    Every value is a Python int/float or None (undefined: too few periods, zero deviation, no trades),
    never NaN or inf. With n = len(returns), ppy = periods_per_year, rf = risk_free / ppy (the annual
    risk-free rate spread evenly over periods) and x = returns − rf:

    - periods: n.
    - total_return: prod(1 + r) − 1.
    - annual_return: CAGR over n / ppy years: (1 + total_return)^(ppy / n) − 1; −1 if wiped out.
    - annual_volatility: sample standard deviation (ddof = 1) of r × sqrt(ppy); needs n ≥ 2.
    - sharpe: mean(x) / std(x, ddof = 1) × sqrt(ppy); None when the deviation is 0 or n < 2.
    - sortino: mean(x) / DD × sqrt(ppy), DD = sqrt(mean(min(x, 0)²)) over ALL n periods (population
      downside deviation, target 0 on excess returns); None when no period is below the target.
    - max_drawdown: min over the compounded curve (starting at 1 before the first period) of
      equity / running peak − 1; a negative fraction, 0 without losses.
    - max_drawdown_duration: the longest run of consecutive periods that end below an earlier peak, in
      bars (a drawdown still open at the end counts up to the last bar).
    - win_rate: share of closed trades with pnl > 0 (None without closed trades).
    - profit_factor: gross profit / gross loss over closed trades (None when there is no loss).
    - trades: number of trades, closed and open.
    - exposure: share of rows of `positions` (symbol × bar) with a non-zero position; None without
      positions.

    `trades` needs columns pnl and open; `positions` needs column position.
    """
    r = np.asarray(returns, dtype=float)
    if not np.isfinite(r).all():
        raise ValueError("returns must be finite")
    ppy = float(periods_per_year)
    if not ppy > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    n = r.size

    growth = np.r_[1.0, np.cumprod(1.0 + r)]
    final = growth[-1]
    total_return = final - 1.0
    if n == 0:
        annual_return = None
    elif final <= 0:
        annual_return = -1.0
    else:
        annual_return = final ** (ppy / n) - 1.0

    excess = r - risk_free / ppy
    # ptp == 0 catches constant series exactly, where np.std returns float noise around 0.
    flat = n < 2 or np.ptp(r) == 0
    std = None if n < 2 else 0.0 if flat else float(np.std(r, ddof=1))  # rf shift leaves it unchanged
    annual_volatility = std * math.sqrt(ppy) if std is not None else None
    mean_excess = float(excess.mean()) if n else None
    sharpe = None if flat else mean_excess / std * math.sqrt(ppy)
    downside = float(np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2))) if n else 0.0
    sortino = mean_excess / downside * math.sqrt(ppy) if downside > 0 else None

    peak = np.maximum.accumulate(growth)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, growth / peak - 1.0, 0.0)
    underwater = growth < peak * (1.0 - _RECOVERY_RTOL)

    win_rate = profit_factor = None
    n_trades = 0
    if trades is not None and len(trades):
        n_trades = len(trades)
        closed = trades.loc[~trades["open"].astype(bool), "pnl"].to_numpy(dtype=float)
        if closed.size:
            win_rate = float((closed > 0).mean())
            gross_loss = -closed[closed < 0].sum()
            if gross_loss > 0:
                profit_factor = closed[closed > 0].sum() / gross_loss

    exposure = None
    if positions is not None and len(positions):
        exposure = float((positions["position"].to_numpy(dtype=float) != 0).mean())

    return {
        "periods": int(n),
        "total_return": _clean(total_return),
        "annual_return": _clean(annual_return),
        "annual_volatility": _clean(annual_volatility),
        "sharpe": _clean(sharpe),
        "sortino": _clean(sortino),
        "max_drawdown": _clean(drawdown.min()),
        "max_drawdown_duration": _longest_run(underwater),
        "win_rate": _clean(win_rate),
        "profit_factor": _clean(profit_factor),
        "trades": int(n_trades),
        "exposure": _clean(exposure),
    }
