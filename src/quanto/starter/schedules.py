"""Temporal Schedules from configs/schedules.yaml: apply (create / update / leave unchanged), list,
pause, unpause, trigger, backfill, delete.

Each schedule's definition is hashed into its action's memo (`quanto_hash`), so `apply` can tell an
unchanged schedule from one whose file changed without comparing Temporal's normalized specs. Pausing
is operational: `apply` does not undo a `quanto schedule pause` unless the definition itself changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleBackfill,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
)
from temporalio.service import RPCError, RPCStatusCode

from quanto.config.ingest import IngestConfig
from quanto.config.loading import load_config
from quanto.config.models import PipelineConfig
from quanto.config.schedules import ScheduleEntry, SchedulesConfig
from quanto.contracts import QUEUE_CONTROL
from quanto.errors import InputError
from quanto.workflows import search

PREFIX = "quanto-"
HASH_MEMO = "quanto_hash"
OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
}


def schedule_id(name: str) -> str:
    """Temporal schedule id of a schedule name."""
    return f"{PREFIX}{name}"


def _action(entry: ScheduleEntry, base: Path) -> tuple[ScheduleActionStartWorkflow, str]:
    """The workflow start a schedule performs, and the hash of its definition."""
    path = (base / entry.config).resolve()
    if entry.kind == "ingest":
        from quanto.starter.ingest import request_for as ingest_request

        cfg = load_config(IngestConfig, path)
        # No `today`: each run's plan fixes it when it starts, so a nightly run fetches the new dates.
        req = ingest_request(cfg, str(path), today=None)
        workflow, wf_id, name = "IngestionWorkflow", f"ingest-{cfg.name}-scheduled", cfg.name
    elif entry.kind == "retrain":
        from quanto.config.retrain import load_retrain
        from quanto.starter.retrain import request_for as retrain_request

        rcfg = load_retrain(path)
        # No `today`: each run's plan fixes it, so a window ending today moves with the calendar.
        req = retrain_request(rcfg, str(path), today=None)
        workflow, wf_id, name = "RetrainWorkflow", f"retrain-{rcfg.job_name}-scheduled", rcfg.job_name
    elif entry.kind == "trading":
        from quanto.config.trading import TradingConfig
        from quanto.starter.trade import request_for as trading_request

        tcfg = load_config(TradingConfig, path)
        # No date: each run trades the day it starts (New York), or the job's replay date.
        req = trading_request(tcfg, str(path), None, confirm_live=False)
        workflow, wf_id, name = "TradingDayWorkflow", f"trading-{tcfg.account}-scheduled", tcfg.name
    else:
        from quanto.starter.pipeline import request_for as pipeline_request

        pcfg = load_config(PipelineConfig, path)
        req = pipeline_request(pcfg, str(path), until=entry.until)
        kind = "validate" if entry.until == "validate" else "pipeline"
        workflow, wf_id, name = "ResearchPipelineWorkflow", f"{pcfg.workflow_id(kind)}-scheduled", pcfg.name
    payload = req.model_dump(mode="json")
    definition = {
        "entry": entry.model_dump(mode="json"),
        "workflow": workflow,
        "id": wf_id,
        "request": payload,
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]
    action = ScheduleActionStartWorkflow(
        workflow,
        req,
        id=wf_id,
        task_queue=QUEUE_CONTROL,
        memo={HASH_MEMO: digest},
        typed_search_attributes=search.run_attributes(entry.kind, name),
    )
    return action, digest


def build_schedule(entry: ScheduleEntry, timezone: str, base: Path) -> tuple[Schedule, str]:
    """The Temporal Schedule of one entry, and the hash of its definition."""
    action, digest = _action(entry, base)
    schedule = Schedule(
        action=action,
        spec=ScheduleSpec(cron_expressions=list(entry.cron), time_zone_name=timezone),
        policy=SchedulePolicy(
            overlap=OVERLAP[entry.overlap], catchup_window=dt.timedelta(seconds=entry.catchup_window_s)
        ),
        state=ScheduleState(paused=entry.paused, note=entry.note or None),
    )
    return schedule, digest


async def _current_hash(client: Client, sid: str) -> str | None:
    """The definition hash of an existing schedule; None when there is no such schedule."""
    try:
        desc = await client.get_schedule_handle(sid).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    action = desc.schedule.action
    memo = getattr(action, "memo", None) or {}
    raw = memo.get(HASH_MEMO)
    if raw is None:
        return ""  # created by hand or by an older Quanto: treat as changed
    return json.loads(raw.data) if hasattr(raw, "data") else str(raw)


async def apply(client: Client, cfg: SchedulesConfig, base: Path) -> dict[str, list[str]]:
    """Create missing schedules, update changed ones, leave the rest: {created, updated, unchanged}."""
    out: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    for entry in cfg.schedules:
        sid = schedule_id(entry.name)
        schedule, digest = build_schedule(entry, cfg.timezone, base)
        current = await _current_hash(client, sid)
        if current is None:
            try:
                await client.create_schedule(sid, schedule)
                out["created"].append(entry.name)
                continue
            except ScheduleAlreadyRunningError:
                current = ""  # created concurrently: fall through to update
        if current == digest:
            out["unchanged"].append(entry.name)
            continue
        await client.get_schedule_handle(sid).update(lambda _, new=schedule: ScheduleUpdate(schedule=new))
        out["updated"].append(entry.name)
    return out


async def list_schedules(client: Client) -> list[dict[str, Any]]:
    """Quanto's schedules with their state, next run times and recent runs."""
    rows = []
    async for item in await client.list_schedules():
        if not item.id.startswith(PREFIX):
            continue
        desc = await client.get_schedule_handle(item.id).describe()
        info, state = desc.info, desc.schedule.state
        rows.append(
            {
                "name": item.id.removeprefix(PREFIX),
                "schedule_id": item.id,
                "paused": state.paused,
                "note": state.note,
                "next_runs": [t.isoformat() for t in info.next_action_times[:3]],
                "recent_runs": [
                    {"workflow_id": a.action.workflow_id, "started_at": a.started_at.isoformat()}
                    for a in info.recent_actions[-3:]
                    if hasattr(a.action, "workflow_id")
                ],
                "runs": info.num_actions,
            }
        )
    return sorted(rows, key=lambda r: r["name"])


async def pause(client: Client, name: str, note: str = "paused with quanto schedule pause") -> None:
    """Pause a schedule (its runs in progress continue)."""
    await client.get_schedule_handle(schedule_id(name)).pause(note=note)


async def unpause(client: Client, name: str, note: str = "unpaused with quanto schedule unpause") -> None:
    """Resume a paused schedule."""
    await client.get_schedule_handle(schedule_id(name)).unpause(note=note)


async def trigger(client: Client, name: str) -> None:
    """Start the schedule's action now (the overlap policy still applies)."""
    await client.get_schedule_handle(schedule_id(name)).trigger()


async def backfill(client: Client, name: str, start: dt.datetime, end: dt.datetime) -> None:
    """Run the actions the schedule would have run between `start` and `end`.

    Refused for ingestion schedules: their runs plan up to the day they start, so backfilled copies
    would all fetch "today" again; an ingestion job with `start`/`end` backfills history instead.
    """
    handle = client.get_schedule_handle(schedule_id(name))
    action = (await handle.describe()).schedule.action
    if getattr(action, "workflow", None) == "IngestionWorkflow":
        raise InputError(
            f"schedule {name!r} ingests up to the day each run starts: backfilling it would fetch today "
            "again; run `quanto data ingest` with the start and end you want instead"
        )
    await handle.backfill(
        ScheduleBackfill(start_at=start, end_at=end, overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    )


async def delete(client: Client, name: str) -> None:
    """Delete a schedule (runs it started are not affected)."""
    await client.get_schedule_handle(schedule_id(name)).delete()
