"""Durability is the product: a killed worker and a restarted server never lose a pipeline run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pandas as pd
import pytest

from quanto.contracts import PipelineResult
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.research import run_pipeline_local
from quanto.starter.pipeline import start_pipeline
from quanto.store.db import connect as db_connect
from tests.conftest import start_worker
from tests.integration.conftest import (
    INTRADAY,
    connect,
    pending_activity,
    stop_process_group,
    training_child,
    training_progress,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

BEFORE_KILL = ("ingest", "validate", "features", "labels", "train")


def manifests_by_stage(lake: Lake) -> dict[str, dict]:
    """Every stage manifest in the lake, by stage name."""
    out = {}
    for path in lake.abspath("manifests").glob("*/*.json"):
        m = json.loads(path.read_text())
        out[m["stage"]] = m
    return out


def uninterrupted(tmp_path, name: str):
    """The same job run straight through in one process, into its own lake."""
    _, cfg = write_config(tmp_path / "reference", name, INTRADAY)
    ctx = StageContext(lake=Lake(cfg.lake_root), record=False)
    results = run_pipeline_local(cfg, ctx)
    return results, ctx.lake


def fold_events(history, activity_type: str = "training.fold") -> tuple[int, int]:
    """(activities of that type scheduled, attempts started beyond the first) in a workflow history."""
    scheduled = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    }
    retried = sum(
        1
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
        and e.activity_task_started_event_attributes.attempt > 1
    )
    return len(scheduled), retried


async def test_worker_sigkill_mid_training_reruns_only_unfinished_folds(own_server, pg_dsn, tmp_path):
    _, cfg = write_config(tmp_path, "durable-kill", INTRADAY)
    lake = Lake(cfg.lake_root)
    client = await connect()
    worker = start_worker(tmp_path / "worker-1.log")
    try:
        handle = await start_pipeline(client, cfg, "test")
        child = await wait_for(
            lambda: _started_child(client, handle), 240, "the training child workflow to start"
        )

        async def folds_done_and_running():
            p = await training_progress(child)
            return p if p is not None and p.done >= 1 and p.running else None

        progress = await wait_for(folds_done_and_running, 240, "finished folds while others train")
        stop_process_group(worker, signal.SIGKILL)
        killed_at = time.time()
        before = manifests_by_stage(lake)
        assert set(BEFORE_KILL) <= set(before), f"stages done before the kill: {sorted(before)}"
        assert "walk_forward" not in before and "report" not in before
        finished = {
            p.name: p.stat().st_mtime for p in lake.abspath("scratch/walk_forward").glob("*/fold-*.json")
        }
        assert len(finished) >= progress.done
    finally:
        stop_process_group(worker, signal.SIGKILL)

    worker = start_worker(tmp_path / "worker-2.log")
    try:
        result = await handle.result()
    finally:
        code = stop_process_group(worker, wait_s=20)
    assert code == 0, "the worker must shut down cleanly on SIGTERM to its process group"

    assert result.status == "completed"
    after = manifests_by_stage(lake)
    for stage in BEFORE_KILL:
        # Same manifest, same start time: Temporal replayed the recorded result; nothing recomputed.
        assert after[stage]["started_at"] == before[stage]["started_at"], stage
        assert not result.results[stage].skipped
    assert pd.Timestamp(after["walk_forward"]["started_at"]).timestamp() > killed_at - 1
    wf = result.results["walk_forward"].counters
    scheduled, retried = fold_events(await child.fetch_history())
    # Every fold ran as one activity: the folds finished before the kill were never scheduled again,
    # and the ones the kill interrupted were retried (attempt 2) on the new worker.
    assert scheduled == wf["folds"] and retried >= 1, (scheduled, retried, wf)
    for name, mtime in finished.items():
        path = next(lake.abspath("scratch/walk_forward").glob(f"*/{name}"))
        assert path.stat().st_mtime == mtime, f"{name} was trained again after the kill"

    with db_connect() as conn:
        rows = conn.execute(
            "SELECT stage, started_at FROM manifests WHERE workflow_id = %s", (handle.id,)
        ).fetchall()
    assert {r[0] for r in rows} >= set(BEFORE_KILL) | {"walk_forward", "backtest", "report"}

    reference, ref_lake = uninterrupted(tmp_path, "durable-kill")
    assert result.metrics == reference["backtest"].summary["metrics"]
    got = lake.read_frame(result.results["walk_forward"].files("predictions"))
    want = ref_lake.read_frame(reference["walk_forward"].files("predictions"))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


async def _started_child(client, handle):
    child = await training_child(client, handle)
    return child if await training_progress(child) is not None else None


async def test_server_restart_mid_run_completes(own_server, pg_dsn, tmp_path):
    _, cfg = write_config(tmp_path, "durable-restart", INTRADAY)
    client = await connect()
    worker = start_worker(tmp_path / "worker.log")
    try:
        handle = await start_pipeline(client, cfg, "test")
        child = await wait_for(lambda: _started_child(client, handle), 240, "the training child to start")
        await wait_for(lambda: pending_activity(child, "training.fold"), 240, "a fold to start training")
        # Kill the server hard, then start it again on the same port and SQLite file.
        pid = own_server.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        await asyncio.to_thread(own_server.start)
        client = await connect()
        result = await client.get_workflow_handle(handle.id, result_type=PipelineResult).result()
    finally:
        stop_process_group(worker)
    assert result.status == "completed"
    assert result.report_html and pd.io.common.file_exists(result.report_html)
    assert all(s.status == "completed" for s in result.stages)
