"""One interface for every model family: fit, predict, predict_proba, save, load, feature importance.

A model sees a `Design`: the feature table sorted by (symbol, ts) and the feature columns. Rows are
chosen by integer position, so a tabular model reads those rows and a sequence model reads, for each
chosen row, the window of the same symbol's rows ending at it, which only holds what was known at that
row's time, whatever the fold.

Families register themselves with `register_family`; `make_model(cfg)` builds one from the job file's
`model` block and `load_model(folder)` reads any saved model back (its meta.json names the family).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from quanto.config.models import ModelConfig
from quanto.observability.metrics import observe_prediction_latency

Objective = Literal["regression", "classification"]
META_FILE = "meta.json"
META_VERSION = 2

# Called by long fits (epochs, boosting rounds) with {"step", "of", ...metrics}: workers heartbeat it.
Progress = Callable[[dict[str, Any]], None]

_predicting = threading.local()  # set while a thread runs a model's predict


def _timed_predict(predict: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """`predict` that reports its latency (quanto_prediction_latency_seconds by family). Only a
    thread's outermost call reports: an ensemble's members are part of the ensemble's time."""

    @functools.wraps(predict)
    def timed(self: Model, design: Design, rows: np.ndarray) -> np.ndarray:
        if getattr(_predicting, "active", False):
            return predict(self, design, rows)
        _predicting.active = True
        t0 = time.perf_counter()
        try:
            out = predict(self, design, rows)
        finally:
            _predicting.active = False
        observe_prediction_latency(time.perf_counter() - t0, self.family)
        return out

    return timed


@dataclass(frozen=True)
class Design:
    """The rows a model learns from or predicts: `frame` sorted by (symbol, ts) with a RangeIndex,
    holding `symbol`, `ts` and the feature `columns` (other columns are ignored)."""

    frame: pd.DataFrame
    columns: list[str]
    _matrix: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c for c in ("symbol", "ts", *self.columns) if c not in self.frame.columns]
        if missing:
            raise ValueError(f"design frame lacks columns {missing}")

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def matrix(self) -> np.ndarray:
        """All feature values as one float64 (rows x features) array, built once; NaN stays NaN."""
        if not self._matrix:
            values = self.frame[self.columns].to_numpy(dtype=np.float64, na_value=np.nan)
            self._matrix.append(np.ascontiguousarray(values))
        return self._matrix[0]

    def tabular(self, rows: np.ndarray) -> np.ndarray:
        """The feature matrix of `rows` (float64, C-contiguous)."""
        return self.matrix[np.asarray(rows, dtype=np.int64)]

    def windows(self, rows: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
        """For each row, the `lookback` rows of its symbol ending at it: (len(rows), lookback,
        features) float32 and a bool mask of the rows that have a full window (see
        `quanto.models.sequences.windows`)."""
        from quanto.models.sequences import windows

        return windows(self, np.asarray(rows, dtype=np.int64), lookback)


class Model(ABC):
    """A model family. Subclasses set `family`, implement the abstract methods, and are registered
    with `register_family`. Constructed from `ModelConfig` (its `params` validated for the family)."""

    family: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every family's predict reports its latency, without each family timing itself.
        if "predict" in cls.__dict__:
            cls.predict = _timed_predict(cls.__dict__["predict"])  # type: ignore[method-assign]

    def __init__(self, cfg: ModelConfig) -> None:
        if config_family(cfg) != self.family:
            raise ValueError(
                f"{type(self).__name__} is family {self.family!r}, the config asks for {config_family(cfg)!r}"
            )
        self.cfg = cfg
        self.objective: Objective = cfg.objective
        self.features: list[str] = []
        self.note: str | None = None  # why the fit fell back (e.g. one class), shown in reports

    @property
    def params(self) -> dict[str, Any]:
        """The family's validated parameters."""
        return self.cfg.params

    @abstractmethod
    def fit(
        self,
        design: Design,
        rows: np.ndarray,
        y: np.ndarray,
        *,
        valid: tuple[np.ndarray, np.ndarray] | None = None,
        progress: Progress | None = None,
        checkpoint: Path | None = None,
    ) -> Model:
        """Train on `rows` of `design` with labels `y` (0/1 for classification). `valid` = (rows, y)
        of a validation window, for early stopping and pruning; never trained on. `checkpoint`: a
        folder where an interruptible fit keeps its state, and resumes from when it exists."""

    @abstractmethod
    def predict(self, design: Design, rows: np.ndarray) -> np.ndarray:
        """Regression: the predicted value; classification: P(class 1). One float64 per row."""

    def predict_proba(self, design: Design, rows: np.ndarray) -> np.ndarray:
        """Classification: (n, 2) class probabilities [P(0), P(1)]."""
        if self.objective != "classification":
            raise ValueError(f"predict_proba needs a classifier; this {self.family} model is a regressor")
        p = self.predict(design, rows)
        return np.column_stack([1.0 - p, p])

    @abstractmethod
    def feature_importance(self) -> dict[str, float]:
        """Importance per feature, non-negative, normalized to sum 1 (all 0 when the model has none),
        largest first."""

    @abstractmethod
    def _save_state(self, folder: Path) -> dict[str, Any]:
        """Write the family's own files into `folder`; return what meta.json should carry for them."""

    @abstractmethod
    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        """Read back what `_save_state` wrote."""

    def save(self, folder: Path) -> list[Path]:
        """Write the model into `folder`: the family's files, then meta.json (family, objective,
        features, config, note, versions) last, so its presence marks a complete artifact. Returns
        the files written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self._save_state(folder)
        meta = {
            "version": META_VERSION,
            "family": self.family,
            "objective": self.objective,
            "features": self.features,
            "config": self.cfg.model_dump(mode="json"),
            "note": self.note,
            "state": state,
        }
        write_atomic(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


FAMILIES: dict[str, type[Model]] = {}
# Built from `ModelConfig.ensemble` (members fitted per fold, then combined), whatever `kind` says.
ENSEMBLE_FAMILY = "ensemble"
ENSEMBLE_MODULE = "quanto.models.ensemble"


def config_family(cfg: ModelConfig) -> str:
    """The family that builds `cfg`: "ensemble" when it has an `ensemble` block, else `cfg.kind`."""
    return ENSEMBLE_FAMILY if cfg.ensemble is not None else cfg.kind


def register_family(cls: type[Model]) -> type[Model]:
    """Class decorator: make `cls` available to `make_model` / `load_model` under `cls.family`."""
    if cls.family in FAMILIES and FAMILIES[cls.family] is not cls:
        raise ValueError(f"model family {cls.family!r} is already registered")
    FAMILIES[cls.family] = cls
    return cls


def family_class(kind: str) -> type[Model]:
    """The class of family `kind`, importing its module on first use (torch only when asked for)."""
    if kind not in FAMILIES:
        import importlib

        from quanto.config.model_params import FAMILY_MODULES

        modules = {**FAMILY_MODULES, ENSEMBLE_FAMILY: ENSEMBLE_MODULE}
        if kind not in modules:
            raise ValueError(f"unknown model family {kind!r}; known: {sorted(FAMILY_MODULES)}")
        importlib.import_module(modules[kind])
    return FAMILIES[kind]


def make_model(cfg: ModelConfig) -> Model:
    """A fresh, unfitted model of the family `cfg.kind` (or an ensemble, see `config_family`)."""
    return family_class(config_family(cfg))(cfg)


def load_model(folder: Path) -> Model:
    """Read a model written by `Model.save`, whatever its family."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no {META_FILE} in {folder}: not a saved model")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != META_VERSION:
        raise ValueError(f"{meta_path}: unsupported model meta version {meta.get('version')!r}")
    model = make_model(ModelConfig.model_validate(meta["config"]))
    model.features = list(meta["features"])
    model.note = meta.get("note")
    model._load_state(folder, meta.get("state") or {})
    return model


def check_labels(objective: Objective, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`y` as float64 after the checks every family makes: one label per row, finite, 0/1 for a
    classifier, at least one row. Raises ValueError naming the problem."""
    y = np.asarray(y, dtype=np.float64)
    if len(rows) != len(y):
        raise ValueError(f"{len(rows)} rows but {len(y)} labels")
    if len(y) == 0:
        raise ValueError("cannot fit a model on zero rows")
    if not np.isfinite(y).all():
        raise ValueError(f"y holds {int((~np.isfinite(y)).sum())} non-finite labels; drop them first")
    if objective == "classification" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("classification labels must be 0 or 1")
    return y


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


def normalized_importance(features: list[str], values: np.ndarray) -> dict[str, float]:
    """`values` (non-negative, one per feature) as shares summing to 1, largest first."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    total = values.sum()
    shares = values / total if total > 0 else np.zeros_like(values)
    ranked = sorted(zip(features, shares, strict=True), key=lambda kv: (-kv[1], kv[0]))
    return {name: float(share) for name, share in ranked}


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file through a temporary name and a rename, so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
