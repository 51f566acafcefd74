"""Starting and following RetrainWorkflow from the CLI (and building its schedules' request)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from quanto.config.retrain import RetrainConfig
from quanto.contracts import QUEUE_CONTROL, RetrainRequest, RetrainResult
from quanto.starter.client import ui_link
from quanto.workflows import search


def request_for(cfg: RetrainConfig, source: str, today: dt.date | None) -> RetrainRequest:
    """The workflow input: the retrain job as JSON, its research job's lake root made absolute.
    `today` None leaves the date to the run (schedules: each run retrains on its own day's window)."""
    config = cfg.model_dump(mode="json")
    config["pipeline"]["lake_root"] = str(Path(cfg.job.lake_root).expanduser().resolve())
    return RetrainRequest(
        config=config,
        config_source=source,
        config_name=cfg.job_name,
        today=today.isoformat() if today else "",
    )


def utc_today() -> dt.date:
    """The date a CLI start fixes for the window (the plan activity uses the same clock)."""
    return dt.datetime.now(dt.UTC).date()


async def start_retrain(client: Client, cfg: RetrainConfig, source: str, today: dt.date):
    """Start (or attach to a running) RetrainWorkflow under retrain-<job name>-<hash8 of the config
    and the window end>: a second start on the same window attaches, a finished one runs again."""
    return await client.start_workflow(
        "RetrainWorkflow",
        request_for(cfg, source, today),
        id=cfg.workflow_id(cfg.window_end(today)),
        task_queue=QUEUE_CONTROL,
        result_type=RetrainResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=search.run_attributes("retrain", cfg.job_name),
    )


async def run_retrain(cfg: RetrainConfig, source: str, wait: bool, echo: bool) -> tuple[dict[str, Any], int]:
    """Start the run and, with `wait`, follow its steps to the decision: (CLI JSON, exit code)."""
    from quanto.starter.client import connect
    from quanto.starter.pipeline import follow

    client = await connect()
    handle = await start_retrain(client, cfg, source, utc_today())
    link = ui_link(handle.id, handle.result_run_id)
    if echo:
        print(f"retrain {handle.id}\n  Web UI: {link}", file=sys.stderr)
    if not wait:
        return {"workflow_id": handle.id, "run_id": handle.result_run_id, "ui_url": link}, 0
    try:
        result = await follow(handle, echo=echo)
    except WorkflowFailureError as err:
        cause: Any = err.cause
        while getattr(cause, "cause", None) is not None and not getattr(cause, "message", None):
            cause = cause.cause
        return {"workflow_id": handle.id, "status": "failed", "error": getattr(cause, "message", str(cause)),
                "ui_url": link}, 1  # fmt: skip
    return result_json(result, link), 0


def result_json(result: RetrainResult, link: str) -> dict[str, Any]:
    """The CLI's JSON for a finished retrain run."""
    return {
        "workflow_id": result.workflow_id,
        "status": result.status,
        "ui_url": link,
        "pipeline_workflow_id": result.pipeline_workflow_id,
        "window": {"start": result.window_start, "end": result.window_end},
        **result.decision.model_dump(mode="json"),
        "stages": [s.model_dump() for s in result.stages],
    }


def result_text(out: dict[str, Any]) -> str:
    """The CLI's text for `result_json` (or for a start without --wait, or a failure)."""
    if out.get("status") == "failed":
        return f"retrain failed: {out['error']}\n  {out['ui_url']}"
    if "decision" not in out:
        return f"workflow {out['workflow_id']} started\n  {out['ui_url']}"

    def score(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    verdict = (
        "promoted"
        if out["promoted"]
        else ("promote (recorded only)" if out["decision"] == "promote" else "kept")
    )
    return "\n".join(
        [
            f"workflow {out['workflow_id']}: {verdict}",
            f"  window      {out['window']['start']} .. {out['window']['end']}"
            f"  holdout {out['holdout_start'][:10]} .. {out['holdout_end'][:10]}",
            f"  challenger  {out['challenger']}  {out['metric']} {score(out['challenger_score'])}",
            f"  incumbent   {out['incumbent'] or '—'}  {out['metric']} {score(out['incumbent_score'])}",
            f"  reason      {out['reason']}",
        ]
    )
