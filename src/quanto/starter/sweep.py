"""Starting SweepWorkflow from the CLI."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from quanto.config.sweep import SweepJob
from quanto.contracts import QUEUE_CONTROL, SweepRequest, SweepResult
from quanto.workflows import search


async def start_sweep(client: Client, job: SweepJob, source: str):
    """Start (or attach to a running) SweepWorkflow under its business key sweep-<name>-<hash8>."""
    config = job.model_dump(mode="json")
    config["lake_root"] = str(Path(job.lake_root).expanduser().resolve())
    return await client.start_workflow(
        "SweepWorkflow",
        SweepRequest(config=config, config_source=source, config_name=job.name),
        id=job.workflow_id(),
        task_queue=QUEUE_CONTROL,
        result_type=SweepResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=search.run_attributes("sweep", job.name),
    )
