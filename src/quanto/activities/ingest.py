"""Activities of IngestionWorkflow: plan the partitions, fetch batches of them, follow the live stream,
write the run manifest. Thin: each builds the domain objects and calls `quanto.data`."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from quanto.activities.heartbeat import Heartbeat
from quanto.config.ingest import IngestConfig
from quanto.contracts import (
    IngestBatchRequest,
    IngestBatchResult,
    IngestPlanRef,
    IngestRequest,
    StreamRequest,
    StreamResult,
)
from quanto.errors import InputError
from quanto.lake.storage import Lake, sha256_json


def _config(raw: dict[str, Any]) -> IngestConfig:
    return IngestConfig.model_validate(raw)


def _non_retryable(err: Exception) -> ApplicationError:
    # Retrying cannot fix bad input (config, unknown symbol, rejected keys): fail at once, say what.
    return ApplicationError(str(err), type=type(err).__name__, non_retryable=True)


def _logging() -> None:
    from quanto.observability.logging import configure_logging

    configure_logging(console=False, filename="worker.log")


@activity.defn(name="ingest.plan")
def plan(req: IngestRequest) -> IngestPlanRef:
    """Split the request into partitions and write the plan to the lake (it can be large)."""
    from quanto.data.partitions import plan as make_plan

    _logging()
    try:
        cfg = _config(req.config)
        if req.today:
            today = dt.date.fromisoformat(req.today)
        else:  # a scheduled run: today in the exchange's zone, recorded in the plan for every later step
            from quanto.data.sources import exchange_tz

            today = dt.datetime.now(exchange_tz(cfg.calendar)).date()
        p = make_plan(cfg, today)
    except (InputError, ValidationError, ValueError) as err:
        raise _non_retryable(err) from err
    lake = Lake(Path(cfg.lake_root))
    body = p.model_dump(mode="json")
    rel = f"runs/ingest/{activity.info().workflow_id}/plan-{sha256_json(body)[:16]}.json"
    lake.write_json(rel, body)
    size = cfg.partitions.per_activity
    return IngestPlanRef(
        path=rel,
        partitions=len(p.partitions),
        batch_size=size,
        batches=math.ceil(len(p.partitions) / size),
        route=p.decision.route,
        reason=p.decision.reason,
        end=p.end.isoformat(),
        today=today.isoformat(),
    )


@activity.defn(name="ingest.fetch")
def fetch(req: IngestBatchRequest) -> IngestBatchResult:
    """Ingest one batch of partitions; those already in the lake are skipped, so a retry resumes."""
    from quanto.data.ingestion import RunContext, ingest_sync
    from quanto.data.partitions import Partition

    _logging()
    cfg = _config(req.config)
    lake = Lake(Path(cfg.lake_root))
    body = json.loads(lake.abspath(req.plan.path).read_text())
    lo = req.batch * req.plan.batch_size
    parts = [Partition.model_validate(p) for p in body["partitions"][lo : lo + req.plan.batch_size]]
    info = activity.info()
    ctx = RunContext(
        lake=lake,
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        today=dt.date.fromisoformat(req.plan.today) if req.plan.today else dt.date.today(),
    )
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 30.0
    with Heartbeat(ctx, interval=max(0.5, timeout / 4)):
        try:
            outcomes = ingest_sync(parts, cfg, ctx)
        except (InputError, ValidationError) as err:
            raise _non_retryable(err) from err
    stats = ctx.request_stats
    return IngestBatchResult(
        batch=req.batch,
        fetched=sum(o.status == "fetched" for o in outcomes),
        skipped=sum(o.status == "skipped" for o in outcomes),
        rows=sum(o.rows for o in outcomes),
        rejected=sum(o.rejected for o in outcomes),
        files=sum(o.files for o in outcomes),
        requests=sum(s.get("requests", 0) for s in stats.values()),
        retries=sum(s.get("retries", 0) for s in stats.values()),
        throttled=sum(s.get("throttled", 0) for s in stats.values()),
    )


@activity.defn(name="ingest.stream")
def stream(req: StreamRequest) -> StreamResult:
    """Follow the vendor's live stream for today's session, writing micro-batches and backfilling gaps."""
    from quanto.data.live import follow_stream

    _logging()
    cfg = _config(req.config)
    info = activity.info()
    lake = Lake(Path(cfg.lake_root))

    def beat(state: dict[str, Any]) -> None:
        activity.heartbeat(state)

    result = None
    try:
        # Cancellation (the workflow's stop_stream) must not be raised into the middle of a lake write:
        # shielded, it only makes is_cancelled() true; the follower then flushes and returns its counts.
        with activity.shield_thread_cancel_exception():
            result = follow_stream(
                cfg,
                lake,
                dt.date.fromisoformat(req.today),
                heartbeat=beat,
                cancelled=activity.is_cancelled,
                workflow_id=info.workflow_id,
                run_id=info.workflow_run_id,
            )
    except (InputError, ValidationError) as err:
        raise _non_retryable(err) from err
    except CancelledError:
        if result is None:
            raise
    return result  # a stream stopped on request still reports what it wrote


@activity.defn(name="ingest.finalize")
def finalize(summary: dict[str, Any]) -> str:
    """Write the run manifest (vendor, route, partitions, rows, retries, timings) to the lake and
    PostgreSQL; returns its lake path."""
    from quanto.store.db import connect
    from quanto.store.records import record_run, upsert_manifest

    cfg = _config(summary["config"])
    lake = Lake(Path(cfg.lake_root))
    info = activity.info()
    now = dt.datetime.now(dt.UTC)
    started = now - dt.timedelta(seconds=summary["seconds"])
    manifest = {
        "stage": "ingest.run",
        "key": info.workflow_id,
        "run_id": info.workflow_run_id,
        "workflow_id": info.workflow_id,
        "code_version": _code_version(),
        "config": summary["config"],  # job files never hold secrets (they come from the environment)
        "inputs": [],
        "outputs": [{"path": summary["plan"]["path"], "role": "plan"}],
        "counters": summary["totals"],
        "summary": {k: summary[k] for k in ("vendor", "dataset", "route", "reason", "partitions", "stream")},
        "started_at": started.isoformat(),
        "finished_at": now.isoformat(),
        "seconds": summary["seconds"],
        "status": summary["status"],
    }
    rel = f"manifests/ingest_run/{info.workflow_id}.json"
    with connect() as conn:
        upsert_manifest(conn, manifest, rel)
        record_run(
            conn,
            {
                "workflow_id": info.workflow_id,
                "run_id": info.workflow_run_id,
                "kind": "ingest",
                "config_name": cfg.name,
                "config_hash": info.workflow_id.rsplit("-", 1)[-1],
                "status": summary["status"],
                "metrics": {**summary["totals"], "route": summary["route"]},
                "report_html": None,
                "report_pdf": None,
            },
        )
    lake.write_json(rel, manifest)
    return rel


def _code_version() -> str:
    from quanto.lake.materialize import code_version

    return code_version()


INGEST_ACTIVITIES = [plan, fetch, stream, finalize]
