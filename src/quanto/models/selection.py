"""What one walk-forward fold trains: the configured model, or (with tuning, AutoML or an ensemble
configured) the winner of a search scored on the fold's validation window only.

`fit_fold` is the single entry point the walk-forward and the train stage call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quanto.config.models import ModelConfig
from quanto.models.base import Design, Model, Progress, make_model


@dataclass
class FoldFit:
    """A fitted predictor for one fold and how it was chosen.

    `model` predicts the fold's test rows. `n_trials` counts every configuration evaluated (1 without
    a search): the deflated Sharpe ratio needs it. `leaderboard` lists the evaluated candidates,
    best first, as plain dicts (family, params, validation score, ...).
    """

    model: Model
    n_trials: int = 1
    leaderboard: list[dict[str, Any]] = field(default_factory=list)


def fit_fold(
    cfg: ModelConfig,
    design: Design,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
) -> FoldFit:
    """Fit the fold's model on `train` = (rows, y); `valid` = (rows, y) is for early stopping and
    model selection only, never trained on.

    With `cfg.tuning` or `cfg.automl`, a seeded Optuna search picks the configuration whose model
    scores best on `valid` (see `quanto.models.tuning`); with `cfg.ensemble`, the members are fitted
    (each through `fit_fold`) and combined (see `quanto.models.ensemble`). `checkpoint` reaches the
    fits that can resume from it: the plain model's, and each ensemble member's; a search restarts.
    """
    # Imported here: Optuna and SciPy's optimizer load only for folds that use them.
    if cfg.tuning is not None:
        from quanto.models.tuning import tune

        return tune(cfg, design, train, valid, progress=progress)
    if cfg.automl is not None:
        from quanto.models.automl import automl

        return automl(cfg, design, train, valid, progress=progress)
    if cfg.ensemble is not None:
        from quanto.models.ensemble import fit_ensemble

        return fit_ensemble(cfg, design, train, valid, progress=progress, checkpoint=checkpoint)
    rows, y = train
    model = make_model(cfg).fit(design, rows, y, valid=valid, progress=progress, checkpoint=checkpoint)
    return FoldFit(model=model)


def require_valid(valid: tuple[np.ndarray, np.ndarray] | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`valid` when it holds rows; otherwise a ValueError saying that `what` (e.g. "model.tuning")
    scores on the validation window and how to get one."""
    if valid is None or len(valid[0]) == 0:
        raise ValueError(
            f"{what} scores candidates on the fold's validation window only, and this fold has none "
            "(or no labelled rows in it): set walk_forward.valid_bars > 0"
        )
    rows, y = valid
    if len(rows) != len(y):
        raise ValueError(f"validation window: {len(rows)} rows but {len(y)} labels")
    return np.asarray(rows, dtype=np.int64), np.asarray(y, dtype=np.float64)
