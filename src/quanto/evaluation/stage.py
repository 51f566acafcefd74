"""The walk-forward stage's evaluation: the stage config (its key), the dataset as a Design, and
`summarize`, which turns the folds' outcomes into the stitched out-of-sample predictions and the
honest summary (metrics, baselines, canary, PSR/DSR). The folds themselves run in
`quanto.evaluation.training` (in process, or as TrainingWorkflow's activities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from quanto.config.models import PipelineConfig
from quanto.contracts import FileRef
from quanto.evaluation import canary
from quanto.evaluation.baselines import BASELINES
from quanto.evaluation.metrics import prediction_metrics, signal_returns
from quanto.evaluation.statistics import sharpe_statistics
from quanto.evaluation.walkforward import (
    BASELINE_PREFIX,
    Fold,
    FoldOutcome,
    bars_per_year,
    cpcv_paths,
    stitch,
    stitch_path,
)
from quanto.lake.storage import Lake
from quanto.models.base import Design

# Keys of a fold's info that the report's fold table shows (metrics follow), in column order.
FOLD_TABLE_KEYS = (
    "index",
    "train_start",
    "train_end",
    "valid_start",
    "valid_end",
    "test_start",
    "test_end",
    "groups",
    "n_train",
    "n_valid",
    "n_test",
    "n_trials",
    "note",
)

# What the summary keeps of each fold's baselines and canary (the fold infos hold everything): enough
# to compare, small enough that a summary of hundreds of folds stays a light workflow payload.
FOLD_SUMMARY_KEYS = ("accuracy", "rank_ic", "sharpe")
CANARY_SUMMARY_KEYS = ("bars", "shifts", "rank_ic", "z_ic", "accuracy", "z_accuracy")


def stage_config(cfg: PipelineConfig) -> dict[str, Any]:
    """What the stage's output depends on besides its input files (its key is built from it)."""
    return {
        "model": cfg.model.model_dump(mode="json"),
        "walk_forward": cfg.walk_forward.model_dump(mode="json"),
        "evaluation": cfg.evaluation.model_dump(mode="json"),
        "bars_per_year": bars_per_year(cfg),
    }


def load_design(lake: Lake, features: list[FileRef], labels: list[FileRef]) -> Design:
    """The features + labels dataset as a `Design` (frame sorted by (symbol, ts), feature columns)."""
    from quanto.models.training import load_dataset

    data, columns = load_dataset(lake, features, labels)
    return Design(data, columns)


def fold_row(info: dict[str, Any]) -> dict[str, Any]:
    """A fold's row in the report's fold table: bounds, sizes, note, then its metrics."""
    row = {k: info.get(k) for k in FOLD_TABLE_KEYS if k in info}
    if "groups" in row:
        row["groups"] = ", ".join(str(g) for g in row["groups"])
    return {**row, **info["metrics"]}


@dataclass
class Evaluation:
    """What `summarize` returns: the stitched out-of-sample predictions (the backtest's input), the
    stage summary, and further frames by role (cpcv: `path_predictions`, every path with a `path`
    column)."""

    predictions: pd.DataFrame
    summary: dict[str, Any]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def _trial_sharpe_var(infos: list[dict[str, Any]]) -> float | None:
    # Each fold's variance of its candidates' Sharpe ratios, pooled with weights n - 1.
    parts = [i["trial_sharpes"] for i in infos if i.get("trial_sharpes")]
    weights = sum(p["n"] - 1 for p in parts)
    return sum(p["var"] * (p["n"] - 1) for p in parts) / weights if weights > 0 else None


def _overall(frame: pd.DataFrame, column: str, objective: str, ppy: float) -> dict[str, Any]:
    return prediction_metrics(
        frame[column], frame["label"], frame["fwd_return"], frame["ts"].to_numpy(), objective, ppy
    )


def summarize(
    cfg: PipelineConfig,
    folds: list[Fold],
    outcomes: list[FoldOutcome],
    n_trials: int | None = None,
) -> Evaluation:
    """Stitch the folds' predictions and evaluate them.

    Summary keys: objective; scheme; stitched (what the backtest series is); folds (`fold_row` per
    fold: the report's table); metrics (the stitched series' `prediction_metrics`); baselines
    ({name: metrics} on the same rows); fold_baselines ([{index, name: {accuracy, rank_ic, sharpe}}]);
    canary (`canary.verdict` plus per_fold: bars, shifts, rank_ic, z_ic, accuracy, z_accuracy; None
    with evaluation.canary off); statistics (PSR/DSR of the stitched signal, `sharpe_statistics`);
    leaderboards ([{index, rows}] of folds that searched); paths (cpcv: [{path, **metrics}]).
    `n_trials` overrides the trial count (default: the sum of the folds' n_trials, i.e. every
    configuration every fold fitted, searched or not).
    """
    if len(folds) != len(outcomes):
        raise ValueError(f"{len(folds)} folds but {len(outcomes)} outcomes")
    if not outcomes:
        raise ValueError("no folds to summarize")
    objective = cfg.model.objective
    infos = [o.info for o in outcomes]
    parts = [o.predictions for o in outcomes]
    ppy = float(infos[0]["periods_per_year"])
    summary: dict[str, Any] = {"objective": objective, "scheme": cfg.walk_forward.scheme}
    frames: dict[str, pd.DataFrame] = {}

    if cfg.walk_forward.scheme == "cpcv":
        n_paths = len(cpcv_paths(folds))
        paths = [stitch_path(parts, folds, j) for j in range(n_paths)]
        predictions = paths[0]
        frames["path_predictions"] = pd.concat(
            [p.assign(path=j) for j, p in enumerate(paths)], ignore_index=True
        )
        summary["stitched"] = f"cpcv path 0 of {n_paths}"
        summary["paths"] = [
            {"path": j, **_overall(p, "prediction", objective, ppy)} for j, p in enumerate(paths)
        ]
    else:
        predictions = stitch(parts)
        summary["stitched"] = "folds in order; the latest fold wins where test windows overlap"

    summary["folds"] = [fold_row(i) for i in infos]
    summary["metrics"] = _overall(predictions, "prediction", objective, ppy)
    summary["baselines"] = {
        name: _overall(predictions, f"{BASELINE_PREFIX}{name}", objective, ppy)
        for name in BASELINES
        if f"{BASELINE_PREFIX}{name}" in predictions.columns
    }
    summary["fold_baselines"] = [
        {
            "index": i["index"],
            **{name: {k: m[k] for k in FOLD_SUMMARY_KEYS} for name, m in i["baselines"].items()},
        }
        for i in infos
    ]
    summary["prev_return_source"] = infos[0].get("prev_return_source")

    stats = [i.get("canary") for i in infos]
    if cfg.evaluation.canary and all(s is not None for s in stats):
        summary["canary"] = {
            **canary.verdict(stats, cfg.evaluation.canary_alpha),
            "per_fold": [
                {"index": i["index"], **{k: i["canary"][k] for k in CANARY_SUMMARY_KEYS}} for i in infos
            ],
        }
    else:
        summary["canary"] = None

    trials = n_trials if n_trials is not None else sum(int(i.get("n_trials", 1)) for i in infos)
    returns = signal_returns(
        predictions["prediction"], predictions["fwd_return"], predictions["ts"].to_numpy(), objective
    )
    summary["statistics"] = sharpe_statistics(returns, max(1, trials), _trial_sharpe_var(infos), ppy)
    summary["leaderboards"] = [
        {"index": i["index"], "rows": i["leaderboard"]}
        for i in infos
        if i.get("n_trials", 1) > 1 and i.get("leaderboard")
    ]
    return Evaluation(predictions, summary, frames)
