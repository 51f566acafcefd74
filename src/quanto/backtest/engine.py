"""Vectorized backtest of out-of-sample predictions with one equal-capital sleeve per symbol.

Rules (the test suite checks them against a plain bar-by-bar loop):

- **Signal.** At the close of bar t a symbol's prediction becomes a target position in {-1, 0, 1}
  (`target_positions`). A bar of the evaluation window without a prediction (or with a NaN one) is
  "no signal" and targets flat.
- **Fill.** The target decided at the close of bar t fills at the OPEN of the same symbol's next bar
  (never at a bar the symbol lacks). The decision at a symbol's last bar inside the window is never
  filled. Positions are fractions of sleeve equity: 1 is fully invested, -1 fully short.
- **Window.** From the first prediction ts to the last prediction ts over all symbols, inclusive; only
  bars of symbols that have predictions take part.
- **Sleeves.** Capital is split equally across those N symbols; each sleeve compounds on its own with no
  rebalancing between sleeves. Over bar t+1 (close t → close t+1) a sleeve's equity moves as
  ``E ← E·(1 + p_old·(open[t+1]/close[t] − 1))`` (overnight gap, old position), then pays
  ``|p_new − p_old| · E_fill · (commission_bps + slippage_bps)/1e4`` at the fill, then
  ``E ← E·(1 + p_new·(close[t+1]/open[t+1] − 1))`` (the bar, new position). Holding p between fills
  therefore means a constant fraction of equity (an implicit cost-free rebalance at every bar, which
  only matters for shorts). A sleeve that loses everything stays at 0: equity never goes negative.
- **End.** Nothing is liquidated: the last position is marked to market at the last close and its trade
  is reported with ``open=True`` (exit_ts/exit_price = that last bar and its close, no exit cost).
- **Benchmark.** Equal-weight buy-and-hold of the same symbols with the same sleeve accounting and no
  costs, bought at the open of each symbol's second bar in the window (the first bar the strategy can
  fill at), i.e. the strategy with a target of 1 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from quanto.backtest.metrics import performance_metrics
from quanto.config.models import BacktestConfig

Objective = Literal["regression", "classification"]

EQUITY_COLUMNS = (
    "ts",
    "equity",
    "benchmark",
    "drawdown",
    "benchmark_drawdown",
    "returns",
    "benchmark_returns",
)
TRADE_COLUMNS = (
    "symbol",
    "side",
    "entry_ts",
    "entry_price",
    "exit_ts",
    "exit_price",
    "qty_fraction",
    "pnl",
    "costs",
    "return",
    "open",
)
POSITION_COLUMNS = ("symbol", "ts", "position", "target_position")

_TS_DTYPE = "datetime64[ns, UTC]"


@dataclass(frozen=True)
class BacktestResult:
    """What a backtest produces.

    equity: one row per timestamp of the union of the symbols' bars in the window, columns
        ts, equity, benchmark (currency), drawdown, benchmark_drawdown (≤ 0, from the running peak),
        returns, benchmark_returns (simple returns from the previous row; 0 on the first row, which is
        the starting point at initial capital). A symbol without a bar at a ts carries its sleeve forward.
    trades: one row per round trip, columns symbol, side ("long"|"short"), entry_ts, entry_price
        (the fill bar and its open), exit_ts, exit_price (the exit fill bar and its open; for an open
        trade the last bar and its close), qty_fraction (|position| as a fraction of sleeve equity),
        pnl (sleeve equity after the exit fill minus sleeve equity before the entry fill, costs
        included), costs (entry + exit), return (pnl / equity before the entry fill), open (bool).
        Sum of pnl per symbol = that sleeve's final equity − its initial capital.
    positions: one row per symbol and bar in the window: position held over the bar (after its open
        fill) and target_position decided at its close.
    initial_capital: the total starting capital.
    """

    equity: pd.DataFrame
    trades: pd.DataFrame
    positions: pd.DataFrame
    initial_capital: float

    def metrics(
        self, periods_per_year: float, risk_free: float = 0.0, benchmark: bool = False
    ) -> dict[str, float | int | None]:
        """`performance_metrics` of the strategy (or of the benchmark when `benchmark` is true).

        The first equity row is the starting point, not a period, so its return and the positions of
        that bar (always flat: no fill can happen there) are left out.
        """
        first_ts = self.equity["ts"].iloc[0] if len(self.equity) else None
        column = "benchmark_returns" if benchmark else "returns"
        returns = self.equity[column].iloc[1:]
        if benchmark:
            return performance_metrics(returns, None, periods_per_year, risk_free)
        positions = self.positions[self.positions["ts"] > first_ts] if first_ts is not None else None
        return performance_metrics(returns, self.trades, periods_per_year, risk_free, positions=positions)


def target_positions(
    prediction: np.ndarray | pd.Series, cfg: BacktestConfig, objective: Objective
) -> np.ndarray:
    """Map predictions to target positions in {-1.0, 0.0, 1.0}; NaN means no signal (flat).

    regression: long when prediction > entry_threshold; in long_short mode short when
    prediction < −entry_threshold. classification (prediction = P(up)): long when p > 0.5 +
    entry_threshold; in long_short mode short when p < 0.5 − entry_threshold.
    Raises ValueError for an unknown objective, probabilities outside [0, 1], or a negative threshold
    in long_short mode (the long and short zones would overlap).
    """
    pred = np.asarray(prediction, dtype=float)
    thr = float(cfg.entry_threshold)
    if cfg.mode == "long_short" and thr < 0:
        raise ValueError(f"entry_threshold must be >= 0 in long_short mode, got {thr}")
    if objective == "regression":
        upper, lower = thr, -thr
    elif objective == "classification":
        finite = pred[np.isfinite(pred)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
            raise ValueError(
                "classification predictions must be probabilities in [0, 1], "
                f"got values in [{finite.min()}, {finite.max()}]"
            )
        upper, lower = 0.5 + thr, 0.5 - thr
    else:
        raise ValueError(f"objective must be 'regression' or 'classification', got {objective!r}")
    # Comparisons with NaN are False, so a missing prediction stays flat.
    target = np.where(pred > upper, 1.0, 0.0)
    if cfg.mode == "long_short":
        target = np.where(pred < lower, -1.0, target)
    return target


@dataclass(frozen=True)
class _Sleeve:
    """Per-bar arrays of one symbol's sleeve (index k = k-th bar of the symbol in the window)."""

    position: np.ndarray  # held over bar k, after the fill at its open
    equity: np.ndarray  # at the close of bar k
    fill_equity: np.ndarray  # at the open of bar k after the gap, before costs
    exit_cost: np.ndarray  # cost of closing the old position at the open of bar k
    entry_cost: np.ndarray  # cost of opening the new position at the open of bar k


def _simulate_sleeve(
    open_: np.ndarray, close: np.ndarray, target: np.ndarray, capital: float, cost_rate: float
) -> _Sleeve:
    """One sleeve, vectorized: every bar's equity is a product of three per-bar factors."""
    position = np.zeros_like(close)
    position[1:] = target[:-1]  # decided at the close of k-1, filled at the open of k
    prev_position = np.zeros_like(close)
    prev_position[1:] = position[:-1]
    gap = np.zeros_like(close)
    gap[1:] = open_[1:] / close[:-1] - 1.0
    changed = position != prev_position
    # Positions live in {-1, 0, 1}, so a change always fully exits the old one and fully enters the new one.
    exit_qty = np.where(changed, np.abs(prev_position), 0.0)
    entry_qty = np.where(changed, np.abs(position), 0.0)
    # Clipping at 0 keeps a wiped-out sleeve at 0 instead of letting equity change sign.
    gap_factor = np.maximum(1.0 + prev_position * gap, 0.0)
    cost_factor = np.maximum(1.0 - (exit_qty + entry_qty) * cost_rate, 0.0)
    bar_factor = np.maximum(1.0 + position * (close / open_ - 1.0), 0.0)
    equity = capital * np.cumprod(gap_factor * cost_factor * bar_factor)
    prev_equity = np.empty_like(equity)
    prev_equity[0] = capital
    prev_equity[1:] = equity[:-1]
    fill_equity = prev_equity * gap_factor
    return _Sleeve(
        position=position,
        equity=equity,
        fill_equity=fill_equity,
        exit_cost=fill_equity * exit_qty * cost_rate,
        entry_cost=fill_equity * entry_qty * cost_rate,
    )


def _sleeve_trades(
    symbol: str, ts: np.ndarray, open_: np.ndarray, close: np.ndarray, sleeve: _Sleeve
) -> dict[str, np.ndarray]:
    """Round trips of one sleeve as column arrays (entries and exits alternate since position[0] = 0)."""
    pos = sleeve.position
    prev = np.r_[0.0, pos[:-1]]
    entries = np.flatnonzero((pos != prev) & (pos != 0.0))
    exits = np.flatnonzero((pos != prev) & (prev != 0.0))
    n_closed = exits.size
    is_open = np.zeros(entries.size, dtype=bool)
    is_open[n_closed:] = True  # at most the last entry lacks an exit
    last = ts.size - 1
    exit_idx = np.r_[exits, np.full(entries.size - n_closed, last)].astype(np.int64)

    start_equity = sleeve.fill_equity[entries] - sleeve.exit_cost[entries]
    end_equity = np.where(
        is_open, sleeve.equity[last], sleeve.fill_equity[exit_idx] - sleeve.exit_cost[exit_idx]
    )
    pnl = end_equity - start_equity
    costs = sleeve.entry_cost[entries] + np.where(is_open, 0.0, sleeve.exit_cost[exit_idx])
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.where(start_equity > 0, pnl / start_equity, 0.0)
    return {
        "symbol": np.full(entries.size, symbol, dtype=object),
        "side": np.where(pos[entries] > 0, "long", "short").astype(object),
        "entry_ts": ts[entries],
        "entry_price": open_[entries],
        "exit_ts": ts[exit_idx],
        "exit_price": np.where(is_open, close[exit_idx], open_[exit_idx]),
        "qty_fraction": np.abs(pos[entries]),
        "pnl": pnl,
        "costs": costs,
        "return": ret,
        "open": is_open,
    }


def _carry_forward(sym_ts: np.ndarray, values: np.ndarray, grid: np.ndarray, before: float) -> np.ndarray:
    """Value of a step series at each grid ts: the last value at or before it, `before` if none yet."""
    idx = np.searchsorted(sym_ts, grid, side="right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], before)


def _drawdown(equity: np.ndarray) -> np.ndarray:
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, equity / peak - 1.0, 0.0)


def _simple_returns(equity: np.ndarray) -> np.ndarray:
    out = np.zeros_like(equity)
    prev = equity[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[1:] = np.where(prev > 0, equity[1:] / prev - 1.0, 0.0)
    return out


def _utc_ns(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True).astype(_TS_DTYPE)


def _require(df: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{name} are missing columns {missing}")


def backtest_predictions(
    bars: pd.DataFrame,
    predictions: pd.DataFrame,
    cfg: BacktestConfig,
    objective: Objective = "regression",
) -> BacktestResult:
    """Backtest out-of-sample predictions on bars with the rules in this module's docstring.

    bars: canonical bars (at least symbol, ts, open, close), any order, unique per (symbol, ts).
    predictions: columns symbol, ts, prediction; every row must match a bar, unique per (symbol, ts).
    cfg: mode, entry_threshold, commission_bps, slippage_bps, initial_capital are used.
    objective: how predictions become signals (see `target_positions`).

    Raises KeyError for missing columns and ValueError for empty or unmatched predictions, duplicate
    keys, or non-positive / non-finite prices inside the window.
    """
    _require(bars, ("symbol", "ts", "open", "close"), "bars")
    _require(predictions, ("symbol", "ts", "prediction"), "predictions")
    if predictions.empty:
        raise ValueError("no predictions to backtest")

    preds = pd.DataFrame(
        {
            "symbol": predictions["symbol"].astype(str).to_numpy(),
            "ts": _utc_ns(predictions["ts"]).to_numpy(),
            "prediction": predictions["prediction"].astype(float).to_numpy(),
        }
    )
    preds["ts"] = preds["ts"].astype(_TS_DTYPE)
    if preds.duplicated(["symbol", "ts"]).any():
        raise ValueError("predictions have duplicate (symbol, ts) rows")
    symbols = sorted(preds["symbol"].unique())
    start, end = preds["ts"].min(), preds["ts"].max()

    window = pd.DataFrame(
        {
            "symbol": bars["symbol"].astype(str).to_numpy(),
            "ts": _utc_ns(bars["ts"]).to_numpy(),
            "open": bars["open"].astype(float).to_numpy(),
            "close": bars["close"].astype(float).to_numpy(),
        }
    )
    window["ts"] = window["ts"].astype(_TS_DTYPE)
    window = window[window["symbol"].isin(symbols) & (window["ts"] >= start) & (window["ts"] <= end)]
    window = window.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    if window.duplicated(["symbol", "ts"]).any():
        raise ValueError("bars have duplicate (symbol, ts) rows")
    prices = window[["open", "close"]].to_numpy()
    if not (np.isfinite(prices).all() and (prices > 0).all()):
        raise ValueError("bars inside the backtest window need finite, positive open and close prices")

    merged = window.merge(preds, on=["symbol", "ts"], how="left", validate="one_to_one", indicator=True)
    unmatched = len(preds) - int((merged["_merge"] == "both").sum())
    if unmatched:
        raise ValueError(f"{unmatched} predictions have no bar with the same (symbol, ts)")

    target = target_positions(merged["prediction"].to_numpy(), cfg, objective)
    capital = cfg.initial_capital / len(symbols)
    cost_rate = (cfg.commission_bps + cfg.slippage_bps) / 1e4

    sym = merged["symbol"].to_numpy()
    ts_ns = merged["ts"].to_numpy(dtype="datetime64[ns]")
    open_all = merged["open"].to_numpy()
    close_all = merged["close"].to_numpy()
    grid = np.unique(ts_ns)
    starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]])
    stops = np.r_[starts[1:], sym.size]

    equity = np.zeros(grid.size)
    benchmark = np.zeros(grid.size)
    position = np.empty(sym.size)
    trade_parts: list[dict[str, np.ndarray]] = []
    for lo, hi in zip(starts, stops, strict=True):
        ts_s, open_s, close_s = ts_ns[lo:hi], open_all[lo:hi], close_all[lo:hi]
        sleeve = _simulate_sleeve(open_s, close_s, target[lo:hi], capital, cost_rate)
        bench = _simulate_sleeve(open_s, close_s, np.ones(hi - lo), capital, 0.0)
        position[lo:hi] = sleeve.position
        equity += _carry_forward(ts_s, sleeve.equity, grid, capital)
        benchmark += _carry_forward(ts_s, bench.equity, grid, capital)
        trade_parts.append(_sleeve_trades(str(sym[lo]), ts_s, open_s, close_s, sleeve))

    grid_ts = pd.Series(pd.to_datetime(grid, utc=True)).astype(_TS_DTYPE)
    equity_frame = pd.DataFrame(
        {
            "ts": grid_ts,
            "equity": equity,
            "benchmark": benchmark,
            "drawdown": _drawdown(equity),
            "benchmark_drawdown": _drawdown(benchmark),
            "returns": _simple_returns(equity),
            "benchmark_returns": _simple_returns(benchmark),
        }
    )
    trades = pd.DataFrame({c: np.concatenate([p[c] for p in trade_parts]) for c in TRADE_COLUMNS})
    for c in ("entry_ts", "exit_ts"):
        trades[c] = pd.to_datetime(trades[c].to_numpy(dtype="datetime64[ns]"), utc=True).astype(_TS_DTYPE)
    trades = trades.astype({"symbol": str, "side": str, "open": bool})
    positions = pd.DataFrame(
        {
            "symbol": merged["symbol"].astype(str),
            "ts": merged["ts"],
            "position": position,
            "target_position": target,
        }
    )
    return BacktestResult(
        equity=equity_frame,
        trades=trades,
        positions=positions,
        initial_capital=float(cfg.initial_capital),
    )
