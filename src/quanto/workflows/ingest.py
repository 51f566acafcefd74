"""IngestionWorkflow: plan partitions → fetch them in batches with bounded parallelism → (optionally)
follow today's live stream → write the run manifest.

Idempotent: a partition already in the lake is skipped by its activity, so a rerun fetches nothing and
a retried batch resumes. Long plans continue-as-new with their cursor, keeping histories small.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from quanto.contracts import (
        QUEUE_IO,
        IngestBatchRequest,
        IngestBatchResult,
        IngestPlanRef,
        IngestProgress,
        IngestRequest,
        IngestResult,
        StreamRequest,
        StreamResult,
    )
    from quanto.workflows import search
    from quanto.workflows.retry import activity_retry

TOTAL_KEYS = ("fetched", "skipped", "rows", "rejected", "files", "requests", "retries", "throttled")


@workflow.defn(name="IngestionWorkflow")
class IngestionWorkflow:
    """Fans a request's partitions out to `ingest.fetch` activities, at most `max_parallel` at once."""

    def __init__(self) -> None:
        self._progress = IngestProgress()
        self._stop_stream = False

    @workflow.query
    def progress(self) -> IngestProgress:
        """Partitions and batches done, rows written, the route and the current step."""
        return self._progress

    @workflow.signal
    def stop_stream(self) -> None:
        """End the live stream now (the workflow then writes its manifest and completes)."""
        self._stop_stream = True

    @workflow.run
    async def run(self, req: IngestRequest) -> IngestResult:
        cfg = req.config
        runtime = cfg["runtime"]
        retry = activity_retry(runtime["max_attempts"])
        timeouts = {
            "start_to_close_timeout": timedelta(seconds=runtime["stage_timeout_s"]),
            "heartbeat_timeout": timedelta(seconds=runtime["heartbeat_timeout_s"]),
            "retry_policy": retry,
        }
        started = workflow.now()
        self._stop_stream = self._stop_stream or req.stop_stream
        workflow.upsert_search_attributes(
            [search.KIND.value_set("ingest"), search.CONFIG.value_set(req.config_name)]
        )
        plan = req.plan
        if plan is None:
            workflow.upsert_search_attributes([search.STAGE.value_set("plan")])
            plan = await workflow.execute_activity(
                "ingest.plan", req, task_queue=QUEUE_IO, result_type=IngestPlanRef, **timeouts
            )
        totals = {k: req.totals.get(k, 0) for k in TOTAL_KEYS}
        p = self._progress
        p.partitions, p.batches, p.route, p.stage = plan.partitions, plan.batches, plan.route, "fetching"
        p.batches_done = req.cursor
        self._show(totals)
        workflow.upsert_search_attributes([search.STAGE.value_set("fetch")])

        cursor = req.cursor
        pending: list[asyncio.Task] = []  # workflow.wait returns lists, in a deterministic order
        max_parallel = cfg["partitions"]["max_parallel"]
        last_batch = min(plan.batches, req.cursor + cfg["partitions"]["batches_per_run"])
        try:
            while cursor < plan.batches or pending:
                # Past this run's share of batches (or the server's suggested history size), stop
                # launching and drain, then continue-as-new with the cursor.
                handover = cursor >= last_batch or workflow.info().is_continue_as_new_suggested()
                while cursor < plan.batches and len(pending) < max_parallel and not handover:
                    pending.append(
                        workflow.start_activity(
                            "ingest.fetch",
                            IngestBatchRequest(config=cfg, plan=plan, batch=cursor),
                            task_queue=QUEUE_IO,
                            result_type=IngestBatchResult,
                            **timeouts,
                        )
                    )
                    cursor += 1
                if not pending:
                    break
                done, pending = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result: IngestBatchResult = task.result()
                    for k in TOTAL_KEYS:
                        totals[k] += getattr(result, k)
                    p.batches_done += 1
                    self._show(totals)
        except ActivityError as err:
            for task in pending:
                task.cancel()
            workflow.upsert_search_attributes([search.STAGE.value_set("failed:fetch")])
            cause = err.cause if isinstance(err.cause, ApplicationError) else err
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise ApplicationError(
                f"ingestion failed: {message}", type="IngestFailed", non_retryable=True
            ) from err
        seconds = req.seconds_before + (workflow.now() - started).total_seconds()
        if cursor < plan.batches:
            workflow.continue_as_new(
                req.model_copy(
                    update={
                        "cursor": cursor,
                        "totals": totals,
                        "plan": plan,
                        "seconds_before": seconds,
                        "stop_stream": self._stop_stream,
                    }  # fmt: skip
                )
            )

        stream_result = None
        vendor_settings = cfg.get(cfg["vendor"]) or {}
        if (vendor_settings.get("stream") or {}).get("enabled"):
            p.stage = "streaming"
            workflow.upsert_search_attributes([search.STAGE.value_set("stream")])
            stream_result = await self._stream(req, plan, runtime, retry)

        p.stage = "finalizing"
        workflow.upsert_search_attributes([search.STAGE.value_set("finalize")])
        seconds = req.seconds_before + (workflow.now() - started).total_seconds()
        manifest = await workflow.execute_activity(
            "ingest.finalize",
            {
                "config": cfg,
                "plan": plan.model_dump(),
                "totals": totals,
                "status": "completed",
                "vendor": cfg["vendor"],
                "dataset": cfg["dataset"],
                "route": plan.route,
                "reason": plan.reason,
                "partitions": plan.partitions,
                "stream": stream_result.model_dump() if stream_result else None,
                "seconds": seconds,
            },
            task_queue=QUEUE_IO,
            start_to_close_timeout=timedelta(seconds=60),
            schedule_to_close_timeout=timedelta(hours=1),
            # An idempotent upsert: keep trying while the database is away rather than fail a finished run.
            retry_policy=RetryPolicy(maximum_attempts=0, maximum_interval=timedelta(seconds=60)),
            result_type=str,
        )
        p.stage = "done"
        workflow.upsert_search_attributes([search.STAGE.value_set("done")])
        return IngestResult(
            workflow_id=workflow.info().workflow_id,
            status="completed",
            route=plan.route,
            reason=plan.reason,
            partitions=plan.partitions,
            totals=totals,
            stream=stream_result,
            manifest=manifest,
            seconds=seconds,
        )

    async def _stream(
        self, req: IngestRequest, plan: IngestPlanRef, runtime: dict, retry: RetryPolicy
    ) -> StreamResult:
        """Run the stream activity until it ends (session close / duration) or `stop_stream` arrives."""
        task = workflow.start_activity(
            "ingest.stream",
            StreamRequest(config=req.config, today=plan.today or req.today),
            task_queue=QUEUE_IO,
            start_to_close_timeout=timedelta(hours=24),
            heartbeat_timeout=timedelta(seconds=runtime["heartbeat_timeout_s"]),
            # A stream that dies is restarted; the stream itself reconnects and backfills.
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=60),
                non_retryable_error_types=retry.non_retryable_error_types,
            ),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            result_type=StreamResult,
        )
        stopper = asyncio.ensure_future(workflow.wait_condition(lambda: self._stop_stream))
        await workflow.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
        stopper.cancel()
        try:
            return await task  # a stopped stream completes with its counts (it shields the cancel)
        except ActivityError:
            if self._stop_stream:
                return StreamResult()  # cancelled on request before it could report
            raise

    def _show(self, totals: dict[str, int]) -> None:
        p = self._progress
        p.fetched, p.skipped, p.rows, p.rejected = (
            totals["fetched"],
            totals["skipped"],
            totals["rows"],
            totals["rejected"],
        )
