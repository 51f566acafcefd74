"""Starting and following ResearchPipelineWorkflow from the CLI."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from quanto.config.models import PipelineConfig
from quanto.contracts import QUEUE_CONTROL, PipelineRequest, PipelineResult, StageStatus
from quanto.starter.client import ui_link
from quanto.workflows import search


def request_for(cfg: PipelineConfig, source: str, until: str | None = None) -> PipelineRequest:
    """The workflow input: the validated config as JSON with the lake root made absolute."""
    config = cfg.model_dump(mode="json")
    config["lake_root"] = str(Path(cfg.lake_root).expanduser().resolve())
    return PipelineRequest(config=config, config_source=source, config_name=cfg.name, until=until)


async def start_pipeline(client: Client, cfg: PipelineConfig, source: str, until: str | None = None):
    """Start (or attach to a running) pipeline workflow under its business-key ID.

    With `until="validate"` only ingest and validate run, under the id validate-<name>-<hash8>.
    """
    return await client.start_workflow(
        "ResearchPipelineWorkflow",
        request_for(cfg, source, until),
        id=cfg.workflow_id("validate" if until == "validate" else "pipeline"),
        task_queue=QUEUE_CONTROL,
        result_type=PipelineResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=search.run_attributes("pipeline", cfg.name),
    )


async def stage_progress(handle) -> dict[str, str]:
    """In-stage progress of running stages from their latest heartbeat: {stage: "5/22 fold 4"}."""
    out = {}
    desc = await handle.describe()
    for pa in desc.raw_description.pending_activities:
        if not pa.heartbeat_details.payloads:
            continue
        beat = json.loads(pa.heartbeat_details.payloads[0].data)
        if isinstance(beat, dict) and beat.get("total"):
            stage = pa.activity_type.name.removeprefix("pipeline.")
            out[stage] = f"{beat['done']}/{beat['total']} {beat.get('note', '')}".rstrip()
    return out


NO_WORKER_HINT_S = 15.0


async def follow(
    handle, echo: bool = True, interval: float = 0.5, alive: Callable[[], str | None] | None = None
) -> PipelineResult:
    """Wait for the result, printing each stage's transition (and in-stage progress) to stderr.

    `alive` (optional) returns an error message once the worker this run depends on has died.
    """
    result_task = asyncio.create_task(handle.result())
    shown: dict[str, str] = {}
    started = time.monotonic()
    while not result_task.done():
        problem = alive() if alive else None
        if problem:
            result_task.cancel()
            raise RuntimeError(problem)
        if echo and not shown and time.monotonic() - started > NO_WORKER_HINT_S and "hint" not in shown:
            shown["hint"] = "shown"
            print(
                "  … no stage has started yet: is a worker running? Start one with `quanto worker`.",
                file=sys.stderr,
                flush=True,
            )
        try:
            stages = await handle.query("progress", result_type=list[StageStatus])
            beats = await stage_progress(handle) if echo else {}
        except Exception:
            stages, beats = [], {}  # no worker polling yet, or the run just closed
        if echo:
            _print_changes(stages, shown)
            for stage, text in beats.items():
                if shown.get(f"{stage}:beat") != text:
                    shown[f"{stage}:beat"] = text
                    print(f"    {stage:<13} {text}", file=sys.stderr, flush=True)
        await asyncio.wait([result_task], timeout=interval)
    result = result_task.result()
    if echo:
        _print_changes(result.stages, shown)
    return result


def _print_changes(stages: list[StageStatus], shown: dict[str, str]) -> None:
    for s in stages:
        state = f"{s.status}:{s.skipped}"
        if shown.get(s.name) == state or s.status == "pending":
            continue
        shown[s.name] = state
        if s.status == "running":
            line = f"  ▸ {s.name:<13} running…"
        elif s.status == "completed":
            what = "skipped: already materialized" if s.skipped else "done"
            line = f"  ✓ {s.name:<13} {what} ({s.seconds or 0:.1f}s)"
        else:
            line = f"  ✗ {s.name:<13} {s.status}"
        print(line, file=sys.stderr, flush=True)


def result_json(result: PipelineResult, run_id: str | None) -> dict[str, Any]:
    """The CLI's JSON for a finished pipeline (same shape for `pipeline run --wait` and `demo`)."""
    return {
        "workflow_id": result.workflow_id,
        "status": result.status,
        "ui_url": ui_link(result.workflow_id, run_id),
        "report_html": result.report_html,
        "report_pdf": result.report_pdf,
        "metrics": result.metrics,
        "stages": [s.model_dump() for s in result.stages],
    }


__all__ = ["WorkflowFailureError", "follow", "request_for", "result_json", "start_pipeline"]
