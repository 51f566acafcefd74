"""The strategy of a trading day: the production model's predictions at each bar's close, turned into
target positions by the backtest's own rules.

- **Features** are the model's (its card names them and keeps the research job's feature config).
  At each bar they are computed from the session's history; when every feature is *bounded* (its
  value depends on the last `lookback` bars only, `features.engine.is_bounded`) only the last
  `lookback + 1` bars of each symbol are computed — an incremental update that gives the values a
  full recomputation gives. A history-dependent feature (EMA, MACD, ...) is computed from the first
  bar of the history (the warm-up sessions): exact, and slower.
- **Signals and sizing** are `quanto.backtest.signals.target_positions`, `backtest.sizing` and the
  portfolio engine's `order_target`, with the job's `strategy` (a BacktestConfig): a decision here is
  the decision the backtest takes on the same bars, which is what the parity test checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from quanto.config.models import BacktestConfig, PipelineConfig
from quanto.errors import InputError


@dataclass(frozen=True)
class OrderPlan:
    """One order the strategy wants at a bar's close: trade `symbol` from `position` to `target` units."""

    symbol: str
    position: float
    target: float
    price: float  # the close the decision saw

    @property
    def side(self) -> str:
        """buy or sell."""
        return "buy" if self.target > self.position else "sell"

    @property
    def qty(self) -> float:
        """Units to trade (> 0)."""
        return abs(self.target - self.position)


class SessionModel:
    """A registered model ready to predict the latest bar: the model, its feature names and the
    research job's feature config (for cross-sectional and benchmark columns)."""

    def __init__(self, model: Any, model_id: str, job: PipelineConfig) -> None:
        from quanto.features.engine import is_bounded
        from quanto.features.registry import REGISTRY, expand_names

        self.model = model
        self.model_id = model_id
        self.job = job
        features = job.features
        unsupported = [k for k in ("pca", "microstructure") if getattr(features, k, None)]
        if getattr(features, "fundamentals", False):
            unsupported.append("fundamentals")
        if unsupported:
            raise InputError(
                f"model {model_id}: features {unsupported} are not available to the trading loop yet"
            )
        self.names = expand_names(features.names)
        specs = [REGISTRY[n] for n in self.names]
        self.lookback = max((s.lookback for s in specs), default=0)
        self.bounded = all(is_bounded(s) for s in specs)
        if getattr(model, "lookback", 0):
            raise InputError(f"model {model_id}: sequence models are not available to the trading loop yet")

    @classmethod
    def load(cls, lake: Any, model_id: str) -> SessionModel:
        """The registered model `model_id` (artifact hashes checked) with its job's config."""
        from quanto.models.registry import load_registered, read_card

        card = read_card(lake, model_id)
        return cls(load_registered(lake, model_id), model_id, PipelineConfig.model_validate(card["config"]))

    @property
    def objective(self) -> str:
        """regression or classification."""
        return self.model.objective

    def window(self, history: pd.DataFrame) -> pd.DataFrame:
        """The rows of `history` (symbol, ts sorted) the features of its last bar need: each symbol's
        last lookback + 1 rows when every feature is bounded, else all of them."""
        if not self.bounded:
            return history
        return history.groupby("symbol", sort=False, group_keys=False).tail(self.lookback + 1)

    def features(self, history: pd.DataFrame) -> pd.DataFrame:
        """The feature table (symbol, ts, model columns) of `history`'s rows."""
        from quanto.features.registry import compute_features
        from quanto.features.stage import add_panel_features

        table = compute_features(history, self.names, threads=1)
        return add_panel_features(table, history, self.job.features, self.job.walk_forward)

    def predict(self, history: pd.DataFrame, ts: pd.Timestamp) -> dict[str, float]:
        """Predictions at bar `ts` for the symbols with a bar there, from `history` up to `ts`."""
        from quanto.models.base import Design

        table = self.features(self.window(history))
        latest = table[table["ts"] == ts].sort_values("symbol").reset_index(drop=True)
        if latest.empty:
            return {}
        missing = [c for c in self.model.features if c not in latest.columns]
        if missing:
            raise InputError(f"model {self.model_id}: feature columns {missing} are not computed")
        design = Design(latest, list(self.model.features))
        rows = np.arange(len(latest))
        if self.objective == "classification":
            values = self.model.predict_proba(design, rows)
        else:
            values = self.model.predict(design, rows)
        return dict(zip(latest["symbol"], np.asarray(values, dtype=float), strict=True))


def plan_orders(
    predictions: Mapping[str, float],
    closes: Mapping[str, float],
    positions: Mapping[str, float],
    equity: float,
    strategy: BacktestConfig,
    objective: str,
    n_symbols: int,
    close_history: pd.DataFrame | None = None,
    periods_per_year: float | None = None,
) -> list[OrderPlan]:
    """The orders of one bar's close, by the backtest's rules: prediction → signal
    (`target_positions`) → sized target (`signal_targets`) → `order_target` against the position.

    `closes`: the bar's close per symbol with a bar (only those decide). `close_history`: a
    (ts × symbols) grid of closes up to this bar, needed by kelly / vol_target sizing.
    """
    from quanto.backtest.portfolio import order_target
    from quanto.backtest.signals import target_positions
    from quanto.backtest.sizing import signal_targets

    symbols = sorted(closes)
    if not symbols:
        return []
    pred = np.array([predictions.get(s, np.nan) for s in symbols], dtype=float)
    signal = target_positions(pred, strategy, objective)  # type: ignore[arg-type]
    if close_history is not None and strategy.sizing in ("kelly", "vol_target"):
        grid = close_history.reindex(columns=symbols)
        close = grid.to_numpy(dtype=float)
        has = np.isfinite(close)
        signals = np.zeros_like(close)
        signals[-1] = signal
        targets, kind = signal_targets(signals, close, has, strategy, n_symbols, periods_per_year)
        target = targets[-1]
    else:
        targets, kind = signal_targets(
            signal[None, :],
            np.array([[closes[s] for s in symbols]], dtype=float),
            np.ones((1, len(symbols)), dtype=bool),
            strategy,
            n_symbols,
            periods_per_year,
        )
        target = targets[0]
    plans = []
    for j, symbol in enumerate(symbols):
        qty = float(positions.get(symbol, 0.0))
        wanted, _ = order_target(
            kind,
            float(target[j]),
            qty,
            0.0,
            float(closes[symbol]),
            float(equity),
            strategy.fractional_units,
            strategy.drift_threshold,
        )
        if not np.isnan(wanted) and wanted != qty:
            plans.append(OrderPlan(symbol, qty, float(wanted), float(closes[symbol])))
    return plans
