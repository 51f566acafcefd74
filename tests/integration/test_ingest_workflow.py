"""IngestionWorkflow against the real dev server and PostgreSQL: fan-out, idempotent reruns, nightly
top-ups, continue-as-new, visibility, run manifests and replay."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
import yaml
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from quanto.config.ingest import IngestConfig
from quanto.data.catalog import run_sql
from quanto.lake.storage import Lake
from quanto.starter.ingest import start_ingest
from quanto.workflows.ingest import IngestionWorkflow
from tests.integration.conftest import connect

pytestmark = pytest.mark.integration

HISTORIES = Path(__file__).parent / "histories"
TODAY = dt.date(2026, 11, 20)


def ingest_config(folder: Path, name: str, **over) -> IngestConfig:
    """A job file on the packaged sample vendor (daily AAPL/MSFT/IBM), written and validated."""
    data = {
        "name": name,
        "lake_root": str(folder / "lake"),
        "vendor": "sample",
        "symbols": ["AAPL", "MSFT", "IBM"],
        "timeframe": "1d",
        "start": "2010-01-01",
        "end": "2010-07-01",
        "partitions": {"period": "month", "per_activity": 4, "max_parallel": 3},
        "runtime": {"heartbeat_timeout_s": 10},
        **over,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return IngestConfig.model_validate(data)


async def test_ingest_fans_out_then_rerun_is_a_noop_and_nightly_tops_up(session_worker, pg_dsn, tmp_path):
    cfg = ingest_config(tmp_path, "it-sample")
    client = await connect()
    handle = await start_ingest(client, cfg, "test", TODAY)
    assert handle.id == cfg.workflow_id(TODAY) and handle.id.startswith("ingest-it-sample-")
    first = await handle.result()
    # 3 symbols x 6 months = 18 partitions in batches of 4 = 5 activities.
    assert (first.partitions, first.route) == (18, "sample")
    assert first.totals["fetched"] == 18 and first.totals["skipped"] == 0
    lake = Lake(cfg.lake_root)
    counts = run_sql(lake, "SELECT symbol, count(*), count(DISTINCT ts) FROM bars GROUP BY 1 ORDER BY 1")
    # The sample vendor's own bars for the range are the oracle: nothing lost, nothing doubled.
    from quanto.data.sample import load_sample_bars

    expected = load_sample_bars(["AAPL", "IBM", "MSFT"], dt.date(2010, 1, 1), dt.date(2010, 7, 1), "raw")
    want = expected.groupby("symbol").size().to_dict()
    assert {s: (n, d) for s, n, d in counts["rows"]} == {s: (n, n) for s, n in want.items()}
    assert first.totals["rows"] == len(expected)

    # Run manifest in the lake and in PostgreSQL; search attributes for the Web UI.
    manifest = json.loads(lake.abspath(first.manifest).read_text())
    assert manifest["summary"]["route"] == "sample" and manifest["counters"]["rows"] == len(expected)
    from quanto.store.db import connect as db

    with db() as conn:
        run = conn.execute("SELECT kind, status FROM runs WHERE workflow_id = %s", (handle.id,)).fetchone()
        parts = conn.execute(
            "SELECT count(*), sum(rows) FROM ingest_partitions WHERE workflow_id = %s", (handle.id,)
        ).fetchone()
    assert run == ("ingest", "completed") and parts == (18, len(expected))
    desc = await handle.describe()
    attrs = {k.name: v for k, v in desc.typed_search_attributes if k.name.startswith("Quanto")}  # type: ignore[misc]
    assert attrs == {"QuantoKind": "ingest", "QuantoConfig": "it-sample", "QuantoStage": "done"}

    # Same request again: same workflow id, a new run that fetches nothing.
    again = await (await start_ingest(client, cfg, "test", TODAY)).result()
    assert again.totals["fetched"] == 0 and again.totals["skipped"] == 18 and again.totals["rows"] == 0

    # A "nightly" run with a later end: only the new dates are fetched; the partial month is topped up.
    later = cfg.model_copy(update={"end": dt.date(2010, 7, 20)})
    nightly = await (await start_ingest(client, later, "test", TODAY)).result()
    assert nightly.partitions == 21 and nightly.totals["fetched"] == 3 and nightly.totals["skipped"] == 18
    expected = load_sample_bars(["AAPL", "IBM", "MSFT"], dt.date(2010, 1, 1), dt.date(2010, 7, 20), "raw")
    total = run_sql(lake, "SELECT count(*), count(DISTINCT (symbol, ts)) FROM bars")["rows"][0]
    assert total == (len(expected), len(expected))

    history = await handle.fetch_history()
    if os.environ.get("QUANTO_SAVE_HISTORIES"):
        (HISTORIES / "ingestion_sample.json").write_text(history.to_json())
    replayer = Replayer(workflows=[IngestionWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


async def test_long_plans_continue_as_new_and_keep_totals(session_worker, pg_dsn, tmp_path):
    cfg = ingest_config(
        tmp_path,
        "it-can",
        symbols=["AAPL"],
        start="2010-01-01",
        end="2010-03-01",
        partitions={"period": "day", "per_activity": 2, "max_parallel": 3, "batches_per_run": 5},
    )
    client = await connect()
    handle = await start_ingest(client, cfg, "test", TODAY)
    result = await handle.result()
    # 38 trading days, one partition each, 19 batches, 5 per run: 4 runs, every batch counted once.
    assert result.partitions == 38 and result.totals["fetched"] == 38 and result.totals["skipped"] == 0
    first = await client.get_workflow_handle(handle.id, run_id=handle.result_run_id).describe()
    assert first.status.name == "CONTINUED_AS_NEW"
    runs = [wf async for wf in client.list_workflows(f'WorkflowId = "{handle.id}"')]
    assert len(runs) == 4
    rows = run_sql(Lake(cfg.lake_root), "SELECT count(*) FROM bars")["rows"][0][0]
    assert rows == result.totals["rows"] == 38


async def test_replay_saved_ingestion_histories():
    saved = sorted(HISTORIES.glob("ingestion_*.json"))
    assert saved, "no saved IngestionWorkflow history: run with QUANTO_SAVE_HISTORIES=1"
    from temporalio.client import WorkflowHistory

    replayer = Replayer(workflows=[IngestionWorkflow], data_converter=pydantic_data_converter)
    for path in saved:
        await replayer.replay_workflow(WorkflowHistory.from_json(path.stem, path.read_text()))
