"""Walk-forward evaluation: folds over the panel's bars, purged training rows, stitched predictions.

Windows are counted in bars = the sorted unique timestamps of the panel, so every symbol shares the
same calendar of folds. Leakage is prevented twice: an embargo of `embargo_bars` bars between a
training window and its test window, and purging — a training row whose label horizon `t1` reaches
the test window is dropped, since its label was computed from prices the test window also sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from quanto.config.models import ModelConfig, WalkForwardConfig
from quanto.models.gbdt import LightGBMModel, one_class_note

Objective = Literal["regression", "classification"]

PREDICTION_COLUMNS = ["symbol", "ts", "fold", "prediction", "label", "fwd_return"]


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold; all four bounds are inclusive bar timestamps."""

    index: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (timestamps as ISO-8601 strings)."""
        return {
            "index": int(self.index),
            "train_start": self.train_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fold:
        """Inverse of `to_dict`."""
        return cls(
            index=int(d["index"]),
            train_start=pd.Timestamp(d["train_start"]),
            train_end=pd.Timestamp(d["train_end"]),
            test_start=pd.Timestamp(d["test_start"]),
            test_end=pd.Timestamp(d["test_end"]),
        )


def make_folds(timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex, cfg: WalkForwardConfig) -> list[Fold]:
    """Folds over the sorted unique `timestamps` (the panel's bars), oldest first.

    Fold k: training window (rolling: `train_bars` bars starting at bar k*step; expanding: from the
    first bar to the same end), then `embargo_bars` skipped bars, then `test_bars` test bars — the
    last fold's test window may be shorter (at least one bar). With `max_folds` only the last folds
    are kept; fold indices are always 0..len-1 in time order.
    """
    bars = pd.DatetimeIndex(pd.unique(pd.DatetimeIndex(timestamps).dropna())).sort_values()
    n = len(bars)
    needed = cfg.train_bars + cfg.embargo_bars + 1
    if n < needed:
        raise ValueError(
            f"walk-forward needs at least {needed} bars (train_bars={cfg.train_bars} + "
            f"embargo_bars={cfg.embargo_bars} + 1 test bar) but the panel has {n} unique timestamps"
        )

    bounds: list[tuple[int, int, int, int]] = []
    k = 0
    while True:
        offset = k * cfg.step
        train_end = offset + cfg.train_bars - 1
        test_start = train_end + cfg.embargo_bars + 1
        if test_start >= n:
            break
        train_start = 0 if cfg.scheme == "expanding" else offset
        test_end = min(test_start + cfg.test_bars - 1, n - 1)
        bounds.append((train_start, train_end, test_start, test_end))
        k += 1

    if cfg.max_folds is not None:
        bounds = bounds[-cfg.max_folds :]
    return [
        Fold(index=i, train_start=bars[a], train_end=bars[b], test_start=bars[c], test_end=bars[d])
        for i, (a, b, c, d) in enumerate(bounds)
    ]


def fold_rows(dataset: pd.DataFrame, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """Integer positions (for `.iloc`) of the fold's training rows and test rows.

    Training rows: `ts` in [train_start, train_end], a label present, and purged — `t1` (when the
    label's horizon ends) strictly before `test_start`. Test rows: `ts` in [test_start, test_end],
    labelled or not (the unlabeled tail is still predicted).
    """
    ts = dataset["ts"]
    in_train = (ts >= fold.train_start) & (ts <= fold.train_end)
    # NaT compares False, so a row without a known horizon end is never trained on.
    purged = dataset["label"].notna() & (dataset["t1"] < fold.test_start)
    in_test = (ts >= fold.test_start) & (ts <= fold.test_end)
    return np.flatnonzero((in_train & purged).to_numpy()), np.flatnonzero(in_test.to_numpy())


def fold_metrics(
    pred: np.ndarray, label: np.ndarray, fwd_return: np.ndarray, objective: Objective
) -> dict[str, Any]:
    """Out-of-sample metrics on the rows that have a label.

    n; ic = Spearman rank correlation of prediction vs forward return; accuracy = directional hit
    rate (regression: sign(pred) == sign(fwd_return); classification: (pred > 0.5) == (label == 1));
    mse (regression) and auc (classification; None with one class). Undefined values are None,
    never NaN, so the dict is JSON-safe; both mse and auc keys are always present.
    """
    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    fwd_return = np.asarray(fwd_return, dtype=np.float64)
    if not (len(pred) == len(label) == len(fwd_return)):
        raise ValueError(
            f"lengths differ: pred {len(pred)}, label {len(label)}, fwd_return {len(fwd_return)}"
        )
    keep = ~np.isnan(label)
    p, y, r = pred[keep], label[keep], fwd_return[keep]
    out: dict[str, Any] = {"n": int(keep.sum()), "ic": None, "accuracy": None, "mse": None, "auc": None}
    if out["n"] == 0:
        return out

    ok = np.isfinite(p) & np.isfinite(r)
    # A constant side makes the rank correlation undefined (scipy would warn and return NaN).
    if ok.sum() >= 2 and np.ptp(p[ok]) > 0 and np.ptp(r[ok]) > 0:
        out["ic"] = _finite(spearmanr(p[ok], r[ok]).statistic)

    if objective == "regression":
        out["accuracy"] = float(np.mean(np.sign(p) == np.sign(r)))
        out["mse"] = _finite(np.mean((p - y) ** 2))
    else:
        out["accuracy"] = float(np.mean((p > 0.5) == (y == 1)))
        if len(np.unique(y)) == 2 and np.isfinite(p).all():
            out["auc"] = _finite(roc_auc_score(y, p))
    return out


def walk_forward(
    dataset: pd.DataFrame,
    feature_columns: Sequence[str],
    model_cfg: ModelConfig,
    objective: Objective,
    folds: Sequence[Fold],
    *,
    done: dict[int, pd.DataFrame] | None = None,
    on_fold: Callable[[int, pd.DataFrame, dict], None] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Train a fresh model per fold on its purged training rows and predict its test rows.

    Returns the stitched out-of-sample predictions (columns symbol, ts, fold, prediction, label,
    fwd_return; sorted by symbol, ts) and one info dict per fold (fold.to_dict(), n_train, n_test,
    note, and `fold_metrics`). `done` maps fold index → predictions already computed by an earlier
    run; those folds are not retrained and `on_fold` is not called for them. `on_fold(index,
    predictions, info)` runs after each newly computed fold — the caller checkpoints there.

    When test windows overlap (step_bars < test_bars) a (symbol, ts) predicted by several folds keeps
    the prediction of the latest fold, which trained on the most recent data; it is still out of
    sample for that fold.
    """
    features = list(feature_columns)
    required = ["symbol", "ts", "label", "fwd_return", "t1", *features]
    missing = [c for c in required if c not in dataset.columns]
    if missing:
        raise ValueError(f"dataset lacks columns {missing}")
    if len({f.index for f in folds}) != len(folds):
        raise ValueError("fold indices must be unique")
    done = done or {}
    unknown = sorted(set(done) - {f.index for f in folds})
    if unknown:
        raise ValueError(f"done holds predictions of folds {unknown} that are not in this fold list")
    labels = dataset["label"].to_numpy(dtype=np.float64)

    parts: list[pd.DataFrame] = []
    infos: list[dict] = []
    for fold in sorted(folds, key=lambda f: f.index):
        train_pos, test_pos = fold_rows(dataset, fold)
        train_label = labels[train_pos]
        if fold.index in done:
            predictions = done[fold.index][PREDICTION_COLUMNS].reset_index(drop=True)
            note = one_class_note(objective, train_label)
        else:
            if len(train_pos) == 0:
                raise ValueError(
                    f"fold {fold.index} ({fold.train_start} .. {fold.train_end}) has no labelled "
                    "training rows after purging; lengthen train_bars or shorten the label horizon"
                )
            model = LightGBMModel(model_cfg, objective)
            model.fit(dataset.iloc[train_pos][features], train_label)
            test = dataset.iloc[test_pos].reset_index(drop=True)
            predictions = pd.DataFrame(
                {
                    "symbol": test["symbol"],
                    "ts": test["ts"],  # a Series keeps the panel's tz-aware dtype
                    "fold": np.full(len(test), fold.index, dtype=np.int64),
                    "prediction": model.predict(test[features]),
                    "label": test["label"].to_numpy(dtype=np.float64),
                    "fwd_return": test["fwd_return"].to_numpy(dtype=np.float64),
                }
            )
            note = model.note

        info = {
            **fold.to_dict(),
            "n_train": int(len(train_pos)),
            "n_test": int(len(predictions)),
            "note": note,
            **fold_metrics(
                predictions["prediction"].to_numpy(dtype=np.float64),
                predictions["label"].to_numpy(dtype=np.float64),
                predictions["fwd_return"].to_numpy(dtype=np.float64),
                objective,
            ),
        }
        if fold.index not in done and on_fold is not None:
            on_fold(fold.index, predictions, info)
        parts.append(predictions)
        infos.append(info)

    if not parts:
        return pd.DataFrame(columns=PREDICTION_COLUMNS), infos
    stitched = pd.concat(parts, ignore_index=True)
    # Overlapping test windows: the latest fold wins (parts are in fold order).
    stitched = stitched.drop_duplicates(subset=["symbol", "ts"], keep="last")
    stitched = stitched.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    return stitched, infos


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
