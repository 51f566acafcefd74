"""Performance metrics of a return series, its trade log, fills and positions, as JSON-friendly numbers.

Conventions shared by every function here (docs/backtest.md lists each formula):

- Returns are per-period simple returns r_t (one per bar), never log returns.
- Annualization uses `periods_per_year` (ppy): 252 for daily bars (see `periods_per_year_for`).
  Volatilities scale by sqrt(ppy), means by ppy, compounded growth by the power ppy / n.
- Standard deviations are sample deviations (ddof = 1); the Sortino downside deviation is the one
  population moment (mean of squared shortfalls over all periods).
- `risk_free` is an annual rate spread evenly over the periods: rf = risk_free / ppy per period,
  subtracted from the returns for Sharpe, Sortino, alpha and beta (CAPM on excess returns).
- Losses in VaR and CVaR are positive fractions of equity per period.
- Undefined values (too few periods, zero deviation, no trades) are None, never NaN or inf.
"""

from __future__ import annotations

import math
from statistics import NormalDist

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

# Confidence levels of VaR and CVaR; keys are named after the percentage (var_95, cvar_99, ...).
VAR_LEVELS = (0.95, 0.99)

# Van Tharp's SQN caps the trade count at 100 so a long record does not inflate the score by sqrt(N) alone.
SQN_MAX_TRADES = 100


def periods_per_year_for(timeframe: str) -> float:
    """Bars per year for a timeframe: 1d → 252, 1h → 252·6.5, 5min → 252·78, 1min → 252·390."""
    try:
        return _PERIODS_PER_YEAR[timeframe]
    except KeyError:
        raise ValueError(
            f"unknown timeframe {timeframe!r}; expected one of {sorted(_PERIODS_PER_YEAR)}"
        ) from None


def finite_or_none(x: float | None) -> float | None:
    """`x` as a Python float, or None for None, NaN or inf (JSON has neither NaN nor inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_ppy(periods_per_year: float) -> float:
    ppy = float(periods_per_year)
    if not ppy > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    return ppy


def _finite_returns(returns: pd.Series | np.ndarray, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if not np.isfinite(r).all():
        bad = int((~np.isfinite(r)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite values")
    return r


def compounded_statistics(
    returns: np.ndarray, periods_per_year: float, risk_free: float = 0.0
) -> dict[str, np.ndarray]:
    """total_return, cagr, sharpe and max_drawdown of every row of a (paths × periods) return matrix.

    The definitions of `performance_metrics`, vectorized over rows so a bootstrap can score thousands of
    resampled paths at once; NaN marks an undefined value (no periods; Sharpe of a constant row).
    """
    r = np.atleast_2d(np.asarray(returns, dtype=float))
    ppy = _check_ppy(periods_per_year)
    paths, n = r.shape
    growth = np.cumprod(1.0 + r, axis=1)
    final = growth[:, -1] if n else np.ones(paths)
    # A path that loses everything (final ≤ 0) has a CAGR of −100 %, not a complex number.
    if n:
        cagr = np.where(final > 0, np.maximum(final, 0.0) ** (ppy / n) - 1.0, -1.0)
    else:
        cagr = np.full(paths, np.nan)
    curve = np.concatenate([np.ones((paths, 1)), growth], axis=1)  # 1 before the first period
    peak = np.maximum.accumulate(curve, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, curve / peak - 1.0, 0.0)
    if n >= 2:
        # ptp == 0 catches constant rows exactly, where np.std returns float noise around 0.
        flat = np.ptp(r, axis=1) == 0
        std = np.where(flat, np.nan, r.std(axis=1, ddof=1))
        sharpe = (r.mean(axis=1) - risk_free / ppy) / std * math.sqrt(ppy)
    else:
        sharpe = np.full(paths, np.nan)
    return {
        "total_return": final - 1.0,
        "cagr": cagr,
        "sharpe": sharpe,
        "max_drawdown": drawdown.min(axis=1),
    }


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _drawdown_episode(growth: np.ndarray, peak: np.ndarray) -> dict[str, int | None]:
    """Bars from the deepest drawdown's peak to its trough, and from the trough back to the peak level.

    `growth` starts at 1 before the first period, so bar k is the k-th period; `peak` is its running
    maximum. The recovery is None while equity has not regained the peak; both are None without any
    drawdown.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, growth / peak - 1.0, 0.0)
    trough = int(np.argmin(drawdown))
    if drawdown[trough] >= 0:
        return {"max_drawdown_decline_bars": None, "max_drawdown_recovery_bars": None}
    top = peak[trough]
    peak_bar = int(np.flatnonzero(growth[: trough + 1] == top)[-1])
    back = np.flatnonzero(growth[trough + 1 :] >= top * (1.0 - _RECOVERY_RTOL))
    return {
        "max_drawdown_decline_bars": trough - peak_bar,
        "max_drawdown_recovery_bars": int(back[0]) + 1 if back.size else None,
    }


def _tail_risk(r: np.ndarray) -> dict[str, float | None]:
    """Historical and Gaussian VaR / CVaR at each of `VAR_LEVELS`, as positive loss fractions."""
    out: dict[str, float | None] = {}
    n = r.size
    mu = float(r.mean()) if n else math.nan
    sd = math.nan
    if n >= 2:
        sd = float(r.std(ddof=1)) if np.ptp(r) > 0 else 0.0
    for level in VAR_LEVELS:
        tag = round(level * 100)
        var = cvar = var_p = cvar_p = None
        if n:
            # numpy's default quantile: linear interpolation between order statistics (Hyndman-Fan 7).
            q = float(np.quantile(r, 1.0 - level))
            var = -q
            cvar = -float(r[r <= q].mean())  # the minimum is always ≤ q, so the tail is never empty
        if n >= 2:
            z = NormalDist().inv_cdf(level)
            var_p = z * sd - mu
            cvar_p = sd * NormalDist().pdf(z) / (1.0 - level) - mu
        out[f"var_{tag}"] = finite_or_none(var)
        out[f"cvar_{tag}"] = finite_or_none(cvar)
        out[f"var_{tag}_parametric"] = finite_or_none(var_p)
        out[f"cvar_{tag}_parametric"] = finite_or_none(cvar_p)
    return out


def _aligned_benchmark(
    returns: pd.Series | np.ndarray, benchmark: pd.Series | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The strategy's and the benchmark's returns over the same periods (inner join on the index when
    both are Series; otherwise the lengths must match)."""
    if isinstance(returns, pd.Series) and isinstance(benchmark, pd.Series):
        joined = pd.concat([returns.rename("r"), benchmark.rename("b")], axis=1, join="inner")
        return _finite_returns(joined["r"]), _finite_returns(joined["b"], "benchmark_returns")
    r, b = _finite_returns(returns), _finite_returns(benchmark, "benchmark_returns")
    if r.size != b.size:
        raise ValueError(f"benchmark_returns has {b.size} values but returns has {r.size}")
    return r, b


def _benchmark_stats(r: np.ndarray, b: np.ndarray, rf: float, ppy: float) -> dict[str, float | None]:
    """CAPM regression on excess returns: r − rf = a + beta·(b − rf) + e; alpha = a·ppy."""
    out: dict[str, float | None] = {"alpha": None, "beta": None, "correlation": None}
    if r.size < 2 or np.ptp(b) == 0:
        return out
    x, y = b - rf, r - rf
    dx, dy = x - x.mean(), y - y.mean()
    beta = float(dx @ dy / (dx @ dx))
    out["beta"] = finite_or_none(beta)
    out["alpha"] = finite_or_none((y.mean() - beta * x.mean()) * ppy)
    if np.ptp(r) > 0:
        out["correlation"] = finite_or_none(dx @ dy / math.sqrt((dx @ dx) * (dy @ dy)))
    return out


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{name} are missing columns {missing}; they have {list(frame.columns)}")


def _trade_r(closed: pd.DataFrame) -> np.ndarray:
    """Per-trade results for SQN: R-multiples (pnl / risk) when a positive `risk` column exists, else the
    trade's `return`, else its pnl."""
    if "risk" in closed.columns:
        risk = closed["risk"].to_numpy(dtype=float)
        ok = risk > 0
        return closed["pnl"].to_numpy(dtype=float)[ok] / risk[ok]
    column = "return" if "return" in closed.columns else "pnl"
    return closed[column].to_numpy(dtype=float)


def _trade_stats(trades: pd.DataFrame | None) -> dict[str, float | int | None]:
    """Win rate, profit factor, expectancy, SQN and holding time over CLOSED trades; counts over all."""
    out: dict[str, float | int | None] = {
        "trades": 0,
        "closed_trades": 0,
        "win_rate": None,
        "profit_factor": None,
        "expectancy": None,
        "expectancy_r": None,
        "average_win": None,
        "average_loss": None,
        "sqn": None,
        "average_bars_held": None,
    }
    if trades is None or not len(trades):
        return out
    _require_columns(trades, ("pnl",), "trades")
    is_open = (
        trades["open"].astype(bool).to_numpy() if "open" in trades.columns else np.zeros(len(trades), bool)
    )
    closed = trades.loc[~is_open]
    out["trades"] = len(trades)
    out["closed_trades"] = len(closed)
    pnl = closed["pnl"].to_numpy(dtype=float)
    if not pnl.size:
        return out
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    out["win_rate"] = float(wins.size / pnl.size)
    if losses.size:
        out["profit_factor"] = finite_or_none(wins.sum() / -losses.sum())
        out["average_loss"] = finite_or_none(losses.mean())
    if wins.size:
        out["average_win"] = finite_or_none(wins.mean())
    out["expectancy"] = finite_or_none(pnl.mean())
    r = _trade_r(closed)
    if "risk" in closed.columns and r.size:
        out["expectancy_r"] = finite_or_none(r.mean())
    if r.size >= 2 and np.ptp(r) > 0:
        out["sqn"] = finite_or_none(math.sqrt(min(r.size, SQN_MAX_TRADES)) * r.mean() / r.std(ddof=1))
    if "bars_held" in closed.columns:
        out["average_bars_held"] = finite_or_none(closed["bars_held"].to_numpy(dtype=float).mean())
    return out


def _exposure(positions: pd.DataFrame | None) -> float | None:
    """Share of (symbol, bar) rows holding a position: column `position` (fraction) or `qty` (units)."""
    if positions is None or not len(positions):
        return None
    column = next((c for c in ("position", "qty") if c in positions.columns), None)
    if column is None:
        raise KeyError(f"positions need a position or qty column; they have {list(positions.columns)}")
    return float((positions[column].to_numpy(dtype=float) != 0).mean())


def _turnover(
    fills: pd.DataFrame | None, equity: pd.Series | np.ndarray | None, n: int, ppy: float
) -> float | None:
    """Annualized turnover: Σ|qty·price| over fills / mean equity × ppy / n (buys and sells both count)."""
    if fills is None or equity is None or n == 0:
        return None
    _require_columns(fills, ("qty", "price"), "fills")
    level = float(np.mean(np.asarray(equity, dtype=float))) if len(equity) else math.nan
    if not level > 0:
        return None
    notional = float(np.abs(fills["qty"].to_numpy(dtype=float) * fills["price"].to_numpy(dtype=float)).sum())
    return finite_or_none(notional / level * ppy / n)


def performance_metrics(
    returns: pd.Series | np.ndarray,
    trades: pd.DataFrame | None,
    periods_per_year: float,
    risk_free: float = 0.0,
    positions: pd.DataFrame | None = None,
    *,
    benchmark_returns: pd.Series | np.ndarray | None = None,
    fills: pd.DataFrame | None = None,
    equity: pd.Series | np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """Summary statistics of per-period simple returns, closed/open trades, fills and positions.

    Every value is a Python int/float or None (undefined: too few periods, zero deviation, no trades),
    never NaN or inf. With n = len(returns), ppy = periods_per_year, rf = risk_free / ppy (the annual
    risk-free rate spread evenly over periods) and x = returns − rf:

    Returns and risk
    - periods: n.
    - total_return: prod(1 + r) − 1.
    - annual_return: CAGR over n / ppy years: (1 + total_return)^(ppy / n) − 1; −1 if wiped out.
    - cagr: the same number as annual_return, under the name readers look for.
    - annual_mean_return: mean(r) × ppy (arithmetic, not compounded).
    - annual_volatility: sample standard deviation (ddof = 1) of r × sqrt(ppy); needs n ≥ 2.
    - sharpe: mean(x) / std(x, ddof = 1) × sqrt(ppy); None when the deviation is 0 or n < 2.
    - sortino: mean(x) / DD × sqrt(ppy), DD = sqrt(mean(min(x, 0)²)) over ALL n periods (population
      downside deviation, target 0 on excess returns); None when no period is below the target.
    - max_drawdown: min over the compounded curve (starting at 1 before the first period) of
      equity / running peak − 1; a negative fraction, 0 without losses.
    - max_drawdown_duration: the longest run of consecutive periods that end below an earlier peak, in
      bars (a drawdown still open at the end counts up to the last bar).
    - max_drawdown_decline_bars / max_drawdown_recovery_bars: of the deepest drawdown, bars from its
      peak to its trough, and from the trough until equity is back at the peak (None while it is not;
      both None without a drawdown).
    - calmar: cagr / |max_drawdown|; None without a drawdown.
    - var_95, var_99 (historical): −q, q the (1 − level) quantile of r (numpy's linear interpolation);
      cvar_95, cvar_99: −mean(r | r ≤ q). var_*_parametric / cvar_*_parametric: Gaussian with the
      sample mean m and deviation s: VaR = z·s − m, CVaR = s·φ(z) / (1 − level) − m, z = Φ⁻¹(level).
      All per period (not annualized), positive numbers are losses.

    Benchmark (with `benchmark_returns`, aligned on the index when both are Series)
    - beta, alpha: OLS of x on the benchmark's excess returns b − rf: x = a + beta·(b − rf) + e;
      alpha = a × ppy (annualized arithmetically). correlation: Pearson of r and b.

    Trades (`trades` needs pnl; open, return, risk, bars_held are used when present)
    - trades: number of trades, closed and open; closed_trades: those with open false.
    - win_rate: share of closed trades with pnl > 0; profit_factor: gross profit / gross loss (None
      without a loss); expectancy: mean pnl per closed trade; average_win / average_loss: mean pnl of
      the winners / losers (losers negative); expectancy_r: mean pnl / risk (R-multiple) when trades
      carry a `risk` column (currency at risk at entry).
    - sqn: sqrt(min(N, 100)) × mean(R) / std(R, ddof = 1) over N closed trades (Van Tharp, N capped at
      100), R = pnl / risk when `risk` exists, else the trade's `return`, else its pnl.
    - average_bars_held: mean bars_held of closed trades (None when the column is absent).

    Exposure and turnover
    - exposure: share of rows of `positions` (symbol × bar) with a non-zero `position` (or `qty`);
      None without positions.
    - turnover: Σ|qty × price| of `fills` / mean(`equity`) × ppy / n, i.e. traded notional per year
      in units of average equity, one-way (a full round trip of the whole book counts 2); None
      without fills and equity.
    """
    r = _finite_returns(returns)
    ppy = _check_ppy(periods_per_year)
    n = r.size
    rf = risk_free / ppy

    core = {k: v[0] for k, v in compounded_statistics(r[None, :], ppy, risk_free).items()}
    flat = n < 2 or np.ptp(r) == 0
    std = None if n < 2 else 0.0 if flat else float(np.std(r, ddof=1))  # rf shift leaves it unchanged
    excess = r - rf
    mean_excess = float(excess.mean()) if n else None
    downside = float(np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2))) if n else 0.0
    sortino = mean_excess / downside * math.sqrt(ppy) if downside > 0 else None

    growth = np.r_[1.0, np.cumprod(1.0 + r)]
    peak = np.maximum.accumulate(growth)
    underwater = growth < peak * (1.0 - _RECOVERY_RTOL)
    max_drawdown = core["max_drawdown"]
    cagr = finite_or_none(core["cagr"])
    calmar = cagr / abs(max_drawdown) if cagr is not None and max_drawdown < 0 else None

    trade_stats = _trade_stats(trades)
    bench: dict[str, float | None] = {"alpha": None, "beta": None, "correlation": None}
    if benchmark_returns is not None:
        bench = _benchmark_stats(*_aligned_benchmark(returns, benchmark_returns), rf, ppy)

    return {
        "periods": int(n),
        "total_return": finite_or_none(core["total_return"]),
        "annual_return": cagr,
        "annual_volatility": finite_or_none(std * math.sqrt(ppy)) if std is not None else None,
        "sharpe": finite_or_none(core["sharpe"]),
        "sortino": finite_or_none(sortino),
        "max_drawdown": finite_or_none(max_drawdown),
        "max_drawdown_duration": _longest_run(underwater),
        "win_rate": trade_stats.pop("win_rate"),
        "profit_factor": trade_stats.pop("profit_factor"),
        "trades": trade_stats.pop("trades"),
        "exposure": _exposure(positions),
        "cagr": cagr,
        "annual_mean_return": finite_or_none(r.mean() * ppy) if n else None,
        "calmar": finite_or_none(calmar),
        **_drawdown_episode(growth, peak),
        **_tail_risk(r),
        **bench,
        **trade_stats,
        "turnover": _turnover(fills, equity, n, ppy),
    }


# --------------------------------------------------------------------------------------------------
# Calendar tables and rolling statistics
# --------------------------------------------------------------------------------------------------


def _time_indexed(returns: pd.Series) -> pd.Series:
    if not isinstance(returns, pd.Series) or not isinstance(returns.index, pd.DatetimeIndex):
        raise TypeError(
            "returns must be a pandas Series indexed by ts (a DatetimeIndex), "
            f"got {type(returns).__name__} with index {type(getattr(returns, 'index', None)).__name__}"
        )
    _finite_returns(returns)
    return returns.astype(float)


def _calendar_table(returns: pd.Series, period: str, n_periods: int) -> pd.DataFrame:
    r = _time_indexed(returns)
    idx = r.index
    growth = 1.0 + r
    table = growth.groupby([idx.year, getattr(idx, period)]).prod().unstack() - 1.0
    table = table.reindex(columns=range(1, n_periods + 1))
    table.columns = list(range(1, n_periods + 1))
    table["year"] = growth.groupby(idx.year).prod() - 1.0
    table.index = table.index.astype(int)
    table.index.name = None
    return table


def monthly_returns(returns: pd.Series) -> pd.DataFrame:
    """Compounded return of each calendar month: rows = years, columns 1..12 and "year".

    A cell is prod(1 + r) − 1 over the periods whose ts falls in that month (in the index's own time
    zone: UTC for the lake's bar open times); "year" compounds every period of the year. A month
    without periods is NaN (the table feeds a heatmap; convert with `finite_or_none` for JSON).
    """
    return _calendar_table(returns, "month", 12)


def quarterly_returns(returns: pd.Series) -> pd.DataFrame:
    """Compounded return of each calendar quarter: rows = years, columns 1..4 and "year" (see
    `monthly_returns`)."""
    return _calendar_table(returns, "quarter", 4)


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(
            f"window must be an integer >= 2 (a sample deviation needs 2 periods), got {window!r}"
        )
    return int(window)


def _rolling_std(x: pd.Series, window: int) -> pd.Series:
    # A constant window has a deviation of exactly 0, where the rolling algorithm leaves float residue.
    rolling = x.rolling(window)
    flat = (rolling.max() - rolling.min()) == 0
    return rolling.std(ddof=1).mask(flat, 0.0)


def _as_series(returns: pd.Series | np.ndarray) -> pd.Series:
    r = returns if isinstance(returns, pd.Series) else pd.Series(np.asarray(returns, dtype=float))
    _finite_returns(r)
    return r.astype(float)


def rolling_volatility(returns: pd.Series | np.ndarray, window: int, periods_per_year: float) -> pd.Series:
    """Annualized volatility over the trailing `window` periods: std(r, ddof = 1) × sqrt(ppy).

    Same index as `returns`; NaN for the first window − 1 periods.
    """
    ppy = _check_ppy(periods_per_year)
    return _rolling_std(_as_series(returns), _check_window(window)) * math.sqrt(ppy)


def rolling_sharpe(
    returns: pd.Series | np.ndarray, window: int, periods_per_year: float, risk_free: float = 0.0
) -> pd.Series:
    """Annualized Sharpe ratio over the trailing `window` periods, as `performance_metrics` defines it:
    mean(x) / std(x, ddof = 1) × sqrt(ppy), x = r − risk_free / ppy.

    Same index as `returns`; NaN for the first window − 1 periods and for constant windows.
    """
    ppy = _check_ppy(periods_per_year)
    window = _check_window(window)
    x = _as_series(returns) - risk_free / ppy
    std = _rolling_std(x, window)
    return (x.rolling(window).mean() / std.mask(std == 0)) * math.sqrt(ppy)
