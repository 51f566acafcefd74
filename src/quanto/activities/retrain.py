"""Activities of RetrainWorkflow: plan the rolling window, split off the holdout, decide.

Thin adapters over `quanto.config.retrain` and `quanto.models.retraining`; the challenger itself is
trained by the research pipeline's `pipeline.train` activity on the split's training part.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from temporalio import activity

from quanto.activities.pipeline import bad_input_is_final, stage_context
from quanto.contracts import (
    QUEUE_COMPUTE,
    QUEUE_TRAIN,
    RetrainDecision,
    RetrainPlan,
    RetrainRequest,
    RetrainStepRequest,
    StageResult,
)
from quanto.lake.materialize import slim


def _retrain(config: dict[str, Any]):
    from quanto.config.retrain import RetrainConfig

    return RetrainConfig.model_validate(config)


@activity.defn(name="retrain.plan")
def plan(req: RetrainRequest) -> RetrainPlan:
    """The research job on the run's window; a scheduled run (no `today`) takes today's UTC date."""
    with bad_input_is_final():
        cfg = _retrain(req.config)
        today = dt.date.fromisoformat(req.today) if req.today else dt.datetime.now(dt.UTC).date()
        end = cfg.window_end(today)
        research = cfg.research(end)
        return RetrainPlan(
            research=research.model_dump(mode="json"),
            name=research.name,
            window_start=research.universe.start.isoformat(),
            window_end=end.isoformat(),
        )


@activity.defn(name="retrain.split")
def split(req: RetrainStepRequest) -> StageResult:
    """The training part of the window's features and labels; the holdout in the summary."""
    from quanto.models.retraining import run_holdout_split

    with stage_context(req.stage) as (stage, ctx):
        return slim(run_holdout_split(stage, _retrain(req.retrain), ctx))


@activity.defn(name="retrain.evaluate")
def evaluate(req: RetrainStepRequest) -> RetrainDecision:
    """Score challenger and incumbent on the holdout, decide, record (and promote)."""
    from quanto.models.retraining import run_evaluate

    with stage_context(req.stage) as (stage, ctx):
        return run_evaluate(stage, _retrain(req.retrain), ctx)


# The queue each activity is served on (the worker registers them from here).
RETRAIN_ACTIVITIES = {QUEUE_COMPUTE: [plan, split], QUEUE_TRAIN: [evaluate]}
