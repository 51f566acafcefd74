"""Naive predictors scored on exactly the model's test rows, so its skill has something to beat.

- buy_and_hold: always long (regression: +m, classification: P(class 1) = 1).
- majority: the training window's mean label (regression) or class-1 frequency (classification),
  a constant whose direction is the training window's majority.
- prev_return_sign: the sign of the last return known at the row's close (regression: sign x m;
  classification: 1, 0, or 0.5 when it is 0 or unknown).

m is the training window's mean absolute label, so the sign baselines are in the label's units and
their MSE compares with the model's. The last known return is the `logret_1` feature (log return of
the bar that just closed) when the dataset has it; otherwise, from the labels alone, the forward
return of the same symbol's latest label that had ended by the row's time (t1 <= ts): the
`horizon`-bar return that ended most recently, known at that close, so nothing is looked ahead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.evaluation.metrics import Objective, check_objective

BASELINES = ("buy_and_hold", "majority", "prev_return_sign")
RETURN_FEATURE = "logret_1"


def last_realized_return(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the `fwd_return` of the same symbol's label that ended last at or before the row's
    `ts` (its t1 <= ts; ties on t1 go to the later start); NaN when none had ended."""
    out = np.full(len(frame), np.nan)
    ts = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    t1_index = pd.DatetimeIndex(frame["t1"]).as_unit("ns")
    ended = ~t1_index.isna() & np.isfinite(frame["fwd_return"].to_numpy(dtype=np.float64))
    t1 = t1_index.asi8
    fwd = frame["fwd_return"].to_numpy(dtype=np.float64)
    for rows in frame.groupby("symbol", sort=False).indices.values():
        known = rows[ended[rows]]
        if not len(known):
            continue
        known = known[np.lexsort((ts[known], t1[known]))]  # by end time, then start
        last = np.searchsorted(t1[known], ts[rows], side="right") - 1
        hit = last >= 0
        out[rows[hit]] = fwd[known[last[hit]]]
    return out


def previous_returns(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The last return known at each row's close and where it came from (see the module docstring)."""
    if RETURN_FEATURE in frame.columns:
        return frame[RETURN_FEATURE].to_numpy(dtype=np.float64), f"feature {RETURN_FEATURE}"
    return last_realized_return(frame), "last realized fwd_return (t1 <= ts)"


def baseline_predictions(
    objective: Objective, train_label: np.ndarray, prev_return: np.ndarray
) -> dict[str, np.ndarray]:
    """Each baseline's predictions for the rows whose last known returns are `prev_return`, given
    the training window's labels `train_label` (finite, at least one)."""
    objective = check_objective(objective)
    y = np.asarray(train_label, dtype=np.float64)
    if len(y) == 0 or not np.isfinite(y).all():
        raise ValueError(f"baselines need finite training labels, got {len(y)} with non-finite ones")
    prev = np.sign(np.nan_to_num(np.asarray(prev_return, dtype=np.float64), nan=0.0))
    n = len(prev)
    if objective == "classification":
        return {
            "buy_and_hold": np.ones(n),
            "majority": np.full(n, y.mean()),
            "prev_return_sign": 0.5 + 0.5 * prev,
        }
    scale = float(np.mean(np.abs(y)))
    return {
        "buy_and_hold": np.full(n, scale),
        "majority": np.full(n, y.mean()),
        "prev_return_sign": prev * scale,
    }
