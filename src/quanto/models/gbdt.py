"""LightGBM regressor / classifier behind one small, deterministic interface.

The native LightGBM API is used (not the sklearn wrapper) so that the artifact is exactly the text
booster LightGBM itself reads, and so every parameter that affects reproducibility is set explicitly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from quanto.config.models import ModelConfig

log = logging.getLogger(__name__)

Objective = Literal["regression", "classification"]

MODEL_FILE = "model.txt"
META_FILE = "meta.json"
META_VERSION = 1


def one_class_note(objective: Objective, y: np.ndarray) -> str | None:
    """Why a classifier cannot be trained on `y`, or None when it can.

    A training window whose direction labels are all 0 (or all 1) has nothing to separate; the model
    then predicts the observed class frequency as a constant probability instead of failing the run.
    """
    if objective != "classification" or len(y) == 0:
        return None
    classes = np.unique(np.asarray(y, dtype=np.float64))
    if len(classes) > 1:
        return None
    return (
        f"training labels hold one class only ({int(classes[0])}, {len(y)} rows); "
        f"predicting the constant probability P(class 1) = {float(classes[0]):.1f}"
    )


class LightGBMModel:
    """A LightGBM model configured by `ModelConfig`.

    Deterministic by construction: a fixed seed (which also seeds bagging and feature sampling),
    `deterministic=True` and `force_row_wise=True`, so two fits on the same data give bit-identical
    predictions. NaN features are left to LightGBM's missing-value handling.
    """

    def __init__(self, cfg: ModelConfig, objective: Objective) -> None:
        if objective not in ("regression", "classification"):
            raise ValueError(f"objective must be 'regression' or 'classification', got {objective!r}")
        self.cfg = cfg
        self.objective: Objective = objective
        self.features: list[str] = []
        self.booster: lgb.Booster | None = None
        # Set instead of a booster when the classifier saw one class only (see `one_class_note`).
        self.constant: float | None = None
        self.note: str | None = None

    # -- training -----------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The LightGBM parameters this model trains with (also recorded in the booster file)."""
        cfg = self.cfg
        return {
            "objective": "binary" if self.objective == "classification" else "regression",
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.num_leaves,
            "min_data_in_leaf": cfg.min_child_samples,
            "bagging_fraction": cfg.subsample,
            # LightGBM ignores bagging_fraction unless bagging_freq > 0.
            "bagging_freq": 1 if cfg.subsample < 1.0 else 0,
            "feature_fraction": cfg.colsample_bytree,
            # `seed` derives bagging, feature-fraction and data-sampling seeds.
            "seed": cfg.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": cfg.n_jobs,
            "verbosity": -1,
        }

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> LightGBMModel:
        """Train on the feature frame `X` (column order is remembered) and labels `y`."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError("X must be a pandas DataFrame with one column per feature")
        y = np.asarray(y, dtype=np.float64)
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if len(y) == 0:
            raise ValueError("cannot fit a model on zero rows")
        if not np.isfinite(y).all():
            raise ValueError(f"y holds {int((~np.isfinite(y)).sum())} non-finite labels; drop them first")
        if self.objective == "classification" and not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("classification labels must be 0 or 1")

        self.features = [str(c) for c in X.columns]
        self.booster, self.constant, self.note = None, None, one_class_note(self.objective, y)
        if self.note is not None:
            log.warning("lightgbm: %s", self.note)
            self.constant = float(y[0])
            return self

        data = lgb.Dataset(
            self._matrix(X),
            label=y,
            # Positional names: LightGBM rejects JSON-special characters in feature names, and the
            # real names live in meta.json anyway.
            feature_name=[f"f{i}" for i in range(len(self.features))],
            free_raw_data=True,
        )
        self.booster = lgb.train(self.params(), data, num_boost_round=self.cfg.n_estimators)
        return self

    # -- inference ----------------------------------------------------------------------------

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Regression: the predicted value; classification: P(class 1). One float64 per row."""
        if self.booster is None and self.constant is None:
            raise RuntimeError("model is not fitted")
        matrix = self._matrix(self._select(X))
        if self.constant is not None:
            return np.full(len(matrix), self.constant, dtype=np.float64)
        assert self.booster is not None
        return np.asarray(self.booster.predict(matrix, num_threads=self.cfg.n_jobs), dtype=np.float64)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature, normalized to sum 1, largest first (all 0 without splits)."""
        if self.booster is None:
            gains = np.zeros(len(self.features))
        else:
            gains = np.asarray(self.booster.feature_importance(importance_type="gain"), dtype=np.float64)
        total = gains.sum()
        shares = gains / total if total > 0 else gains
        ranked = sorted(zip(self.features, shares, strict=True), key=lambda kv: (-kv[1], kv[0]))
        return {name: float(share) for name, share in ranked}

    # -- artifacts ----------------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        """Write `model.txt` (LightGBM's text booster) and `meta.json` into `dir`, each atomically.

        A constant (one-class) model has no booster: only meta.json is written, and a stale
        model.txt is removed so the directory never mixes two models.
        """
        if self.booster is None and self.constant is None:
            raise RuntimeError("model is not fitted")
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        if self.booster is not None:
            _write_atomic(dir / MODEL_FILE, self.booster.model_to_string())
        else:
            (dir / MODEL_FILE).unlink(missing_ok=True)
        meta = {
            "version": META_VERSION,
            "kind": "lightgbm",
            "lightgbm_version": lgb.__version__,
            "objective": self.objective,
            "features": self.features,
            "cfg": self.cfg.model_dump(mode="json"),
            "constant": self.constant,
            "note": self.note,
        }
        # meta.json last: its presence marks a complete artifact.
        _write_atomic(dir / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, dir: Path) -> LightGBMModel:
        """Read a model written by `save`."""
        dir = Path(dir)
        meta_path = dir / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"no {META_FILE} in {dir}: not a saved model")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != META_VERSION:
            raise ValueError(f"{meta_path}: unsupported meta version {meta.get('version')!r}")
        model = cls(ModelConfig.model_validate(meta["cfg"]), meta["objective"])
        model.features = list(meta["features"])
        model.note = meta.get("note")
        if meta.get("constant") is not None:
            model.constant = float(meta["constant"])
        else:
            model.booster = lgb.Booster(model_str=(dir / MODEL_FILE).read_text())
        return model

    # -- internals ----------------------------------------------------------------------------

    def _select(self, X: pd.DataFrame) -> pd.DataFrame:
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise ValueError(f"X lacks feature columns the model was trained on: {missing}")
        return X[self.features]

    @staticmethod
    def _matrix(X: pd.DataFrame) -> np.ndarray:
        # float64, C-contiguous: what LightGBM reads without another copy; NaN stays NaN.
        return np.ascontiguousarray(X.to_numpy(dtype=np.float64, na_value=np.nan))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
