"""Gradient-boosted trees: LightGBM ("lightgbm") and XGBoost ("xgboost"), regressor or classifier.

Both use their library's native API (not the scikit-learn wrappers), so that every parameter that
affects reproducibility is set explicitly and the artifact is the booster file the library itself
reads: LightGBM's text model, XGBoost's UBJSON. NaN features are left to the libraries' own
missing-value handling. Early stopping watches the validation window when the fold has one and
`early_stopping_rounds` is set; the saved model holds the best iteration's trees only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import xgboost as xgb

from quanto.config.models import ModelConfig
from quanto.models.base import Progress, register_family, write_atomic
from quanto.models.tabular import PROGRESS_EVERY, TabularModel


def positional_names(n: int) -> list[str]:
    """Feature names given to the boosters: f0, f1, ... LightGBM rejects JSON-special characters in
    names, and the real names live in meta.json anyway."""
    return [f"f{i}" for i in range(n)]


def report_round(progress: Progress | None, step: int, of: int) -> None:
    """Report boosting round `step` (1-based) of `of` every `PROGRESS_EVERY` rounds and at the last."""
    if progress is not None and (step % PROGRESS_EVERY == 0 or step == of):
        progress({"step": step, "of": of})


@register_family
class LightGBMModel(TabularModel):
    """LightGBM (native API). Deterministic by construction: a fixed seed (which also seeds bagging
    and feature sampling), `deterministic=True` and `force_row_wise=True`, so two fits on the same
    data give bit-identical predictions. Importance is the total split gain."""

    family = "lightgbm"
    files = ("model.txt",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.booster: lgb.Booster | None = None

    def booster_params(self) -> dict[str, Any]:
        """The LightGBM parameters this model trains with (also recorded in the booster file)."""
        p = self.params
        return {
            "objective": "binary" if self.objective == "classification" else "regression",
            "learning_rate": p["learning_rate"],
            "num_leaves": p["num_leaves"],
            "min_data_in_leaf": p["min_child_samples"],
            "bagging_fraction": p["subsample"],
            # LightGBM ignores bagging_fraction unless bagging_freq > 0.
            "bagging_freq": 1 if p["subsample"] < 1.0 else 0,
            "feature_fraction": p["colsample_bytree"],
            "lambda_l2": p["reg_lambda"],
            # `seed` derives the bagging, feature-fraction and data-sampling seeds.
            "seed": self.cfg.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.cfg.n_jobs,
            "verbosity": -1,
        }

    def _fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        valid: tuple[np.ndarray, np.ndarray] | None,
        progress: Progress | None,
    ) -> None:
        p = self.params
        total = p["n_estimators"]
        data = lgb.Dataset(X, label=y, feature_name=positional_names(X.shape[1]), free_raw_data=True)
        valid_sets, callbacks = [], [lambda env: report_round(progress, env.iteration + 1, total)]
        if valid is not None and p["early_stopping_rounds"] is not None:
            # `reference`: the validation rows are binned with the training rows' bin edges.
            valid_sets.append(lgb.Dataset(valid[0], label=valid[1], reference=data))
            callbacks.append(lgb.early_stopping(p["early_stopping_rounds"], verbose=False))
        # After early stopping, lgb.train returns the booster rebuilt from the best iteration's trees
        # (keep_training_booster=False), so the model and its artifact predict alike.
        self.booster = lgb.train(
            self.booster_params(), data, num_boost_round=total, valid_sets=valid_sets, callbacks=callbacks
        )

    def _predict(self, X: np.ndarray) -> np.ndarray:
        assert self.booster is not None
        return self.booster.predict(X, num_threads=self.cfg.n_jobs)

    def _importance(self) -> np.ndarray:
        assert self.booster is not None
        return np.asarray(self.booster.feature_importance(importance_type="gain"), dtype=np.float64)

    def _save_fitted(self, folder: Path) -> dict[str, Any]:
        assert self.booster is not None
        write_atomic(folder / self.files[0], self.booster.model_to_string())
        return {
            "file": self.files[0],
            "rounds": self.booster.current_iteration(),
            "lightgbm_version": lgb.__version__,
        }

    def _load_fitted(self, folder: Path, state: dict[str, Any]) -> None:
        path = folder / self.files[0]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the saved model is incomplete")
        self.booster = lgb.Booster(model_str=path.read_text())


class RoundReporter(xgb.callback.TrainingCallback):
    """Reports XGBoost's boosting rounds to `progress`."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        super().__init__()
        self.progress, self.total = progress, total

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        """Report round `epoch` (0-based); never asks training to stop."""
        report_round(self.progress, epoch + 1, self.total)
        return False


@register_family
class XGBoostModel(TabularModel):
    """XGBoost (native API, hist tree method). Deterministic: a fixed seed for row and column
    subsampling and nthread = n_jobs; the CPU hist method gives bit-identical predictions run to run.
    Importance is the total split gain. Saved in XGBoost's own UBJSON format."""

    family = "xgboost"
    files = ("model.ubj",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.booster: xgb.Booster | None = None

    def booster_params(self) -> dict[str, Any]:
        """The XGBoost parameters this model trains with (also recorded in the booster file)."""
        p = self.params
        return {
            "objective": "binary:logistic" if self.objective == "classification" else "reg:squarederror",
            "eta": p["learning_rate"],
            "max_depth": p["max_depth"],
            "min_child_weight": p["min_child_weight"],
            "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"],
            "lambda": p["reg_lambda"],
            "tree_method": "hist",
            "seed": self.cfg.seed,
            "nthread": self.cfg.n_jobs,
            "verbosity": 0,
        }

    def _fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        valid: tuple[np.ndarray, np.ndarray] | None,
        progress: Progress | None,
    ) -> None:
        p = self.params
        total = p["n_estimators"]
        names = positional_names(X.shape[1])
        data = xgb.DMatrix(X, label=y, feature_names=names, nthread=self.cfg.n_jobs)
        stopping: dict[str, Any] = {}
        if valid is not None and p["early_stopping_rounds"] is not None:
            watched = xgb.DMatrix(valid[0], label=valid[1], feature_names=names, nthread=self.cfg.n_jobs)
            stopping = {"evals": [(watched, "valid")], "early_stopping_rounds": p["early_stopping_rounds"]}
        booster = xgb.train(
            self.booster_params(),
            data,
            num_boost_round=total,
            callbacks=[RoundReporter(progress, total)],
            verbose_eval=False,
            **stopping,
        )
        if stopping:
            # xgb.train returns the last round's model: keep the best round's trees only.
            booster = booster[: booster.best_iteration + 1]
        self.booster = booster

    def _predict(self, X: np.ndarray) -> np.ndarray:
        assert self.booster is not None
        return self.booster.inplace_predict(X)

    def _importance(self) -> np.ndarray:
        assert self.booster is not None
        gains = self.booster.get_score(importance_type="total_gain")  # features never split on are absent
        return np.array(
            [gains.get(name, 0.0) for name in positional_names(len(self.features))], dtype=np.float64
        )

    def _save_fitted(self, folder: Path) -> dict[str, Any]:
        assert self.booster is not None
        write_atomic(folder / self.files[0], bytes(self.booster.save_raw(raw_format="ubj")))
        return {
            "file": self.files[0],
            "rounds": self.booster.num_boosted_rounds(),
            "xgboost_version": xgb.__version__,
        }

    def _load_fitted(self, folder: Path, state: dict[str, Any]) -> None:
        path = folder / self.files[0]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the saved model is incomplete")
        self.booster = xgb.Booster(
            params={"nthread": self.cfg.n_jobs}, model_file=bytearray(path.read_bytes())
        )
