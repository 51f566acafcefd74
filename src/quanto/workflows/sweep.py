"""SweepWorkflow: a grid of backtest parameters over one research job's out-of-sample predictions.

The research pipeline runs first as a child, up to its walk-forward (every stage already
materialized is skipped), then one `sweep.point` activity per grid point on quanto-compute, at most
`sweep.max_parallel` at once, then `sweep.finalize` ranks the points and measures the selection
(probability of backtest overfitting, deflated Sharpe ratio).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from quanto.contracts import (
        QUEUE_COMPUTE,
        QUEUE_CONTROL,
        PipelineRequest,
        PipelineResult,
        SweepFinalizeRequest,
        SweepPointRequest,
        SweepRequest,
        SweepResult,
    )
    from quanto.workflows import search
    from quanto.workflows.pipeline import ResearchPipelineWorkflow
    from quanto.workflows.retry import activity_retry

# The stage whose predictions every point trades.
PREDICTIONS_STAGE = "walk_forward"


@workflow.defn(name="SweepWorkflow")
class SweepWorkflow:
    """Backtest every grid point of a sweep job, then rank them honestly."""

    def __init__(self) -> None:
        self._done = 0
        self._points = 0

    @workflow.query
    def progress(self) -> dict[str, int]:
        """Points planned and points backtested."""
        return {"points": self._points, "done": self._done}

    @workflow.run
    async def run(self, req: SweepRequest) -> SweepResult:
        runtime = req.config["runtime"]
        workflow.upsert_search_attributes(
            [search.KIND.value_set("sweep"), search.CONFIG.value_set(req.config_name)]
        )
        info = workflow.info()
        pipeline_id = f"{info.workflow_id}-pipeline-{info.run_id}"
        pipeline = await workflow.execute_child_workflow(
            ResearchPipelineWorkflow.run,
            PipelineRequest(
                config={k: v for k, v in req.config.items() if k != "sweep"},
                config_source=req.config_source,
                config_name=req.config_name,
                until=PREDICTIONS_STAGE,
            ),
            id=pipeline_id,
            task_queue=QUEUE_CONTROL,
            result_type=PipelineResult,
        )
        options: dict[str, Any] = {
            "task_queue": QUEUE_COMPUTE,
            "start_to_close_timeout": timedelta(seconds=runtime["stage_timeout_s"]),
            "retry_policy": activity_retry(runtime["max_attempts"]),
        }
        points = await workflow.execute_activity("sweep.plan", req.config, result_type=list, **options)
        self._points = len(points)
        slots = asyncio.Semaphore(req.config["sweep"]["max_parallel"])

        async def one(index: int, point: dict) -> dict:
            async with slots:
                result = await workflow.execute_activity(
                    "sweep.point",
                    SweepPointRequest(
                        config=req.config,
                        index=index,
                        point=point,
                        bars_from=pipeline.results["validate"],
                        predictions_from=pipeline.results[PREDICTIONS_STAGE],
                    ),
                    result_type=dict,
                    **options,
                )
            self._done += 1
            return result

        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(points)))
        summary = await workflow.execute_activity(
            "sweep.finalize",
            SweepFinalizeRequest(config=req.config, points=list(results)),
            result_type=dict,
            **options,
        )
        return SweepResult(workflow_id=info.workflow_id, pipeline_workflow_id=pipeline_id, summary=summary)
