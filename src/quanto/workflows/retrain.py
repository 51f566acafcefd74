"""RetrainWorkflow: retrain a research job on a rolling window, and promote the new model only when it
beats the production model on a held-out period by the job's margin.

plan (the window) → the research pipeline as a child up to its labels on that window → split (the
training part, holdout excluded and purged) → the pipeline's train stage on that part (the challenger)
→ evaluate (both models on the holdout; the decision recorded, the challenger promoted if it wins).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from quanto.contracts import (
        QUEUE_COMPUTE,
        QUEUE_CONTROL,
        QUEUE_TRAIN,
        PipelineRequest,
        PipelineResult,
        RetrainDecision,
        RetrainPlan,
        RetrainRequest,
        RetrainResult,
        RetrainStepRequest,
        StageRequest,
        StageResult,
        StageStatus,
    )
    from quanto.workflows import search
    from quanto.workflows.pipeline import ResearchPipelineWorkflow
    from quanto.workflows.retry import activity_retry

STEPS = ("plan", "pipeline", "split", "train", "evaluate")
# The child pipeline stops here: the train stage runs on the split's training part instead.
LAST_PIPELINE_STAGE = "labels"
T = TypeVar("T")


@workflow.defn(name="RetrainWorkflow")
class RetrainWorkflow:
    """Retrain, compare on the holdout, and promote or keep; the decision is recorded either way."""

    def __init__(self) -> None:
        self._steps = [StageStatus(name=s) for s in STEPS]

    @workflow.query
    def progress(self) -> list[StageStatus]:
        """Status of every step (pending, running, completed, failed) with seconds and skip flag."""
        return self._steps

    @workflow.run
    async def run(self, req: RetrainRequest) -> RetrainResult:
        info = workflow.info()
        workflow.upsert_search_attributes(
            [search.KIND.value_set("retrain"), search.CONFIG.value_set(req.config_name)]
        )
        runtime = req.config["pipeline"]["runtime"]
        options = {
            "start_to_close_timeout": timedelta(seconds=runtime["stage_timeout_s"]),
            "retry_policy": activity_retry(runtime["max_attempts"]),
        }
        beating = {**options, "heartbeat_timeout": timedelta(seconds=runtime["heartbeat_timeout_s"])}
        plan = await self._step(
            "plan",
            workflow.execute_activity(
                "retrain.plan", req, task_queue=QUEUE_COMPUTE, result_type=RetrainPlan, **options
            ),
        )
        pipeline_id = f"{info.workflow_id}-pipeline-{info.run_id}"
        pipeline = await self._step(
            "pipeline",
            workflow.execute_child_workflow(
                ResearchPipelineWorkflow.run,
                PipelineRequest(
                    config=plan.research,
                    config_source=req.config_source,
                    config_name=plan.name,
                    until=LAST_PIPELINE_STAGE,
                ),
                id=pipeline_id,
                task_queue=QUEUE_CONTROL,
                result_type=PipelineResult,
            ),
        )
        window = {"features": pipeline.results["features"], "labels": pipeline.results["labels"]}

        def stage(name: str, inputs: dict[str, StageResult]) -> StageRequest:
            return StageRequest(
                stage=name,
                config=plan.research,
                config_source=req.config_source,
                inputs=inputs,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
            )

        split = await self._step(
            "split",
            workflow.execute_activity(
                "retrain.split",
                RetrainStepRequest(stage=stage("retrain_split", window), retrain=req.config),
                task_queue=QUEUE_COMPUTE,
                result_type=StageResult,
                **beating,
            ),
        )
        challenger = await self._step(
            "train",
            workflow.execute_activity(
                "pipeline.train",
                stage("train", {"features": split, "labels": split}),
                task_queue=QUEUE_TRAIN,
                result_type=StageResult,
                **beating,
            ),
        )
        decision = await self._step(
            "evaluate",
            workflow.execute_activity(
                "retrain.evaluate",
                RetrainStepRequest(
                    stage=stage("retrain_evaluate", {**window, "split": split, "train": challenger}),
                    retrain=req.config,
                ),
                task_queue=QUEUE_TRAIN,
                result_type=RetrainDecision,
                **beating,
            ),
        )
        workflow.upsert_search_attributes([search.STAGE.value_set("done")])
        return RetrainResult(
            workflow_id=info.workflow_id,
            status="completed",
            pipeline_workflow_id=pipeline_id,
            window_start=plan.window_start,
            window_end=plan.window_end,
            decision=decision,
            stages=self._steps,
        )

    async def _step(self, name: str, work: Awaitable[T]) -> T:
        """Await one step, keeping its status (and the QuantoStage search attribute) current."""
        status = next(s for s in self._steps if s.name == name)
        workflow.upsert_search_attributes([search.STAGE.value_set(name)])
        status.status = "running"
        started = workflow.now()
        try:
            result = await work
        except BaseException:
            status.status = "failed"
            workflow.upsert_search_attributes([search.STAGE.value_set(f"failed:{name}")])
            raise
        status.status = "completed"
        status.skipped = bool(getattr(result, "skipped", False))
        status.seconds = (workflow.now() - started).total_seconds()
        return result
