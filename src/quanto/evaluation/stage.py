"""The walk-forward stage: out-of-sample predictions fold by fold, checkpointed so a retry resumes.

Each finished fold's predictions are written to scratch/ under the stage key and reported in the
activity heartbeat; a retried attempt reads the heartbeat details and reuses the folds listed there.
"""

from __future__ import annotations

import pandas as pd

from quanto.config.models import PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.models.training import load_dataset


def _checkpoint(key: str, fold: int) -> str:
    return f"scratch/walk_forward/{key[:16]}/fold-{fold:04d}.parquet"


def run_walk_forward(req: StageRequest, ctx: StageContext) -> StageResult:
    """Walk-forward train/predict over the configured windows; every prediction is out of sample."""
    from quanto.evaluation.walkforward import make_folds, walk_forward

    cfg = PipelineConfig.model_validate(req.config)
    feat_refs = req.inputs["features"].files("features")
    label_refs = req.inputs["labels"].files("labels")
    stage_cfg = {
        "model": cfg.model.model_dump(mode="json"),
        "walk_forward": cfg.walk_forward.model_dump(mode="json"),
    }

    def compute(key: str) -> Materialized:
        data, columns = load_dataset(ctx.lake, feat_refs, label_refs)
        folds = make_folds(pd.DatetimeIndex(data["ts"].drop_duplicates().sort_values()), cfg.walk_forward)
        finished = list((ctx.resume or {}).get("folds_done", []))
        done: dict[int, pd.DataFrame] = {}
        for i in finished:
            path = ctx.lake.abspath(_checkpoint(key, i))
            if path.is_file():
                done[i] = pd.read_parquet(path)
        infos: dict[int, dict] = {}

        def on_fold(index: int, preds: pd.DataFrame, info: dict) -> None:
            ctx.lake.write_checkpoint(_checkpoint(key, index), preds)
            finished.append(index)
            infos[index] = info
            ctx.heartbeat_details = {"folds_done": sorted(set(finished))}  # before the beat that sends it
            ctx.progress(len(finished), len(folds), f"fold {index}")

        ctx.heartbeat_details = {"folds_done": sorted(done)}
        predictions, fold_table = walk_forward(
            data, columns, cfg.model, cfg.model.objective, folds, done=done, on_fold=on_fold
        )
        ref = ctx.lake.write_frame(f"gold/predictions/{key[:16]}", predictions, role="predictions")
        return Materialized(
            [ref],
            counters={"folds": len(folds), "folds_resumed": len(done), "predictions": len(predictions)},
            summary={"folds": fold_table, "objective": cfg.model.objective},
        )

    return materialize("walk_forward", ctx, feat_refs + label_refs, stage_cfg, compute)
