"""Starting and following IngestionWorkflow from the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from quanto.config.ingest import IngestConfig
from quanto.contracts import QUEUE_CONTROL, IngestProgress, IngestRequest, IngestResult
from quanto.workflows import search


def exchange_today(cfg: IngestConfig) -> dt.date:
    """Today in the exchange's time zone: the workflow's plan is fixed to it (deterministic)."""
    from quanto.data.sources import exchange_tz

    return dt.datetime.now(exchange_tz(cfg.calendar)).date()


def request_for(cfg: IngestConfig, source: str, today: dt.date | None) -> IngestRequest:
    """The workflow input: the validated job file as JSON with the lake root made absolute.

    `today` None (scheduled runs) lets each run's plan fix the date when it starts.
    """
    config = cfg.model_dump(mode="json")
    config["lake_root"] = str(Path(cfg.lake_root).expanduser().resolve())
    return IngestRequest(
        config=config, config_source=source, config_name=cfg.name, today=today.isoformat() if today else ""
    )


async def start_ingest(client: Client, cfg: IngestConfig, source: str, today: dt.date):
    """Start (or attach to the running) ingestion under its business key ingest-<name>-<hash8>."""
    return await client.start_workflow(
        "IngestionWorkflow",
        request_for(cfg, source, today),
        id=cfg.workflow_id(today),
        task_queue=QUEUE_CONTROL,
        result_type=IngestResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=search.run_attributes("ingest", cfg.name),
    )


async def follow_ingest(handle, echo: bool = True, interval: float = 0.5) -> IngestResult:
    """Wait for the result, printing partition progress to stderr when it changes."""
    result_task = asyncio.create_task(handle.result())
    last = ""
    while not result_task.done():
        try:
            p = await handle.query("progress", result_type=IngestProgress)
        except Exception:
            p = None  # no worker yet, or continuing as new
        if echo and p is not None:
            done = p.fetched + p.skipped
            line = (
                f"  {p.stage:<10} route {p.route or '?'}: batches {p.batches_done}/{p.batches}, "
                f"partitions {done}/{p.partitions} ({p.skipped} already in the lake), "
                f"rows {p.rows:,}, rejected {p.rejected:,}"
            )
            if line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
        await asyncio.wait([result_task], timeout=interval)
    return result_task.result()


def result_json(result: IngestResult, ui_url: str) -> dict[str, Any]:
    """The CLI's JSON for a finished ingestion."""
    return {**result.model_dump(mode="json"), "ui_url": ui_url}
