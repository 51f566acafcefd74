"""One activity per research-pipeline stage. Each is a sync function so it can run in a process pool.

A background thread heartbeats while the stage computes (LightGBM fits do not call back), carrying the
stage's progress and its checkpoint details; a retried attempt receives those details as `ctx.resume`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from quanto.activities.heartbeat import Heartbeat, resume_details
from quanto.contracts import StageRequest, StageResult
from quanto.errors import InputError
from quanto.lake.materialize import StageContext, hydrate, slim
from quanto.lake.storage import Lake


@contextmanager
def stage_context(req: StageRequest) -> Iterator[tuple[StageRequest, StageContext]]:
    """The request with its inputs read back from their manifests, and a StageContext on the job's
    lake that heartbeats in the background (carrying progress and checkpoint details) until the block
    ends. Bad input raises a non-retryable ApplicationError: retrying cannot fix it."""
    from quanto.observability.logging import configure_logging

    configure_logging(console=False, filename="worker.log")
    info = activity.info()
    lake = Lake(Path(req.config.get("lake_root", ".quanto/lake")))
    req = req.model_copy(update={"inputs": {k: hydrate(lake, v) for k, v in req.inputs.items()}})
    ctx = StageContext(
        lake=lake,
        # The pipeline's run, also for the steps its TrainingWorkflow child runs: one run, one id.
        workflow_id=req.workflow_id or info.workflow_id,
        run_id=req.run_id or info.workflow_run_id,
        resume=resume_details(),
    )
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 30.0
    with Heartbeat(ctx, interval=max(0.5, timeout / 4)), bad_input_is_final():
        yield req, ctx


@contextmanager
def bad_input_is_final() -> Iterator[None]:
    """Bad input (config, data) raises a non-retryable ApplicationError: retrying cannot fix it."""
    try:
        yield
    except (InputError, ValidationError) as err:
        raise ApplicationError(str(err), type=type(err).__name__, non_retryable=True) from err


def execute_stage(name: str, req: StageRequest) -> StageResult:
    """Run stage `name` of the research pipeline inside an activity."""
    from quanto.research import STAGE_FUNCTIONS

    with stage_context(req) as (req, ctx):
        # Long file lists stay in the manifest: payloads stay small whatever the universe size.
        return slim(STAGE_FUNCTIONS[name](req, ctx))


# Module-level functions (not closures) so a process pool can pickle them by name.
@activity.defn(name="pipeline.ingest")
def ingest(req: StageRequest) -> StageResult:
    """Ingest bars into the bronze layer."""
    return execute_stage("ingest", req)


@activity.defn(name="pipeline.validate")
def validate(req: StageRequest) -> StageResult:
    """Validate bars into silver + quarantine."""
    return execute_stage("validate", req)


@activity.defn(name="pipeline.features")
def features(req: StageRequest) -> StageResult:
    """Compute features into the gold layer."""
    return execute_stage("features", req)


@activity.defn(name="pipeline.labels")
def labels(req: StageRequest) -> StageResult:
    """Compute labels into the gold layer."""
    return execute_stage("labels", req)


@activity.defn(name="pipeline.train")
def train(req: StageRequest) -> StageResult:
    """Train and register the deployable model."""
    return execute_stage("train", req)


@activity.defn(name="pipeline.walk_forward")
def walk_forward(req: StageRequest) -> StageResult:
    """The whole walk-forward stage in one activity: what runs started before TrainingWorkflow
    existed still call (see ResearchPipelineWorkflow's patch); new runs use TrainingWorkflow."""
    return execute_stage("walk_forward", req)


@activity.defn(name="pipeline.backtest")
def backtest(req: StageRequest) -> StageResult:
    """Backtest the predictions."""
    return execute_stage("backtest", req)


@activity.defn(name="pipeline.report")
def report(req: StageRequest) -> StageResult:
    """Render the HTML and PDF report."""
    return execute_stage("report", req)


@activity.defn(name="pipeline.record_run")
def record_run(row: dict[str, Any]) -> None:
    """Write the pipeline run's final row (status, metrics, report paths) to PostgreSQL."""
    from quanto.store.db import connect
    from quanto.store.records import record_run as write

    with connect() as conn:
        write(conn, row)


STAGE_ACTIVITIES = {
    "ingest": ingest,
    "validate": validate,
    "features": features,
    "labels": labels,
    "train": train,
    "walk_forward": walk_forward,
    "backtest": backtest,
    "report": report,
}
