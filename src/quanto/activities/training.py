"""Activities of TrainingWorkflow (quanto-train): plan the folds, train one fold, stitch the result.

Thin adapters over `quanto.evaluation.training`; they run in threads of the training worker. A fold's
progress (boosting rounds, epochs) travels in its heartbeats.
"""

from __future__ import annotations

from temporalio import activity

from quanto.activities.pipeline import stage_context
from quanto.contracts import FinalizeRequest, FoldRequest, FoldResult, StageRequest, StageResult, TrainingPlan
from quanto.lake.materialize import slim


@activity.defn(name="training.plan")
def plan(req: StageRequest) -> TrainingPlan:
    """The walk-forward stage's key and folds, or its stored result when it already ran."""
    from quanto.evaluation.training import plan_training

    with stage_context(req) as (req, ctx):
        plan = plan_training(req, ctx)
        if plan.result is not None:
            plan = plan.model_copy(update={"result": slim(plan.result)})
        return plan


@activity.defn(name="training.fold")
def fold(req: FoldRequest) -> FoldResult:
    """Train one fold and predict its test window (reused when an earlier attempt finished it)."""
    from quanto.evaluation.training import train_fold

    with stage_context(req.stage) as (stage, ctx):
        return train_fold(stage, req.key, req.fold, ctx)


@activity.defn(name="training.finalize")
def finalize(req: FinalizeRequest) -> StageResult:
    """Stitch the folds' predictions and metrics into the walk-forward stage's result."""
    from quanto.evaluation.training import finalize_training

    with stage_context(req.stage) as (stage, ctx):
        return slim(finalize_training(stage, req.key, req.folds, ctx))


TRAINING_ACTIVITIES = [plan, fold, finalize]
