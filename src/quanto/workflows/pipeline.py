"""ResearchPipelineWorkflow: ingest → validate → features → labels → train → walk-forward → backtest → report."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from quanto.contracts import (
        PIPELINE_STAGES,
        QUEUE_CONTROL,
        QUEUE_IO,
        PipelineRequest,
        PipelineResult,
        StageRequest,
        StageResult,
        StageStatus,
    )
    from quanto.workflows import search
    from quanto.workflows.retry import activity_retry
    from quanto.workflows.training import TrainingWorkflow

# The stage that runs as TrainingWorkflow rather than as one activity.
TRAINING_STAGE = "walk_forward"
TRAINING_CHILD_PATCH = "walk-forward-as-training-child"


@workflow.defn(name="ResearchPipelineWorkflow")
class ResearchPipelineWorkflow:
    """Runs each stage as an activity on its task queue, passing results as lake references."""

    def __init__(self) -> None:
        self._stages = [StageStatus(name=s.name) for s in PIPELINE_STAGES]

    @workflow.query
    def progress(self) -> list[StageStatus]:
        """Status of every stage (pending, running, completed, failed) with seconds and skip flag."""
        return self._stages

    @workflow.run
    async def run(self, req: PipelineRequest) -> PipelineResult:
        runtime = req.config["runtime"]
        retry = activity_retry(runtime["max_attempts"])
        workflow.upsert_search_attributes(
            [search.KIND.value_set("pipeline"), search.CONFIG.value_set(req.config_name)]
        )
        info = workflow.info()
        results: dict[str, StageResult] = {}
        for spec, status in zip(PIPELINE_STAGES, self._stages, strict=True):
            if req.until and req.until in results:
                break  # the caller asked for the stages up to `until` only
            workflow.upsert_search_attributes([search.STAGE.value_set(spec.name)])
            status.status = "running"
            started = workflow.now()
            stage_req = StageRequest(
                stage=spec.name,
                config=req.config,
                config_source=req.config_source,
                inputs={n: results[n] for n in spec.needs},
                workflow_id=info.workflow_id,
                run_id=info.run_id,
            )
            try:
                # One activity per fold, in a child workflow. Runs started before that change (no
                # patch marker in their history) finish as they began: the stage as one activity.
                if spec.name == TRAINING_STAGE and workflow.patched(TRAINING_CHILD_PATCH):
                    result = await workflow.execute_child_workflow(
                        TrainingWorkflow.run,
                        stage_req,
                        id=f"{info.workflow_id}-training-{info.run_id}",  # run ids are UUIDv7: a prefix repeats
                        task_queue=QUEUE_CONTROL,
                        result_type=StageResult,
                    )
                else:
                    result = await workflow.execute_activity(
                        spec.activity,
                        stage_req,
                        task_queue=spec.queue,
                        start_to_close_timeout=timedelta(seconds=runtime["stage_timeout_s"]),
                        heartbeat_timeout=timedelta(seconds=runtime["heartbeat_timeout_s"]),
                        retry_policy=retry,
                        result_type=StageResult,
                    )
            except (ActivityError, ChildWorkflowError) as err:
                status.status = "failed"
                workflow.upsert_search_attributes([search.STAGE.value_set(f"failed:{spec.name}")])
                try:
                    await self._record(req, "failed", {})
                except ActivityError:
                    workflow.logger.warning("could not record the failed run; the stage error follows")
                cause = _root_cause(err)
                raise ApplicationError(
                    f"stage {spec.name} failed: {cause.message if isinstance(cause, ApplicationError) else cause}",
                    type="StageFailed",
                    non_retryable=True,
                ) from err
            status.status = "completed"
            status.skipped = result.skipped
            status.seconds = (workflow.now() - started).total_seconds()
            results[spec.name] = result
        workflow.upsert_search_attributes([search.STAGE.value_set("done")])
        report = {f.role: f.path for f in results["report"].outputs} if "report" in results else {}
        lake = req.config["lake_root"].rstrip("/")
        out = PipelineResult(
            workflow_id=info.workflow_id,
            status="completed",
            report_html=f"{lake}/{report['report_html']}" if "report_html" in report else None,
            report_pdf=f"{lake}/{report['report_pdf']}" if "report_pdf" in report else None,
            metrics=results["backtest"].summary.get("metrics", {}) if "backtest" in results else {},
            stages=[s for s in self._stages if s.name in results],
            results=results,
        )
        await self._record(req, "completed", out.metrics, out.report_html, out.report_pdf)
        return out

    async def _record(self, req: PipelineRequest, status: str, metrics: dict, html=None, pdf=None) -> None:
        info = workflow.info()
        await workflow.execute_activity(
            "pipeline.record_run",
            {
                "workflow_id": info.workflow_id,
                "run_id": info.run_id,
                "kind": "pipeline",
                "config_name": req.config_name,
                "config_hash": info.workflow_id.rsplit("-", 1)[-1],
                "status": status,
                "metrics": metrics,
                "report_html": html,
                "report_pdf": pdf,
            },
            task_queue=QUEUE_IO,
            start_to_close_timeout=timedelta(seconds=60),
            schedule_to_close_timeout=timedelta(hours=1),
            # An idempotent upsert: keep trying while the database is away rather than fail a finished run.
            retry_policy=RetryPolicy(maximum_attempts=0, maximum_interval=timedelta(seconds=60)),
        )


def _root_cause(err: BaseException) -> BaseException:
    """The application error behind an activity or child-workflow failure (the child's own activity
    error nests one level deeper), else `err` itself."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__ if cause.__cause__ is not None else getattr(cause, "cause", None)
    return cause or err
