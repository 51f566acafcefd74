"""TrainingWorkflow: the research pipeline's walk-forward stage as a child workflow.

plan (the stage key and folds, or the stored result of an identical earlier run) → one activity per
fold on quanto-train, at most `runtime.max_parallel_folds` at once, so folds spread over every
training worker → finalize (stitch the out-of-sample predictions, metrics, canary, PSR/DSR).

A fold's result is recorded in the history when its activity completes, so a worker killed mid-run
costs only the folds it was running: a retried torch fold resumes from its last epoch checkpoint (in
the lake), a tree fold restarts.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from quanto.contracts import (
        QUEUE_TRAIN,
        FinalizeRequest,
        FoldRequest,
        FoldResult,
        StageRequest,
        StageResult,
        TrainingPlan,
        TrainingProgress,
    )
    from quanto.workflows import search
    from quanto.workflows.retry import activity_retry


@workflow.defn(name="TrainingWorkflow")
class TrainingWorkflow:
    """Walk-forward training, one activity per fold."""

    def __init__(self) -> None:
        self._progress = TrainingProgress()

    @workflow.query
    def progress(self) -> TrainingProgress:
        """Folds planned, finished and running, and the current step."""
        return self._progress

    @workflow.run
    async def run(self, req: StageRequest) -> StageResult:
        runtime = req.config["runtime"]
        retry = activity_retry(runtime["max_attempts"])
        workflow.upsert_search_attributes([search.KIND.value_set("training")])
        timeouts = {
            "start_to_close_timeout": timedelta(seconds=runtime["stage_timeout_s"]),
            "heartbeat_timeout": timedelta(seconds=runtime["heartbeat_timeout_s"]),
            "retry_policy": retry,
            "task_queue": QUEUE_TRAIN,
        }
        plan = await workflow.execute_activity("training.plan", req, result_type=TrainingPlan, **timeouts)
        if plan.result is not None:
            self._progress.stage = "done"
            return plan.result

        self._progress.folds = len(plan.folds)
        self._progress.stage = "training"
        slots = asyncio.Semaphore(runtime.get("max_parallel_folds", 4))

        async def one(fold: dict) -> FoldResult:
            async with slots:
                self._progress.running.append(fold["index"])
                try:
                    result = await workflow.execute_activity(
                        "training.fold",
                        FoldRequest(stage=req, key=plan.key, fold=fold),
                        result_type=FoldResult,
                        **timeouts,
                    )
                finally:
                    self._progress.running.remove(fold["index"])
                self._progress.done += 1
                return result

        folds = await asyncio.gather(*(one(f) for f in plan.folds))
        self._progress.stage = "finalizing"
        result = await workflow.execute_activity(
            "training.finalize",
            FinalizeRequest(stage=req, key=plan.key, folds=list(folds)),
            result_type=StageResult,
            **timeouts,
        )
        self._progress.stage = "done"
        return result
