"""The walk-forward stage in three steps: plan the folds, train each fold, finalize.

TrainingWorkflow runs each step as an activity (one per fold, spread over training workers);
`run_walk_forward` (the in-process pipeline, notebooks) runs the same three in a loop. A fold writes its
predictions and its info under the stage key in scratch/; the info JSON is written last, so a fold
whose two files exist is finished, and a retry (a killed worker, a rerun) reuses it instead of
training again. An interrupted fit resumes from its own checkpoint (torch: the last epoch).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from quanto.config.models import PipelineConfig
from quanto.contracts import FileRef, FoldResult, StageRequest, StageResult, TrainingPlan
from quanto.errors import InputError
from quanto.lake.materialize import Materialized, StageContext, load_manifest, materialize, stage_key
from quanto.lake.storage import sha256_file

STAGE = "walk_forward"


def _refs(req: StageRequest) -> tuple[list[FileRef], list[FileRef]]:
    return req.inputs["features"].files("features"), req.inputs["labels"].files("labels")


def _fold_files(key: str, index: int) -> tuple[str, str]:
    base = f"scratch/walk_forward/{key[:16]}/fold-{index:04d}"
    return f"{base}.parquet", f"{base}.json"


def _fits_folder(key: str, index: int) -> str:
    return f"scratch/walk_forward/{key[:16]}/fits/fold-{index:04d}"


def plan_training(req: StageRequest, ctx: StageContext) -> TrainingPlan:
    """The stage key and its folds (`Fold.to_dict`), or the stored result when an identical run
    (same inputs, config and code) already materialized the stage."""
    from quanto.evaluation.stage import stage_config
    from quanto.evaluation.walkforward import plan_folds

    cfg = PipelineConfig.model_validate(req.config)
    feat_refs, label_refs = _refs(req)
    inputs, config = feat_refs + label_refs, stage_config(cfg)
    key = stage_key(STAGE, inputs, config)
    if load_manifest(ctx.lake, STAGE, key) is not None:
        return TrainingPlan(key=key, result=materialize(STAGE, ctx, inputs, config, _never))
    # The rows a model sees are those with both features and labels; their timestamps set the folds.
    keys = ["symbol", "ts"]
    rows = ctx.lake.read_frame(feat_refs, columns=keys).merge(
        ctx.lake.read_frame(label_refs, columns=keys), on=keys, how="inner"
    )
    try:
        folds = plan_folds(cfg, rows["ts"])
    except ValueError as err:
        raise InputError(str(err)) from err
    return TrainingPlan(key=key, folds=[f.to_dict() for f in folds])


def _never(key: str) -> Materialized:
    raise RuntimeError(
        f"walk_forward {key[:12]}: the manifest vanished between the plan's check and its read"
    )


def train_fold(req: StageRequest, key: str, fold: dict[str, Any], ctx: StageContext) -> FoldResult:
    """Train and predict one fold (`walkforward.run_fold`), or reuse it when an earlier attempt
    finished it. Progress (boosting rounds, epochs; model then canary) goes to `ctx.progress`."""
    from quanto.evaluation.stage import load_design
    from quanto.evaluation.walkforward import Fold, run_fold

    t0 = time.perf_counter()
    index = int(fold["index"])
    frame_path, info_path = _fold_files(key, index)
    frame_file, info_file = ctx.lake.abspath(frame_path), ctx.lake.abspath(info_path)
    reused = frame_file.is_file() and info_file.is_file()
    if not reused:
        cfg = PipelineConfig.model_validate(req.config)
        design = load_design(ctx.lake, *_refs(req))

        def progress(d: dict[str, Any]) -> None:
            ctx.progress(
                int(d.get("step", 0)), int(d.get("of", 0)), f"fold {index} {d.get('phase', '')}".strip()
            )

        outcome = run_fold(
            design,
            Fold.from_dict(fold),
            cfg,
            progress=progress,
            checkpoint=ctx.lake.abspath(_fits_folder(key, index)),
        )
        ctx.lake.write_checkpoint(frame_path, outcome.predictions)
        ctx.lake.write_json(info_path, outcome.info)  # last: its presence marks the fold finished
    info = json.loads(info_file.read_text())
    return FoldResult(
        index=index,
        predictions=FileRef(
            path=frame_path, sha256=sha256_file(frame_file), rows=int(info["n_test"]), role="fold"
        ),
        info={"n_train": info["n_train"], "n_test": info["n_test"], "metrics": info["metrics"]},
        reused=reused,
        seconds=time.perf_counter() - t0,
    )


def finalize_training(req: StageRequest, key: str, folds: list[FoldResult], ctx: StageContext) -> StageResult:
    """Stitch the folds' predictions and evaluate them (`stage.summarize`); writes the stitched
    predictions (role predictions), cpcv's paths, and the stage manifest."""
    from quanto.evaluation.stage import stage_config, summarize
    from quanto.evaluation.walkforward import Fold, FoldOutcome

    cfg = PipelineConfig.model_validate(req.config)
    feat_refs, label_refs = _refs(req)

    def compute(computed_key: str) -> Materialized:
        if computed_key != key:
            raise RuntimeError(
                f"walk_forward key changed between plan ({key[:12]}) and finalize ({computed_key[:12]})"
            )
        ordered = sorted(folds, key=lambda f: f.index)
        outcomes = []
        for f in ordered:
            frame_path, info_path = _fold_files(key, f.index)
            if sha256_file(ctx.lake.abspath(frame_path)) != f.predictions.sha256:
                raise RuntimeError(f"fold {f.index}: {frame_path} changed after the fold finished")
            info = json.loads(ctx.lake.abspath(info_path).read_text())
            outcomes.append(FoldOutcome(pd.read_parquet(ctx.lake.abspath(frame_path)), info))
        evaluation = summarize(cfg, [Fold.from_dict(o.info) for o in outcomes], outcomes)
        refs = [
            ctx.lake.write_frame(f"gold/predictions/{key[:16]}", evaluation.predictions, role="predictions")
        ]
        for role, frame in evaluation.frames.items():
            refs.append(ctx.lake.write_frame(f"gold/{role}/{key[:16]}", frame, role=role))
        leaking = (evaluation.summary["canary"] or {}).get("leaking")
        return Materialized(
            refs,
            counters={
                "folds": len(ordered),
                "folds_resumed": sum(f.reused for f in ordered),
                "predictions": len(evaluation.predictions),
                "canary_leaking": int(bool(leaking)),
            },
            summary=evaluation.summary,
        )

    return materialize(STAGE, ctx, feat_refs + label_refs, stage_config(cfg), compute)


def run_walk_forward(req: StageRequest, ctx: StageContext) -> StageResult:
    """The walk-forward stage in this process: plan, every fold in order, finalize."""
    plan = plan_training(req, ctx)
    if plan.result is not None:
        return plan.result
    results = []
    for fold in plan.folds:
        results.append(train_fold(req, plan.key, fold, ctx))
        ctx.progress(len(results), len(plan.folds), f"fold {fold['index']} done")
    return finalize_training(req, plan.key, results, ctx)
