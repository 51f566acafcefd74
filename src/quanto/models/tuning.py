"""Hyperparameter search on a fold's validation window: Optuna's TPE sampler, seeded, with pruning.

A trial proposes a configuration, fits it on the fold's training rows (the validation rows go to the
family as `valid`, for early stopping only) and is scored on the validation rows; nothing is ever
trained on them. The best trial's model is the fold's model: it already is the refit of the best
configuration on the training rows (fits are seeded, so fitting it again would give the same
model), and validation rows are not added to it, so the fold's test window stays the only data
neither the search nor the fit has seen.

Scores are the walk-forward's own metrics (`quanto.evaluation.metrics`) on the validation window, so
a search optimizes what the report shows: ic (Pearson correlation of prediction and forward return),
rank_ic (Spearman), sharpe (of the simulated sign signal, per period), mse (classification: Brier
score), auc, accuracy. Forward returns come from the design's `fwd_return` column (see
`realized_returns`).

Pruning uses what a family reports through `progress`: the torch families report `val_loss` every
epoch, and a trial whose validation loss falls behind the other trials' at the same epoch (median
rule, or successive halving) is stopped. The tree and linear families report no validation loss
while they fit, so their trials are scored once, at the end, and never pruned; their cost is bounded
by their size parameters and `early_stopping_rounds` instead.

Determinism: the sampler is seeded with `model.seed` and trials run one after another, so a rerun
with the same data proposes the same configurations and picks the same model, unless `timeout_s`
ends the search (then the trial count depends on the machine's speed).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from quanto.config.model_params import SearchDim, integer_param
from quanto.config.models import Metric, ModelConfig, SearchConfig
from quanto.evaluation.metrics import prediction_metrics
from quanto.models.base import Design, Model, Objective, Progress, make_model
from quanto.models.selection import FoldFit, require_valid

log = logging.getLogger(__name__)

# Optuna logs every trial at INFO; the leaderboard already records them.
optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRECTION: dict[str, str] = {
    "ic": "maximize",
    "rank_ic": "maximize",
    "sharpe": "maximize",
    "auc": "maximize",
    "accuracy": "maximize",
    "mse": "minimize",
}
# What an undefined score counts as: no skill (a constant side, one class, fewer than 2 periods).
CHANCE: dict[str, float] = {"ic": 0.0, "rank_ic": 0.0, "sharpe": 0.0, "auc": 0.5}


def realized_returns(design: Design, rows: np.ndarray, y: np.ndarray, objective: Objective) -> np.ndarray:
    """What a position on each of `rows` earned: the design frame's `fwd_return` column (the labels
    table's forward return) when it has one; otherwise the label itself for a regression, and +1 / -1
    for a class-1 / class-0 label."""
    if "fwd_return" in design.frame.columns:
        return design.frame["fwd_return"].to_numpy(dtype=np.float64)[np.asarray(rows, dtype=np.int64)]
    y = np.asarray(y, dtype=np.float64)
    return np.where(y == 1, 1.0, -1.0) if objective == "classification" else y


def validation_metrics(
    design: Design, rows: np.ndarray, y: np.ndarray, pred: np.ndarray, objective: Objective
) -> dict[str, Any]:
    """The walk-forward's own metrics (`quanto.evaluation.metrics.prediction_metrics`) of `pred` on
    the validation `rows` with labels `y`, forward returns from `realized_returns`, and the Sharpe
    ratio per period (not annualized), on the rows with a finite prediction."""
    rows = np.asarray(rows, dtype=np.int64)
    ts = design.frame["ts"].to_numpy()[rows]
    returns = realized_returns(design, rows, y, objective)
    return prediction_metrics(pred, y, returns, ts, objective, periods_per_year=1.0)


def validation_score(metric: Metric, metrics: dict[str, Any]) -> float:
    """`metrics[metric]` (see `validation_metrics`); an undefined value counts as chance (`CHANCE`).
    ValueError when no row has a finite prediction, label and forward return."""
    if not metrics["n"]:
        raise ValueError("no validation row has a finite prediction, label and forward return")
    value = metrics[metric]
    return float(CHANCE[metric] if value is None else value)


def better(metric: Metric, score: float, than: float | None) -> bool:
    """Whether `score` beats `than` (None: nothing yet) under `metric`'s direction."""
    if than is None:
        return True
    return score < than if DIRECTION[metric] == "minimize" else score > than


def sample(trial: optuna.Trial, kind: str, space: dict[str, SearchDim], prefix: str = "") -> dict[str, Any]:
    """Draw one value per dimension of `space` for family `kind`; Optuna records each under
    `prefix + name` (AutoML prefixes the family, so families never share a distribution)."""
    values: dict[str, Any] = {}
    for name, dim in space.items():
        key = prefix + name
        if dim.choices is not None:
            values[name] = trial.suggest_categorical(key, dim.choices)
        elif integer_param(kind, name):
            values[name] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[name] = trial.suggest_float(key, float(dim.low), float(dim.high), log=dim.log)
    return values


@dataclass(frozen=True)
class Candidate:
    """What a trial fits: the full model config, and the values the search chose (leaderboard)."""

    cfg: ModelConfig
    family: str
    params: dict[str, Any]


Propose = Callable[[optuna.Trial], Candidate]


def search(
    settings: SearchConfig,
    objective: Objective,
    seed: int,
    propose: Propose,
    design: Design,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray] | None,
    *,
    what: str,
    progress: Progress | None = None,
) -> FoldFit:
    """Run a seeded Optuna study whose trials fit `propose(trial)` on `train` and score it on
    `valid` with `settings.metric`; return the best trial's model, the number of trials evaluated
    (complete and pruned) and the leaderboard (complete trials best first, then pruned, then failed:
    trial, family, params, metric, score, sharpe (per period, on the validation window: the
    deflated Sharpe ratio takes the trials' spread from it), state, fit_s, and the last reported
    epoch or the error).

    A candidate whose config or fit raises ValueError (e.g. a parameter combination the family
    refuses) fails its trial and the search goes on; when no trial completes, ValueError. `what`
    names the config block in messages.
    """
    rows, y = train
    valid = require_valid(valid, what)
    valid_rows, valid_y = valid
    metric = settings.metric
    maximize = DIRECTION[metric] == "maximize"
    study = optuna.create_study(
        direction=DIRECTION[metric],
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials),
        pruner=_pruner(settings),
    )
    entries: list[dict[str, Any]] = []
    best: dict[str, Any] = {"model": None, "score": None}

    def run_trial(trial: optuna.Trial) -> float:
        entry: dict[str, Any] = {"trial": trial.number, "family": None, "params": {}, "metric": metric}
        entry.update(score=None, sharpe=None, state="failed", fit_s=None)
        entries.append(entry)
        if progress is not None:
            progress({"trial": trial.number, "trials": settings.n_trials})
        start = time.perf_counter()
        try:
            candidate = propose(trial)
            entry.update(family=candidate.family, params=candidate.params)
            model = make_model(candidate.cfg).fit(
                design, rows, y, valid=valid, progress=_reporter(trial, entry, maximize, settings, progress)
            )
            metrics = validation_metrics(
                design, valid_rows, valid_y, model.predict(design, valid_rows), objective
            )
            score = validation_score(metric, metrics)
        except optuna.TrialPruned:
            entry["state"] = "pruned"
            raise
        except ValueError as err:
            entry["error"] = str(err)
            raise
        finally:
            entry["fit_s"] = round(time.perf_counter() - start, 4)
        entry.update(score=score, sharpe=metrics["sharpe"], state="complete")
        if better(metric, score, best["score"]):
            best.update(model=model, score=score)
        return score

    study.optimize(run_trial, n_trials=settings.n_trials, timeout=settings.timeout_s, catch=(ValueError,))
    model: Model | None = best["model"]
    if model is None:
        errors = [e["error"] for e in entries if "error" in e]
        raise ValueError(
            f"{what}: none of {len(entries)} trials completed"
            + (f"; the first failed with: {errors[0]}" if errors else " (all were pruned)")
        )
    n_trials = sum(e["state"] in ("complete", "pruned") for e in entries)
    log.info(
        "search done: %s trials (%s pruned), best %s %.6g",
        n_trials,
        sum(e["state"] == "pruned" for e in entries),
        metric,
        best["score"],
    )
    return FoldFit(model=model, n_trials=n_trials, leaderboard=_ranked(entries, maximize))


def tune(
    cfg: ModelConfig,
    design: Design,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray] | None,
    *,
    progress: Progress | None = None,
) -> FoldFit:
    """Search `cfg.tuning.space` (default: the family's) for family `cfg.kind`, the parameters not
    searched as in `cfg.params`; see `search`. The winner's config has no `tuning` block."""
    settings = cfg.tuning
    if settings is None:
        raise ValueError("tune needs a model config with a tuning block")
    space = settings.space_for(cfg.kind)
    fixed = cfg.model_dump(mode="json", exclude={"tuning"})

    def propose(trial: optuna.Trial) -> Candidate:
        values = sample(trial, cfg.kind, space)
        trial_cfg = ModelConfig.model_validate({**fixed, "params": {**cfg.params, **values}})
        return Candidate(cfg=trial_cfg, family=cfg.kind, params=values)

    return search(
        settings,
        cfg.objective,
        cfg.seed,
        propose,
        design,
        train,
        valid,
        what="model.tuning",
        progress=progress,
    )


def _pruner(settings: SearchConfig) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.n_warmup_steps
        )
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, settings.n_warmup_steps))
    return optuna.pruners.NopPruner()


def _reporter(
    trial: optuna.Trial,
    entry: dict[str, Any],
    maximize: bool,
    settings: SearchConfig,
    progress: Progress | None,
) -> Progress:
    """The `progress` a trial's fit gets: forwards to the caller's (tagged with the trial) and turns
    a reported `val_loss` into an intermediate value for the pruner."""

    def report(info: dict[str, Any]) -> None:
        if progress is not None:
            progress({**info, "trial": trial.number, "trials": settings.n_trials})
        loss, step = info.get("val_loss"), info.get("step")
        if loss is None or step is None or not math.isfinite(float(loss)):
            return
        # A loss is lower-better; the study's direction follows the metric, so flip it to match.
        trial.report(-float(loss) if maximize else float(loss), int(step))
        entry["step"] = int(step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned at epoch {step}")

    return report


def _ranked(entries: list[dict[str, Any]], maximize: bool) -> list[dict[str, Any]]:
    order = {"complete": 0, "pruned": 1, "failed": 2}

    def key(e: dict[str, Any]) -> tuple[int, float, int]:
        score = e["score"] if e["score"] is not None else 0.0
        return order[e["state"]], -score if maximize else score, e["trial"]

    return sorted(entries, key=key)
