"""RetrainWorkflow against the real dev server and worker: a first run promotes (no production model
yet), a second run on the same window keeps it (the same model), both decisions are recorded; the
CLI; replay of the fresh history and of every saved one."""

from __future__ import annotations

import datetime as dt
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

from quanto.config.retrain import load_retrain
from quanto.models.registry import list_models
from quanto.starter.retrain import start_retrain
from quanto.store import records
from quanto.workflows.retrain import STEPS, RetrainWorkflow
from tests.integration.conftest import DAILY, connect, write_config

pytestmark = pytest.mark.integration

HISTORIES = Path(__file__).parent / "histories"
SAVED = "retrain_*.json"


def quanto(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip


@pytest.mark.asyncio
async def test_retrain_promotes_then_keeps_and_records_both(session_worker, pg_dsn, tmp_path):
    # Four features keep the window's features stage short; the rest is the daily research job.
    features = {"names": ["sma_ratio_5", "sma_ratio_20", "ema_ratio_12", "kama_ratio_10"]}
    research, _ = write_config(tmp_path, "it-retrain", DAILY, features=features)
    path = tmp_path / "retrain.yaml"
    path.write_text(
        yaml.safe_dump(
            {"pipeline": research.name, "window": {"months": 18}, "holdout": {"bars": 63}, "margin": 0.01}
        )
    )
    cfg = load_retrain(path)
    client = await connect()
    handle = await start_retrain(client, cfg, str(path), dt.date(2030, 1, 1))
    first = await handle.result()

    assert handle.id == cfg.workflow_id(dt.date(2012, 1, 1))  # window end: the research job's end
    assert (first.window_start, first.window_end) == ("2010-07-01", "2012-01-01")
    assert [s.name for s in first.stages] == list(STEPS) and all(
        s.status == "completed" for s in first.stages
    )
    decision = first.decision
    assert decision.decision == "promote" and decision.promoted and decision.incumbent is None
    assert decision.reason.startswith("no production model of it-retrain; challenger ic")
    assert decision.challenger.startswith("it-retrain-") and decision.holdout_end < "2012-01-01"
    desc = await handle.describe()
    attrs = {k.name: v for k, v in desc.typed_search_attributes if k.name.startswith("Quanto")}  # type: ignore[misc]
    assert attrs == {"QuantoKind": "retrain", "QuantoConfig": "it-retrain", "QuantoStage": "done"}
    child = await client.get_workflow_handle(first.pipeline_workflow_id).describe()
    assert child.status.name == "COMPLETED"
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == ["retrain.plan", "retrain.split", "pipeline.train", "retrain.evaluate"]

    # The same window again, from the CLI: every stage is reused, so the challenger is the production
    # model itself; the rule keeps it, and that decision is recorded too.
    out = quanto("retrain", "run", "-c", str(path), "--wait", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    second = json.loads(out.stdout)
    assert second["workflow_id"] == handle.id and second["decision"] == "keep" and not second["promoted"]
    assert second["challenger"] == second["incumbent"] == decision.challenger
    assert second["challenger_score"] == second["incumbent_score"] == decision.challenger_score
    assert "is the production model already" in second["reason"]

    from quanto.store.db import connect as db

    with db() as conn:
        production = [m.model_id for m in list_models(conn, name="it-retrain", stage="production")]
        rows = records.select_retrain_decisions(conn, name="it-retrain")
    assert production == [decision.challenger]
    assert [(r["decision"], r["promoted"]) for r in rows] == [("keep", False), ("promote", True)]
    assert rows[1]["run_id"] == desc.run_id and rows[0]["run_id"] != desc.run_id
    assert rows[1]["metrics"]["challenger"]["n"] == rows[1]["metrics"]["holdout"]["rows"] > 0
    listed = json.loads(quanto("retrain", "ls", "--name", "it-retrain", "--json").stdout)["decisions"]
    assert [r["id"] for r in listed] == [r["id"] for r in rows]

    if os.environ.get("QUANTO_SAVE_HISTORIES"):  # refresh the saved history on purpose only
        saved = {"workflow_id": handle.id, "history": json.loads(history.to_json())}
        (HISTORIES / "retrain_daily.json").write_text(json.dumps(saved))
    replayer = Replayer(workflows=[RetrainWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


@pytest.mark.asyncio
async def test_replay_saved_retrain_histories():
    saved = sorted(HISTORIES.glob(SAVED))
    assert saved, "no saved RetrainWorkflow history: run the test above with QUANTO_SAVE_HISTORIES=1"
    replayer = Replayer(workflows=[RetrainWorkflow], data_converter=pydantic_data_converter)
    for path in saved:
        doc = json.loads(path.read_text())
        await replayer.replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))
