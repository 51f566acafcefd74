"""Signals from a model's out-of-sample predictions: the decisions a backtest (or the trading loop) acts on."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from quanto.config.models import BacktestConfig

Objective = Literal["regression", "classification"]


def target_positions(
    prediction: np.ndarray | pd.Series, cfg: BacktestConfig, objective: Objective
) -> np.ndarray:
    """Map predictions to target positions (signals) in {-1.0, 0.0, 1.0}; NaN means no signal (flat).

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


def signals_from_predictions(
    predictions: pd.DataFrame, cfg: BacktestConfig, objective: Objective
) -> pd.DataFrame:
    """A decisions frame (symbol, ts, signal) from predictions (symbol, ts, prediction) by
    `target_positions`."""
    missing = [c for c in ("symbol", "ts", "prediction") if c not in predictions.columns]
    if missing:
        raise KeyError(f"predictions are missing columns {missing}")
    return pd.DataFrame(
        {
            "symbol": predictions["symbol"].reset_index(drop=True),
            "ts": predictions["ts"].reset_index(drop=True),
            "signal": target_positions(predictions["prediction"].to_numpy(), cfg, objective),
        }
    )
