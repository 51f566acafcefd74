"""Sequence windows for the PyTorch families: for each chosen row, the `lookback` bars of its own
symbol ending at that row, built from the design's feature table.

No lookahead by construction: a row's window holds only rows at or before it in (symbol, ts) order
and of the same symbol, so changing any later row, or any other symbol's row, never changes it.

A row with fewer than `lookback` bars of history gets a padded window (the missing bars are 0, the
training mean once standardized) and `False` in the returned mask: the sequence models leave such
rows out of training and predict NaN for them rather than guess from a partial history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from quanto.models.base import Design

# Rows gathered per step by `windows`.
CHUNK_ROWS = 16_384


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and standard deviation, estimated on training rows only and saved with the
    model, so that validation, test and live rows are scaled with what training knew."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        """Statistics of `values` (rows x features), ignoring NaN. A feature that is constant or
        all-NaN on the training rows gets std 1 (and mean 0 when all-NaN), so it scales to a constant
        instead of dividing by zero."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(
                f"standardizer needs a non-empty (rows x features) matrix, got shape {values.shape}"
            )
        observed = np.isfinite(values).any(axis=0)
        safe = np.where(np.isfinite(values), values, 0.0)
        counts = np.maximum(np.isfinite(values).sum(axis=0), 1)
        mean = np.where(observed, safe.sum(axis=0) / counts, 0.0)
        centered = np.where(np.isfinite(values), values - mean, 0.0)
        std = np.sqrt((centered**2).sum(axis=0) / counts)
        std = np.where(std > 0, std, 1.0)
        return cls(mean=mean, std=std)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(values - mean) / std along the last axis; NaN stays NaN."""
        return (values - self.mean) / self.std


def symbol_starts(design: Design) -> np.ndarray:
    """For every row of `design.frame`, the position of its symbol's first row.

    Checks what windows rely on: each symbol's rows are contiguous and its `ts` strictly increasing.
    """
    frame = design.frame
    n = len(frame)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    symbols = frame["symbol"].to_numpy()
    new_symbol = np.ones(n, dtype=bool)
    new_symbol[1:] = symbols[1:] != symbols[:-1]
    starts = np.maximum.accumulate(np.where(new_symbol, np.arange(n), 0))
    if int(new_symbol.sum()) != frame["symbol"].nunique():
        raise ValueError("design frame is not sorted by (symbol, ts): a symbol's rows are not contiguous")
    ts = frame["ts"]
    # tz-aware timestamps would come back as an object array of Timestamps: 20x slower to compare.
    ts = ts.to_numpy(dtype="datetime64[ns]") if pd.api.types.is_datetime64_any_dtype(ts) else ts.to_numpy()
    same_symbol = ~new_symbol[1:]
    if (ts[1:][same_symbol] <= ts[:-1][same_symbol]).any():
        bad = int(np.flatnonzero(same_symbol & (ts[1:] <= ts[:-1]))[0]) + 1
        raise ValueError(
            f"design frame is not sorted by (symbol, ts): row {bad} ({symbols[bad]}, {frame['ts'].iloc[bad]}) "
            "does not come after the previous row of its symbol"
        )
    return starts


def windows(
    design: Design,
    rows: np.ndarray,
    lookback: int,
    *,
    features: Sequence[str] | None = None,
    standardizer: Standardizer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `rows` (positions in `design.frame`): float32 (len(rows), lookback, n_features),
    oldest bar first and the row itself last, and a bool mask of the rows with a full window.

    `features` picks and orders the columns (default: `design.columns`); `standardizer` scales them
    first. Non-finite features, and the padded bars of a row without full history, are 0 afterwards.
    """
    if not isinstance(lookback, int | np.integer) or lookback < 1:
        raise ValueError(f"lookback must be a positive integer, got {lookback!r}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"rows must be a 1-d array of positions, got shape {rows.shape}")
    n = len(design)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        bad = int(rows[(rows < 0) | (rows >= n)][0])
        raise ValueError(f"row {bad} is outside the design frame (0..{n - 1})")
    names = list(design.columns if features is None else features)
    missing = [f for f in names if f not in design.columns]
    if missing:
        raise ValueError(f"design lacks feature columns {missing}")
    columns = np.array([design.columns.index(f) for f in names], dtype=np.int64)

    starts = symbol_starts(design)[rows]
    # positions[i, j]: the bar lookback-1-j steps before rows[i]; those before the symbol's first row
    # are padding (clipped to a valid index for the gather, then zeroed).
    positions = rows[:, None] + np.arange(1 - lookback, 1, dtype=np.int64)[None, :]
    padded = positions < starts[:, None]
    gather = np.maximum(positions, starts[:, None])
    out = np.empty((len(rows), lookback, len(columns)), dtype=np.float32)
    # In chunks, so the float64 intermediate stays small next to the float32 result.
    for lo in range(0, len(rows), CHUNK_ROWS):
        part = slice(lo, lo + CHUNK_ROWS)
        values = design.matrix[gather[part, :, None], columns[None, None, :]]
        if standardizer is not None:
            values = standardizer.apply(values)
        values[padded[part]] = np.nan
        out[part] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return out, ~padded.any(axis=1)
