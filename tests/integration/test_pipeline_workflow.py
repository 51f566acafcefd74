"""ResearchPipelineWorkflow against the real dev server: results, failures, visibility and replay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from quanto.starter.pipeline import start_pipeline
from quanto.workflows.pipeline import ResearchPipelineWorkflow
from quanto.workflows.training import TrainingWorkflow
from tests.integration.conftest import DAILY, connect, training_child, training_progress, write_config

pytestmark = pytest.mark.integration

HISTORIES = Path(__file__).parent / "histories"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daily_run(session_worker, tmp_path_factory):
    """One completed daily pipeline: (handle, result)."""
    _, cfg = write_config(tmp_path_factory.mktemp("daily"), "it-daily", DAILY)
    client = await connect()
    handle = await start_pipeline(client, cfg, "test")
    result = await handle.result()
    # This run's training child (a later start of the same job is a new run with its own child).
    child = await training_child(client, handle)
    return handle, result, cfg, child


@pytest.mark.asyncio(loop_scope="module")
async def test_pipeline_completes_with_reports_records_and_search_attributes(daily_run, pg_dsn):
    handle, result, cfg, _ = daily_run
    assert result.status == "completed"
    assert [s.name for s in result.stages][0] == "ingest" and all(
        s.status == "completed" for s in result.stages
    )
    assert Path(result.report_html).is_file() and result.report_pdf is None  # formats: [html]
    assert result.metrics["trades"] > 0 and result.metrics["sharpe"] is not None
    # Stage results travel as references: the whole result payload stays small.
    assert len(result.model_dump_json()) < 64_000
    desc = await handle.describe()
    attrs = {k.name: v for k, v in desc.typed_search_attributes if k.name.startswith("Quanto")}  # type: ignore[misc]
    assert attrs == {"QuantoKind": "pipeline", "QuantoConfig": "it-daily", "QuantoStage": "done"}
    from quanto.store.db import connect as db

    with db() as conn:
        stages = {
            r[0] for r in conn.execute("SELECT stage FROM manifests WHERE workflow_id = %s", (handle.id,))
        }
        run = conn.execute("SELECT status, metrics FROM runs WHERE workflow_id = %s", (handle.id,)).fetchone()
        model = conn.execute("SELECT model_id, stage FROM models WHERE model_id LIKE 'it-daily-%'").fetchone()
    assert stages == {s.name for s in result.stages}
    assert run[0] == "completed" and run[1] == result.metrics
    assert model[1] == "candidate"


@pytest.mark.asyncio(loop_scope="module")
async def test_second_start_reuses_every_stage(daily_run):
    handle, first, cfg, _ = daily_run
    client = await connect()
    again = await start_pipeline(client, cfg, "test")
    assert again.id == handle.id  # business-key workflow id
    result = await again.result()
    assert len(result.stages) == 8 and all(s.skipped for s in result.stages)
    assert result.metrics == first.metrics


@pytest.mark.asyncio(loop_scope="module")
async def test_replay_current_and_saved_histories(daily_run):
    """Both workflow types replay their fresh history and every saved one (the code stays
    deterministic, and compatible with runs started before a change)."""
    handle, _, _, child = daily_run
    for workflow_cls, h, prefix in (
        (ResearchPipelineWorkflow, handle, "research_pipeline"),
        (TrainingWorkflow, child, "training"),
    ):
        history = await h.fetch_history()
        if os.environ.get("QUANTO_SAVE_HISTORIES"):  # refresh the saved histories on purpose only
            HISTORIES.mkdir(exist_ok=True)
            # With its workflow id: the pipeline derives its child's id from it.
            saved = {"workflow_id": h.id, "history": json.loads(history.to_json())}
            (HISTORIES / f"{prefix}_daily.json").write_text(json.dumps(saved))
        replayer = Replayer(workflows=[workflow_cls], data_converter=pydantic_data_converter)
        await replayer.replay_workflow(history)
        saved = sorted(HISTORIES.glob(f"{prefix}_*.json"))
        assert saved, f"tests/integration/histories/ must hold saved {prefix} histories"
        for path in saved:
            from temporalio.client import WorkflowHistory

            doc = json.loads(path.read_text())
            if "workflow_id" in doc:
                history = WorkflowHistory.from_json(doc["workflow_id"], doc["history"])
            else:  # saved before the workflow id was kept beside the history
                history = WorkflowHistory.from_json(path.stem, doc)
            await replayer.replay_workflow(history)


@pytest.mark.asyncio(loop_scope="module")
async def test_training_child_ran_one_activity_per_fold(daily_run):
    _, result, _, child = daily_run
    progress = await training_progress(child)
    wf = result.results["walk_forward"]
    assert progress.stage == "done" and progress.done == progress.folds == wf.counters["folds"] >= 2
    history = await child.fetch_history()
    types = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert types == ["training.plan", *["training.fold"] * wf.counters["folds"], "training.finalize"]
    assert wf.summary["canary"] is not None and "statistics" in wf.summary


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_data_fails_fast_without_retries(session_worker, tmp_path):
    # Far more bad ticks than the configured tolerance: validation must stop the run, non-retryably.
    _, cfg = write_config(
        tmp_path,
        "it-too-dirty",
        DAILY,
        universe={
            "vendor": "synthetic",
            "symbols": ["BAD0"],
            "timeframe": "1min",
            "start": "2024-03-04",
            "end": "2024-03-06",
            "synthetic": {"bad_tick_rate": 0.05},
        },
        validation={"max_quarantine_share": 0.01},
    )
    client = await connect()
    handle = await start_pipeline(client, cfg, "test")
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    message = str(info.value.cause)
    assert "stage validate failed" in message and "max_quarantine_share" in message
    history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) == 1  # InputError is non-retryable
    desc = await handle.describe()
    assert {k.name: v for k, v in desc.typed_search_attributes}["QuantoStage"] == "failed:validate"  # type: ignore[misc]
