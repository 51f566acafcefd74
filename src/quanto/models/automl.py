"""AutoML: one seeded Optuna search across model families and their hyperparameters per fold.

Each trial draws a family from `model.automl.families` (a categorical dimension of the study) and
then that family's parameters from its space, so TPE learns which families and which regions score
well on the validation window. Scoring, pruning, budget and leaderboard are `tuning.search`'s.
"""

from __future__ import annotations

import numpy as np
import optuna

from quanto.config.models import ModelConfig
from quanto.models.base import Design, Progress
from quanto.models.selection import FoldFit
from quanto.models.tuning import Candidate, sample, search


def automl(
    cfg: ModelConfig,
    design: Design,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray] | None,
    *,
    progress: Progress | None = None,
) -> FoldFit:
    """Search `cfg.automl.families` (each with its space and fixed `params`) under the trial and
    time budget; candidates get `cfg.objective`, `cfg.seed` and `cfg.n_jobs`. Returns the best
    trial's model, the number of trials evaluated and the leaderboard (family, params, score,
    fit_s, ...), best first."""
    settings = cfg.automl
    if settings is None:
        raise ValueError("automl needs a model config with an automl block")

    def propose(trial: optuna.Trial) -> Candidate:
        family = trial.suggest_categorical("family", settings.families)
        values = sample(trial, family, settings.space_for(family), prefix=f"{family}.")
        candidate = ModelConfig(
            kind=family,
            objective=cfg.objective,
            params={**settings.params.get(family, {}), **values},
            seed=cfg.seed,
            n_jobs=cfg.n_jobs,
        )
        return Candidate(cfg=candidate, family=family, params=values)

    return search(
        settings,
        cfg.objective,
        cfg.seed,
        propose,
        design,
        train,
        valid,
        what="model.automl",
        progress=progress,
    )
