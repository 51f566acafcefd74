"""Tabular model families: each row is predicted from its own features (`Design.tabular`).

`TabularModel` holds what every tabular family shares: label checks, the one-class constant fallback,
feature columns matched by name, normalized importance and artifact bookkeeping. The families here are
scikit-learn's random forest and extra trees ("random_forest", "extra_trees") and linear models
("linear": ridge / lasso regression, L2 / L1 logistic regression); the gradient-boosted families in
`quanto.models.gbdt` build on the same base.

Nothing is pickled. A forest is saved as its trees' node arrays and a linear model as its imputation
and scaling statistics and coefficients (`.npz`, read with `allow_pickle=False`), and both predict from
those arrays: loading a model never runs code from the file, and a saved model reads back whatever the
installed scikit-learn version.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numba
import numpy as np
import sklearn
from scipy.special import expit
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import Lasso, LogisticRegression, Ridge

from quanto.config.models import ModelConfig
from quanto.models.base import (
    Design,
    Model,
    Progress,
    check_labels,
    normalized_importance,
    one_class_note,
    register_family,
    write_atomic,
)
from quanto.models.sequences import Standardizer

log = logging.getLogger(__name__)

# Long fits report progress every this many boosting rounds or trees.
PROGRESS_EVERY = 10

SKLEARN_VERSION = tuple(int(part) for part in re.findall(r"\d+", sklearn.__version__)[:2])
# scikit-learn version from which the forest's trees route NaN features themselves (learning where
# missing values go); before it the training median is imputed.
NATIVE_NAN_SINCE = {"random_forest": (1, 4), "extra_trees": (1, 6)}
# LogisticRegression's `penalty` is deprecated from 1.8 on in favour of `l1_ratio`.
LOGISTIC_L1_RATIO_SINCE = (1, 8)
# A forest grows in at most this many warm-start batches (progress after each).
FOREST_BATCHES = 4


class TabularModel(Model):
    """A model family that reads each row's features alone.

    Subclasses implement `_fit`, `_predict`, `_importance`, `_save_fitted` and `_load_fitted` on plain
    float64 matrices whose columns are `self.features`, in order. A classifier whose training labels
    hold one class predicts that class as a constant (see `one_class_note`) and saves no family files.
    Fits are short and restart from scratch after an interruption, so `checkpoint` is not used.
    """

    files: ClassVar[tuple[str, ...]]  # the family's own files in a saved model folder

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.constant: float | None = None
        self.fitted = False

    def fit(
        self,
        design: Design,
        rows: np.ndarray,
        y: np.ndarray,
        *,
        valid: tuple[np.ndarray, np.ndarray] | None = None,
        progress: Progress | None = None,
        checkpoint: Path | None = None,
    ) -> TabularModel:
        """Train on `rows` of `design` with labels `y`; `valid` = (rows, y) serves early stopping where
        the family has it and is never trained on."""
        if not design.columns:
            raise ValueError("design has no feature columns to fit on")
        rows = np.asarray(rows, dtype=np.int64)
        y = check_labels(self.objective, rows, y)
        self.features = list(design.columns)
        self.fitted = False
        self.constant, self.note = None, one_class_note(self.objective, y)
        if self.note is not None:
            log.warning("%s: %s", self.family, self.note)
            self.constant = float(y[0])
        else:
            self._fit(design.tabular(rows), y, self._validation(design, valid), progress)
        self.fitted = True
        return self

    def predict(self, design: Design, rows: np.ndarray) -> np.ndarray:
        """Regression: the predicted value; classification: P(class 1). One float64 per row."""
        if not self.fitted:
            raise RuntimeError(f"{self.family} model is not fitted")
        X = self._matrix(design, np.asarray(rows, dtype=np.int64))
        if self.constant is not None:
            return np.full(len(X), self.constant, dtype=np.float64)
        if len(X) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._predict(X), dtype=np.float64)

    def feature_importance(self) -> dict[str, float]:
        """The family's importance per feature, normalized to sum 1, largest first (all 0 for a
        constant model)."""
        if not self.fitted:
            raise RuntimeError(f"{self.family} model is not fitted")
        values = np.zeros(len(self.features)) if self.constant is not None else self._importance()
        return normalized_importance(self.features, values)

    def _save_state(self, folder: Path) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError(f"{self.family} model is not fitted")
        if self.constant is not None:
            for name in self.files:  # a stale artifact of an earlier fit must not sit beside this one
                (folder / name).unlink(missing_ok=True)
            return {"constant": self.constant}
        return self._save_fitted(folder)

    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        if state.get("constant") is not None:
            self.constant = float(state["constant"])
        else:
            self._load_fitted(folder, state)
        self.fitted = True

    def _validation(
        self, design: Design, valid: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The validation window as (matrix, labels), or None when there is none (or it is empty)."""
        if valid is None or len(valid[0]) == 0:
            return None
        rows = np.asarray(valid[0], dtype=np.int64)
        try:
            y = check_labels(self.objective, rows, valid[1])
        except ValueError as err:
            raise ValueError(f"validation window: {err}") from None
        return design.tabular(rows), y

    def _matrix(self, design: Design, rows: np.ndarray) -> np.ndarray:
        """The model's features of `rows`, matched to the design's columns by name."""
        if design.columns == self.features:
            return design.tabular(rows)
        missing = [f for f in self.features if f not in design.columns]
        if missing:
            raise ValueError(f"design lacks feature columns the model was trained on: {missing}")
        return design.tabular(rows)[:, [design.columns.index(f) for f in self.features]]

    @abstractmethod
    def _fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        valid: tuple[np.ndarray, np.ndarray] | None,
        progress: Progress | None,
    ) -> None:
        """Fit on the training matrix (labels checked, two classes for a classifier)."""

    @abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for a non-empty matrix."""

    @abstractmethod
    def _importance(self) -> np.ndarray:
        """Non-negative importance, one per feature (not normalized)."""

    @abstractmethod
    def _save_fitted(self, folder: Path) -> dict[str, Any]:
        """Write the fitted model's files; return what meta.json keeps for them."""

    @abstractmethod
    def _load_fitted(self, folder: Path, state: dict[str, Any]) -> None:
        """Read back what `_save_fitted` wrote."""


# -- arrays on disk and missing values ------------------------------------------------------------


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as one compressed .npz, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read an .npz written by `save_arrays`; object arrays (pickles) are refused."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the saved model is incomplete")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def training_medians(X: np.ndarray) -> np.ndarray:
    """Per-feature median of the training rows' finite values; 0 for a feature with none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: replaced by 0 below
        medians = np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0)
    return np.where(np.isnan(medians), 0.0, medians)


def fill_missing(X: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """`X` with each missing (NaN) or infinite value replaced by its feature's training median."""
    return np.where(np.isfinite(X), X, medians)


# -- forests --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _walk_trees(
    x, roots, left, right, feature, threshold, missing_left, value
):  # pragma: no cover - compiled
    """Each row down each tree to its leaf (a leaf points at itself); the mean of the leaf values,
    summed in tree order so the result never depends on threads. Compiled: a forest of 300 trees of
    depth 17 answers 100 rows in well under a millisecond, where a numpy walk took milliseconds."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        total = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] != node:
                v = x[i, feature[node]]
                go_left = missing_left[node] if np.isnan(v) else v <= threshold[node]
                node = left[node] if go_left else right[node]
            total += value[node]
        out[i] = total / roots.shape[0]
    return out


@dataclass
class TreeEnsemble:
    """A fitted scikit-learn forest as flat node arrays, all trees' nodes end to end.

    Predicts as scikit-learn does (features compared as float32 with float64 thresholds, NaN sent to
    the side learned in training, the mean of the trees' leaf values), but from arrays that save
    without pickle, and always in the same order, so predictions are bit-identical run to run
    (scikit-learn adds up the trees in thread completion order when n_jobs > 1).
    """

    roots: np.ndarray  # int64 (trees,): each tree's first node
    left: np.ndarray  # int64 (nodes,): child for "x <= threshold"; a leaf points at itself
    right: np.ndarray  # int64 (nodes,): the other child; a leaf points at itself
    feature: np.ndarray  # int64 (nodes,): the split feature (0 at leaves, never used there)
    threshold: np.ndarray  # float64 (nodes,)
    missing_left: np.ndarray  # bool (nodes,): where a NaN feature goes
    value: np.ndarray  # float64 (nodes,): regression mean, or P(class 1), of the node's samples
    depth: int  # the deepest tree's depth: steps a row takes from root to leaf at most

    ARRAYS: ClassVar[tuple[str, ...]] = (
        "roots",
        "left",
        "right",
        "feature",
        "threshold",
        "missing_left",
        "value",
    )

    @classmethod
    def from_forest(cls, forest: Any) -> TreeEnsemble:
        """The node arrays of a fitted forest (regressor, or classifier over classes 0 and 1)."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in cls.ARRAYS if name != "roots"}
        roots, offset = [], 0
        for estimator in forest.estimators_:
            tree = estimator.tree_
            index = np.arange(tree.node_count, dtype=np.int64)
            leaf = tree.children_left < 0
            roots.append(offset)
            parts["left"].append(np.where(leaf, index, tree.children_left) + offset)
            parts["right"].append(np.where(leaf, index, tree.children_right) + offset)
            parts["feature"].append(np.where(leaf, 0, tree.feature).astype(np.int64))
            parts["threshold"].append(np.asarray(tree.threshold, dtype=np.float64))
            parts["missing_left"].append(np.asarray(tree.missing_go_to_left, dtype=bool))
            value = np.asarray(tree.value[:, 0, :], dtype=np.float64)
            # Classifier leaves hold class weights (fractions or counts, by version): P(class 1).
            parts["value"].append(value[:, 1] / value.sum(axis=1) if value.shape[1] == 2 else value[:, 0])
            offset += tree.node_count
        depth = max(estimator.tree_.max_depth for estimator in forest.estimators_)
        return cls(
            roots=np.asarray(roots, dtype=np.int64),
            depth=int(depth),
            **{k: np.concatenate(v) for k, v in parts.items()},
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The mean over trees of the leaf each row reaches: one float64 per row of `X`."""
        # float32 like scikit-learn, whose thresholds are chosen between float32 feature values.
        x = np.ascontiguousarray(X, dtype=np.float32)
        return _walk_trees(
            x, self.roots, self.left, self.right, self.feature, self.threshold, self.missing_left, self.value
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (with `depth` as a 0-d array)."""
        return {**{name: getattr(self, name) for name in self.ARRAYS}, "depth": np.asarray(self.depth)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TreeEnsemble:
        """Read back `arrays()`."""
        return cls(depth=int(arrays["depth"]), **{name: arrays[name] for name in cls.ARRAYS})


class ForestModel(TabularModel):
    """A scikit-learn forest, regressor or classifier by objective; random_state = seed, n_jobs from
    the config. Trees are grown in at most `FOREST_BATCHES` warm-start batches (warm start grows the
    same trees as one fit) so that progress is reported. NaN features go to the trees where the installed scikit-learn
    supports it for the family, else the training median is imputed (and saved)."""

    files = ("forest.npz",)
    estimators: ClassVar[dict[str, type]]

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.ensemble: TreeEnsemble | None = None
        self.medians: np.ndarray | None = None  # set when NaN features are imputed
        self.importance: np.ndarray | None = None

    @classmethod
    def native_nan(cls) -> bool:
        """Whether the installed scikit-learn lets this family's trees take NaN features."""
        return NATIVE_NAN_SINCE[cls.family] <= SKLEARN_VERSION

    def estimator(self) -> Any:
        """The unfitted scikit-learn forest this model trains (warm start on, no trees yet)."""
        p = self.params
        return self.estimators[self.objective](
            n_estimators=0,
            max_depth=p["max_depth"],
            min_samples_leaf=p["min_samples_leaf"],
            max_features=p["max_features"],
            random_state=self.cfg.seed,
            n_jobs=self.cfg.n_jobs,
            warm_start=True,
        )

    def _fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        valid: tuple[np.ndarray, np.ndarray] | None,
        progress: Progress | None,
    ) -> None:
        self.medians = None if self.native_nan() else training_medians(X)
        if self.medians is not None:
            X = fill_missing(X, self.medians)
        # scikit-learn's tree dtype, converted once here rather than by every batch's fit.
        X = np.ascontiguousarray(X, dtype=np.float32)
        forest = self.estimator()
        total = self.params["n_estimators"]
        # A few batches only: each warm-start fit repeats scikit-learn's setup and idles a thread at
        # its end (10-tree batches made fits 2x slower); liveness comes from the worker's heartbeats.
        step = max(PROGRESS_EVERY, -(-total // FOREST_BATCHES))
        grown = 0
        while grown < total:
            grown = min(grown + step, total)
            forest.set_params(n_estimators=grown).fit(X, y)
            if progress is not None:
                progress({"step": grown, "of": total})
        self.ensemble = TreeEnsemble.from_forest(forest)
        self.importance = np.nan_to_num(np.asarray(forest.feature_importances_, dtype=np.float64))

    def _predict(self, X: np.ndarray) -> np.ndarray:
        assert self.ensemble is not None
        return self.ensemble.predict(X if self.medians is None else fill_missing(X, self.medians))

    def _importance(self) -> np.ndarray:
        assert self.importance is not None
        return self.importance

    def _save_fitted(self, folder: Path) -> dict[str, Any]:
        assert self.ensemble is not None and self.importance is not None
        arrays = {**self.ensemble.arrays(), "importance": self.importance}
        if self.medians is not None:
            arrays["medians"] = self.medians
        save_arrays(folder / self.files[0], arrays)
        return {
            "file": self.files[0],
            "imputed": self.medians is not None,
            "sklearn_version": sklearn.__version__,
        }

    def _load_fitted(self, folder: Path, state: dict[str, Any]) -> None:
        arrays = load_arrays(folder / self.files[0])
        self.ensemble = TreeEnsemble.from_arrays(arrays)
        self.importance = arrays["importance"]
        self.medians = arrays.get("medians")


@register_family
class RandomForestModel(ForestModel):
    """scikit-learn RandomForest (bootstrap samples, best split among `max_features`); importance is
    the mean decrease in impurity."""

    family = "random_forest"
    estimators = {"regression": RandomForestRegressor, "classification": RandomForestClassifier}


@register_family
class ExtraTreesModel(ForestModel):
    """scikit-learn ExtraTrees (all rows, random split thresholds); importance is the mean decrease in
    impurity."""

    family = "extra_trees"
    estimators = {"regression": ExtraTreesRegressor, "classification": ExtraTreesClassifier}


# -- linear ---------------------------------------------------------------------------------------


@register_family
class LinearModel(TabularModel):
    """Ridge (penalty l2) or lasso (l1) regression, L2 or L1 logistic regression (C = 1 / alpha), on
    features with NaN filled by the training median and standardized with the training mean and
    standard deviation. Predicts from the saved statistics and coefficients; importance is |coef| on
    the standardized features."""

    family = "linear"
    files = ("linear.npz",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.medians: np.ndarray | None = None
        self.scaler: Standardizer | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0

    def estimator(self) -> Any:
        """The unfitted scikit-learn estimator for the objective and penalty."""
        p, seed = self.params, self.cfg.seed
        l1 = p["penalty"] == "l1"
        if self.objective == "regression":
            if l1:
                return Lasso(alpha=p["alpha"], max_iter=p["max_iter"], random_state=seed)
            return Ridge(alpha=p["alpha"], max_iter=p["max_iter"], random_state=seed)
        if SKLEARN_VERSION >= LOGISTIC_L1_RATIO_SINCE:
            penalty: dict[str, Any] = {"l1_ratio": 1.0 if l1 else 0.0}
        else:
            penalty = {"penalty": p["penalty"]}
        return LogisticRegression(
            C=1.0 / p["alpha"],
            solver="saga" if l1 else "lbfgs",  # lbfgs has no L1; saga does
            max_iter=p["max_iter"],
            random_state=seed,
            **penalty,
        )

    def _fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        valid: tuple[np.ndarray, np.ndarray] | None,
        progress: Progress | None,
    ) -> None:
        self.medians = training_medians(X)
        filled = fill_missing(X, self.medians)
        self.scaler = Standardizer.fit(filled)
        estimator = self.estimator().fit(self.scaler.apply(filled), y)
        self.coef = np.asarray(estimator.coef_, dtype=np.float64).ravel()
        self.intercept = float(np.ravel(estimator.intercept_)[0])
        if progress is not None:
            progress({"step": 1, "of": 1})

    def _predict(self, X: np.ndarray) -> np.ndarray:
        assert self.medians is not None and self.scaler is not None and self.coef is not None
        score = self.scaler.apply(fill_missing(X, self.medians)) @ self.coef + self.intercept
        return expit(score) if self.objective == "classification" else score

    def _importance(self) -> np.ndarray:
        assert self.coef is not None
        return np.abs(self.coef)

    def _save_fitted(self, folder: Path) -> dict[str, Any]:
        assert self.medians is not None and self.scaler is not None and self.coef is not None
        arrays = {
            "medians": self.medians,
            "mean": self.scaler.mean,
            "std": self.scaler.std,
            "coef": self.coef,
            "intercept": np.asarray(self.intercept),
        }
        save_arrays(folder / self.files[0], arrays)
        return {"file": self.files[0]}

    def _load_fitted(self, folder: Path, state: dict[str, Any]) -> None:
        arrays = load_arrays(folder / self.files[0])
        self.medians = arrays["medians"]
        self.scaler = Standardizer(mean=arrays["mean"], std=arrays["std"])
        self.coef = arrays["coef"]
        self.intercept = float(arrays["intercept"])
