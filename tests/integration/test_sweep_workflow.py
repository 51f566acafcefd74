"""SweepWorkflow against the real dev server: the pipeline as a child, one activity per grid point,
the leaderboard, the CLI, and replay of fresh and saved histories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from quanto.config.sweep import SweepJob
from quanto.starter.sweep import start_sweep
from quanto.workflows.sweep import SweepWorkflow
from tests.integration.conftest import DAILY, connect, write_config

pytestmark = pytest.mark.integration

HISTORIES = Path(__file__).parent / "histories"
GRID = {"backtest.mode": ["long_flat", "long_short"], "backtest.entry_threshold": [0.0, 0.002]}


@pytest.mark.asyncio
async def test_sweep_backtests_every_point_and_replays(session_worker, tmp_path):
    path, cfg = write_config(tmp_path, "it-sweep", DAILY)
    data = {**yaml.safe_load(path.read_text()), "sweep": {"grid": GRID, "pbo_splits": 4}}
    path.write_text(yaml.safe_dump(data))
    job = SweepJob.model_validate(data)
    client = await connect()
    handle = await start_sweep(client, job, str(path))
    result = await handle.result()

    summary = result.summary
    assert summary["points"] == 4 and len(summary["leaderboard"]) == 4
    assert {json.dumps(r["params"], sort_keys=True) for r in summary["leaderboard"]} == {
        json.dumps(p, sort_keys=True) for p in job.points()
    }
    assert summary["statistics"]["n_trials"] == 4 and summary["pbo"] is not None
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == ["sweep.plan", *["sweep.point"] * 4, "sweep.finalize"]
    child = await client.get_workflow_handle(result.pipeline_workflow_id).describe()
    assert child.status.name == "COMPLETED"

    if os.environ.get("QUANTO_SAVE_HISTORIES"):  # refresh the saved histories on purpose only
        saved = {"workflow_id": handle.id, "history": json.loads(history.to_json())}
        (HISTORIES / "sweep_daily.json").write_text(json.dumps(saved))
    replayer = Replayer(workflows=[SweepWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
    files = sorted(HISTORIES.glob("sweep_*.json"))
    assert files, "tests/integration/histories/ must hold a saved sweep history"
    for file in files:
        doc = json.loads(file.read_text())
        await replayer.replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))

    # The CLI starts the same business key again: the pipeline stages are all skipped, the leaderboard is the same.
    out = subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", "backtest", "sweep", "-c", str(path), "--wait", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["workflow_id"] == handle.id and printed["leaderboard"] == json.loads(
        json.dumps(summary["leaderboard"])
    )
