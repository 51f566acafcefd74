"""The return analysis a report shows beside the equity curve: period returns, the monthly table,
rolling Sharpe and volatility, exposure over time and the VaR lines of the return distribution.

The statistics themselves come from `quanto.backtest.metrics` (one definition for the metrics table
and the charts); this module only picks the series they are computed on and lines them up with the
equity frame's rows so every chart over time shares its time axis.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.backtest import metrics as backtest_metrics

MIN_ROLLING_WINDOW = 20  # bars; a Sharpe ratio over fewer periods is mostly noise
ROLLING_YEAR_FRACTION = 0.25  # the rolling window: a quarter of a year of bars ...
ROLLING_SERIES_FRACTION = 0.25  # ... or a quarter of the series when that is shorter
_DAYS_PER_YEAR = 365.25


def period_returns(equity: pd.DataFrame, first_row_is_period: bool = False) -> pd.Series:
    """Simple returns per period, indexed by ts (UTC).

    The frame's `returns` column is used when present, else equity_t / equity_(t-1) - 1. The first
    row is the starting point at initial capital and not a period (fills at the next bar: nothing can
    fill there), unless `first_row_is_period` (fills at the decision bar's close) and the frame has
    its `returns` column (the first row's return over initial capital), as `PortfolioResult.
    period_rows` decides. Non-finite returns (after equity reached 0) are left out.
    """
    empty = pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float, name="returns")
    if equity.empty:
        return empty
    if "returns" in equity.columns:
        values = equity["returns"].to_numpy(dtype=float)
        first = 0 if first_row_is_period else 1
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = equity["equity"].pct_change().to_numpy(dtype=float)
        first = 1
    ts = pd.DatetimeIndex(pd.to_datetime(equity["ts"], utc=True))
    out = pd.Series(values[first:], index=ts[first:], name="returns")
    return out[np.isfinite(out.to_numpy())]


def periods_per_year(given: float | None, ts: pd.Series) -> float | None:
    """`given` when set (the backtest's own), else bars per year estimated from the timestamps:
    (bars - 1) / years elapsed. None with fewer than two distinct timestamps."""
    if given is not None:
        if not given > 0:
            raise ValueError(f"ReportData.periods_per_year must be > 0, got {given}")
        return float(given)
    stamps = pd.to_datetime(ts, utc=True)
    if len(stamps) < 2:
        return None
    days = (stamps.iloc[-1] - stamps.iloc[0]).total_seconds() / 86_400
    return (len(stamps) - 1) / (days / _DAYS_PER_YEAR) if days > 0 else None


def rolling_window(n: int, ppy: float | None, requested: int | None = None) -> int | None:
    """The rolling statistics' window in bars: `requested` when given, else a quarter-year of bars,
    shortened to a quarter of the series when that is less, never below MIN_ROLLING_WINDOW. None
    when the `n` returns cannot fill two windows (a rolling line of a few points says nothing)."""
    if requested is not None:
        if requested < 2:
            raise ValueError(f"ReportData.rolling_window must be >= 2 bars, got {requested}")
        window = int(requested)
    else:
        if ppy is None:
            return None
        window = max(
            MIN_ROLLING_WINDOW, min(round(ppy * ROLLING_YEAR_FRACTION), int(n * ROLLING_SERIES_FRACTION))
        )
    return window if n >= 2 * window else None


def rolling_frame(equity: pd.DataFrame, returns: pd.Series, window: int, ppy: float) -> pd.DataFrame:
    """Rolling Sharpe ratio and annualized volatility over `window` returns (`backtest_metrics.
    rolling_sharpe` and `rolling_volatility`), one row per equity row matched on ts: NaN until the
    window is full and on rows without a period (the starting point)."""
    frame = pd.DataFrame(
        {
            "sharpe": backtest_metrics.rolling_sharpe(returns, window, ppy),
            "volatility": backtest_metrics.rolling_volatility(returns, window, ppy),
        },
        index=returns.index,
    )
    grid = pd.DatetimeIndex(pd.to_datetime(equity["ts"], utc=True))
    return frame.reindex(grid).reset_index(drop=True)


def exposure_frame(equity: pd.DataFrame, positions: pd.DataFrame | None) -> tuple[pd.DataFrame, str] | None:
    """Gross and net exposure as fractions of equity, one row per equity row, and where they came from.

    From the equity frame's gross_exposure and net_exposure columns when present; else from
    `positions`: with a weight column (position value / equity) gross = sum |weight| and net =
    sum weight per ts; with the one-sleeve-per-symbol engine's position column (a fraction of the
    symbol's sleeve, sleeves of equal capital) the sums are divided by the number of symbols. A ts
    without position rows is flat. None when neither source exists.
    """
    if {"gross_exposure", "net_exposure"} <= set(equity.columns):
        frame = pd.DataFrame(
            {
                "gross": equity["gross_exposure"].to_numpy(dtype=float),
                "net": equity["net_exposure"].to_numpy(dtype=float),
            }
        )
        return frame, "equity"
    if positions is None or positions.empty:
        return None
    if "weight" in positions.columns:
        weight, source = positions["weight"].astype(float), "position weights"
    elif "position" in positions.columns:
        n_symbols = positions["symbol"].nunique()
        weight, source = positions["position"].astype(float) / n_symbols, "sleeve positions"
    else:
        raise ValueError(
            f"ReportData.positions needs a weight or position column, got {list(positions.columns)}"
        )
    ts = pd.DatetimeIndex(pd.to_datetime(positions["ts"], utc=True))
    w = weight.to_numpy()
    by_ts = pd.DataFrame({"gross": np.abs(w), "net": w}, index=ts).groupby(level=0).sum()
    grid = pd.DatetimeIndex(pd.to_datetime(equity["ts"], utc=True))
    return by_ts.reindex(grid).fillna(0.0).reset_index(drop=True), source


def var_lines(returns: pd.Series) -> list[tuple[float, float]]:
    """(level, return at the historical VaR) for each of the backtest's VaR levels: -var_95 and
    -var_99 of `performance_metrics` (its definition: the (1 - level) quantile of period returns), so
    the lines sit where the metrics table says."""
    # VaR is per period, so the annualization factor plays no part: any positive value will do.
    tail = backtest_metrics.performance_metrics(returns.to_numpy(dtype=float), None, periods_per_year=1.0)
    lines = []
    for level in backtest_metrics.VAR_LEVELS:
        var = tail[f"var_{round(level * 100)}"]
        if var is not None:
            lines.append((level, -var))
    return lines
