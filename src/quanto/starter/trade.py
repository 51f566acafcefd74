"""Starting, controlling and watching TradingDayWorkflow from the CLI (`quanto trade ...`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from quanto.config.loading import load_config
from quanto.config.models import PipelineConfig
from quanto.config.trading import TradingConfig
from quanto.contracts import QUEUE_CONTROL, TradingRequest, TradingResult
from quanto.errors import InputError
from quanto.workflows import search

WORKFLOW_TYPE = "TradingDayWorkflow"


def request_for(cfg: TradingConfig, source: str, date: dt.date | None, confirm_live: bool) -> TradingRequest:
    """The workflow input: the job as JSON (lake root absolute) and, for a demo, its bootstrap job.
    `date` None (a schedule's runs): the workflow trades the day it starts, or the replay's date."""
    from quanto.execution.day import check_live
    from quanto.starter.pipeline import request_for as pipeline_request

    check_live(cfg, confirm_live)  # refuse before anything starts
    config = cfg.model_dump(mode="json")
    config["lake_root"] = str(Path(cfg.lake_root).expanduser().resolve())
    bootstrap = None
    if cfg.model.bootstrap:
        path = (Path(source).parent / cfg.model.bootstrap) if source else Path(cfg.model.bootstrap)
        research = load_config(PipelineConfig, path)
        if research.name != cfg.model.job:
            raise InputError(
                f"{path}: model.bootstrap trains job {research.name!r} but model.job is {cfg.model.job!r}"
            )
        bootstrap = pipeline_request(research, str(path)).config
    return TradingRequest(
        config=config,
        config_source=source,
        config_name=cfg.name,
        session_date=date.isoformat() if date else "",
        confirm_live=confirm_live,
        bootstrap=bootstrap,
    )


async def start_trading(
    client: Client, cfg: TradingConfig, source: str, date: dt.date, confirm_live: bool
) -> WorkflowHandle:
    """Start (or attach to) the session's workflow under its business key trading-<account>-<date>;
    InputError when that session already ran."""
    req = request_for(cfg, source, date, confirm_live)
    attributes = TypedSearchAttributes(
        [
            SearchAttributePair(search.KIND, "trading"),
            SearchAttributePair(search.CONFIG, cfg.name),
            SearchAttributePair(search.ACCOUNT, cfg.account),
            SearchAttributePair(search.MODE, cfg.mode),
        ]
    )
    try:
        return await client.start_workflow(
            WORKFLOW_TYPE,
            req,
            id=cfg.workflow_id(date),
            task_queue=QUEUE_CONTROL,
            result_type=TradingResult,
            # A running session is attached to; a finished one is never traded again under its key
            # (its records and the exchange account belong to that run).
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=attributes,
        )
    except WorkflowAlreadyStartedError as err:
        raise InputError(
            f"session {cfg.workflow_id(date)} already ran; see `quanto trade status --id "
            f"{cfg.workflow_id(date)}` (to replay it again, use another account name)"
        ) from err


async def find_session(client: Client, workflow_id: str | None, config: Path | None) -> WorkflowHandle:
    """The session a control command means: `--id`, else the job file's session, else the latest
    running trading workflow (the latest of any status when none runs)."""
    if workflow_id:
        return client.get_workflow_handle(workflow_id)
    if config is not None:
        cfg = load_config(TradingConfig, config)
        return client.get_workflow_handle(cfg.workflow_id(cfg.session_date()))
    latest: Any = None
    async for wf in client.list_workflows(f"WorkflowType = '{WORKFLOW_TYPE}'"):
        running = wf.status == WorkflowExecutionStatus.RUNNING
        key = (running, wf.start_time)
        if latest is None or key > latest[0]:
            latest = (key, wf.id)
    if latest is None:
        raise InputError(
            "no trading session found: start one with `quanto trade start -c configs/trading.yaml`"
        )
    return client.get_workflow_handle(latest[1])


async def status(handle: WorkflowHandle) -> dict[str, Any]:
    """The session's status query plus the workflow's own status."""
    out = await handle.query("status")
    desc = await handle.describe()
    out["workflow_status"] = desc.status.name if desc.status else None
    return out


async def control(handle: WorkflowHandle, signal: str, reason: str | None) -> dict[str, Any]:
    """Send halt / flatten (with a reason) or resume, then wait until the workflow's state shows it."""
    if signal == "resume":
        await handle.signal("resume")
    else:
        await handle.signal(signal, reason or f"{signal} from the command line")
    want = "ACTIVE" if signal == "resume" else "HALTED"
    out: dict[str, Any] = {}
    for _ in range(50):
        out = await handle.query("status")
        if out["state"] == want:
            break
        await asyncio.sleep(0.1)
    return {
        "workflow_id": handle.id,
        "signal": signal,
        "state": out.get("state"),
        "halted_at": out.get("halted_at"),
    }
