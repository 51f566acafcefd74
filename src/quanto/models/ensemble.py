"""Ensembles: member models fitted per fold and combined by equal weights, stacking or Sharpe weights.

An ensemble is itself a `base.Model` (family "ensemble", built from `model.ensemble`), so the
walk-forward predicts, saves and loads it like any other model; each member is saved in its own
subfolder `member-<i>/` and read back with `load_model`.

- mean: the average of the members' predictions.
- stacking: a ridge (regression) or L2-logistic (classification) meta-model on the members'
  predictions for the validation window, standardized with their validation mean and spread. Those
  predictions are out of sample (the members never trained on the validation rows), so the
  meta-model learns how the members generalize, not how well they fit.
- sharpe: weights >= 0, summing to 1, each <= `max_weight`, that maximize the Sharpe ratio of the
  weighted signal on the validation window (SLSQP from equal weights). The signal is the weighted
  prediction (classification: P(class 1) - 0.5); it earns signal x forward return on each row
  (`tuning.realized_returns`), and a period's PnL is the mean over the symbols at that timestamp,
  as in the walk-forward's Sharpe ratio. The signal stays continuous (not its sign) so that the PnL
  is linear in the weights.

Mean and Sharpe weights are a convex combination, so a classifier ensemble still predicts a
probability. `n_trials` of the fold is the sum of the members' (a tuned member counts its trials).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from quanto.config.models import ModelConfig
from quanto.models.base import (
    ENSEMBLE_FAMILY,
    Design,
    Model,
    Progress,
    load_model,
    normalized_importance,
    one_class_note,
    register_family,
)
from quanto.models.selection import FoldFit, fit_fold, require_valid
from quanto.models.tuning import DIRECTION, realized_returns, validation_metrics, validation_score


@register_family
class EnsembleModel(Model):
    """Members fitted on the same training rows, combined as `model.ensemble.method` says."""

    family = ENSEMBLE_FAMILY

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.spec = cfg.ensemble
        self.members: list[Model] = []
        self.weights: np.ndarray | None = None  # mean, sharpe (and stacking's one-class fallback)
        self.stack: dict[str, Any] | None = None  # stacking: center, scale, coef, intercept
        self.n_trials = 0
        self.leaderboard: list[dict[str, Any]] = []

    @property
    def params(self) -> dict[str, Any]:
        """The combination method and the members' families (`model.params` is not used)."""
        return {"method": self.spec.method, "members": [m.family for m in self.members]}

    def fit(
        self,
        design: Design,
        rows: np.ndarray,
        y: np.ndarray,
        *,
        valid: tuple[np.ndarray, np.ndarray] | None = None,
        progress: Progress | None = None,
        checkpoint: Path | None = None,
    ) -> EnsembleModel:
        """Fit every member with `fit_fold` on (rows, y) (validation window as `valid`; checkpoints
        in `checkpoint/member-<i>`), then the combination on the validation window (mean needs none)."""
        spec = self.spec
        if spec.method != "mean":
            valid = require_valid(valid, f"model.ensemble (method {spec.method})")
        fits: list[FoldFit] = []
        for i, member in enumerate(spec.members):
            fits.append(
                fit_fold(
                    member,
                    design,
                    (rows, y),
                    valid,
                    progress=_tagged(progress, i, len(spec.members)),
                    checkpoint=Path(checkpoint) / f"member-{i}" if checkpoint is not None else None,
                )
            )
        self.members = [f.model for f in fits]
        self.features = list(design.columns)
        self.n_trials = sum(f.n_trials for f in fits)
        notes = [f"member {i}: {m.note}" for i, m in enumerate(self.members) if m.note]

        preds = self._member_predictions(design, valid[0]) if valid is not None else None
        k = len(self.members)
        self.weights, self.stack = np.full(k, 1.0 / k), None
        if spec.method == "sharpe":
            self.weights = sharpe_weights(_member_pnl(design, valid, preds, self.objective), spec.max_weight)
        elif spec.method == "stacking":
            fallback = one_class_note(self.objective, valid[1])
            if fallback:
                notes.append(f"stacking fell back to equal weights: the validation {fallback}")
            else:
                self.stack, self.weights = _fit_stack(self.objective, preds, valid[1], spec.meta_alpha), None
        self.note = "; ".join(notes) or None
        self.leaderboard = self._leaderboard(design, fits, preds, valid)
        return self

    def predict(self, design: Design, rows: np.ndarray) -> np.ndarray:
        """The combined prediction (see the module docstring)."""
        return self._combine(self._member_predictions(design, rows))

    def feature_importance(self) -> dict[str, float]:
        """The members' importances weighted by their share in the combination (stacking: the
        absolute standardized coefficients)."""
        shares = self._shares()
        total = np.zeros(len(self.features))
        for share, member in zip(shares, self.members, strict=True):
            importance = member.feature_importance()
            total += share * np.array([importance.get(f, 0.0) for f in self.features])
        return normalized_importance(self.features, total)

    def save(self, folder: Path) -> list[Path]:
        """Write the members into `member-<i>/` subfolders, then the ensemble's meta.json; returns
        every file written, the members' included."""
        super().save(folder)
        return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))

    def _save_state(self, folder: Path) -> dict[str, Any]:
        names = [f"member-{i}" for i in range(len(self.members))]
        for name, member in zip(names, self.members, strict=True):
            member.save(folder / name)
        return {
            "members": names,
            "weights": None if self.weights is None else [float(w) for w in self.weights],
            "stack": self.stack,
            "n_trials": self.n_trials,
        }

    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.members = [load_model(folder / name) for name in state["members"]]
        self.weights = None if state["weights"] is None else np.asarray(state["weights"], dtype=np.float64)
        self.stack = state["stack"]
        self.n_trials = int(state.get("n_trials", 0))

    def _member_predictions(self, design: Design, rows: np.ndarray) -> np.ndarray:
        if not self.members:
            raise ValueError("the ensemble is not fitted")
        return np.column_stack([m.predict(design, rows) for m in self.members])

    def _combine(self, preds: np.ndarray) -> np.ndarray:
        if self.stack is None:
            return preds @ self.weights
        z = (preds - np.asarray(self.stack["center"])) / np.asarray(self.stack["scale"])
        score = z @ np.asarray(self.stack["coef"]) + float(self.stack["intercept"])
        return expit(score) if self.objective == "classification" else score

    def _shares(self) -> np.ndarray:
        if self.stack is None:
            return self.weights
        coef = np.abs(np.asarray(self.stack["coef"], dtype=np.float64))
        return coef / coef.sum() if coef.sum() > 0 else np.full(len(coef), 1.0 / len(coef))

    def _leaderboard(
        self,
        design: Design,
        fits: list[FoldFit],
        preds: np.ndarray | None,
        valid: tuple[np.ndarray, np.ndarray] | None,
    ) -> list[dict[str, Any]]:
        metric = self.spec.metric
        shares = self._shares()
        board = []
        for i, (fit, share) in enumerate(zip(fits, shares, strict=True)):
            metrics = {"n": 0, "sharpe": None}
            if preds is not None:
                metrics = validation_metrics(design, valid[0], valid[1], preds[:, i], self.objective)
            board.append(
                {
                    "member": i,
                    "family": fit.model.family,
                    "params": fit.model.params,
                    "metric": metric,
                    "score": validation_score(metric, metrics) if metrics["n"] else None,
                    "sharpe": metrics["sharpe"],
                    "weight": float(share),
                    "n_trials": fit.n_trials,
                }
            )
        sign = -1.0 if DIRECTION[metric] == "maximize" else 1.0
        return sorted(board, key=lambda e: (e["score"] is None, sign * (e["score"] or 0.0), e["member"]))


def fit_ensemble(
    cfg: ModelConfig,
    design: Design,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray] | None,
    *,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
) -> FoldFit:
    """Fit the ensemble of `cfg.ensemble` for one fold: the model, the members' trial count summed,
    and one leaderboard row per member (family, params, validation score, weight, n_trials)."""
    rows, y = train
    model = EnsembleModel(cfg).fit(design, rows, y, valid=valid, progress=progress, checkpoint=checkpoint)
    return FoldFit(model=model, n_trials=model.n_trials, leaderboard=model.leaderboard)


def sharpe_weights(pnl: np.ndarray, max_weight: float) -> np.ndarray:
    """Weights w (w >= 0, sum 1, each <= `max_weight`) maximizing the Sharpe ratio (mean / standard
    deviation over periods) of `pnl @ w`, where `pnl` is (periods, members): what each member's
    signal earned per period. Equal weights when no weighting has a PnL spread (or the optimizer
    finds nothing better)."""
    pnl = np.asarray(pnl, dtype=np.float64)
    k = pnl.shape[1]
    if max_weight * k < 1:
        raise ValueError(f"max_weight {max_weight} x {k} members < 1: the weights cannot sum to 1")
    pnl = pnl[np.isfinite(pnl).all(axis=1)]
    equal = np.full(k, 1.0 / k)
    if len(pnl) < 2:
        return equal
    mean, cov = pnl.mean(axis=0), np.atleast_2d(np.cov(pnl, rowvar=False))

    def neg_sharpe(w: np.ndarray) -> float:
        var = float(w @ cov @ w)
        return -float(mean @ w) / np.sqrt(var) if var > 1e-300 else 0.0

    result = minimize(
        neg_sharpe,
        equal,
        method="SLSQP",
        bounds=[(0.0, max_weight)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    # SLSQP meets bounds and the sum only to its tolerance: clip, renormalize, keep it if it helps.
    w = np.clip(result.x, 0.0, max_weight)
    w = w / w.sum() if w.sum() > 0 else equal
    return w if np.isfinite(w).all() and neg_sharpe(w) < neg_sharpe(equal) else equal


def _member_pnl(
    design: Design, valid: tuple[np.ndarray, np.ndarray], preds: np.ndarray, objective: str
) -> np.ndarray:
    """(periods, members): per validation timestamp, the mean over its rows of each member's
    continuous signal x forward return (rows where any member or the return is not finite are left
    out, so every member is judged on the same rows)."""
    rows, y = valid
    returns = realized_returns(design, rows, y, objective)
    signal = preds - 0.5 if objective == "classification" else preds
    ok = np.isfinite(signal).all(axis=1) & np.isfinite(returns)
    earned = pd.DataFrame(signal[ok] * returns[ok, None])
    ts = design.frame["ts"].to_numpy()[np.asarray(rows, dtype=np.int64)][ok]
    return earned.groupby(ts, sort=True).mean().to_numpy(dtype=np.float64)


def _fit_stack(objective: str, preds: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, Any]:
    """Meta-model on validation predictions (rows with every member's prediction finite)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    ok = np.isfinite(preds).all(axis=1)
    if ok.sum() < 2:
        raise ValueError(f"stacking needs validation rows that every member predicts; {int(ok.sum())} do")
    x, t = preds[ok], y[ok]
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant member gets coefficient 0 either way
    z = (x - center) / scale
    if objective == "classification":
        meta = LogisticRegression(C=1.0 / alpha, max_iter=1000).fit(z, t)
        coef, intercept = meta.coef_[0], float(meta.intercept_[0])
    else:
        meta = Ridge(alpha=alpha).fit(z, t)
        coef, intercept = meta.coef_, float(meta.intercept_)
    return {
        "center": [float(v) for v in center],
        "scale": [float(v) for v in scale],
        "coef": [float(v) for v in coef],
        "intercept": intercept,
    }


def _tagged(progress: Progress | None, member: int, members: int) -> Progress | None:
    if progress is None:
        return None
    return lambda info: progress({**info, "member": member, "members": members})
