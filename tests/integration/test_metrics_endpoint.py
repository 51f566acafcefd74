"""The worker's Prometheus endpoint, scraped over HTTP after real runs: Quanto's series (also those
counted in the compute process pool) and the Temporal SDK's; the retry interceptor counts retries."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import urllib.request
import uuid
from datetime import timedelta

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from quanto.observability.metrics import TEMPORAL_SDK_METRICS
from quanto.starter.ingest import start_ingest
from quanto.starter.pipeline import start_pipeline
from quanto.starter.server import DevServer
from quanto.workers.build import CountRetries
from tests.conftest import free_port, start_worker
from tests.integration.conftest import DAILY, connect, stop_process_group, write_config
from tests.integration.test_ingest_workflow import ingest_config

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# One synthetic symbol over two days: a run of ingest + validate takes seconds.
SMALL_UNIVERSE: dict = {
    "vendor": "synthetic",
    "symbols": ["MET0"],
    "timeframe": "1min",
    "start": "2024-03-04",
    "end": "2024-03-06",
}


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """(sample name as exposed, labels) -> value; prometheus_client's parser must accept the text."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    list(text_string_to_metric_families(text))
    out = {}
    for line in text.splitlines():
        if (match := SAMPLE.match(line)) is not None:
            name, labels, number = match.groups()
            out[(name, frozenset(LABEL.findall(labels or "")))] = float(number)
    return out


def total(series: dict, name: str, **labels: str) -> float:
    """Sum of `name` over the series whose labels include `labels` (e.g. over instances)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def metrics_worker(pg_dsn, tmp_path_factory):
    """A dev server of this module alone (the session's worker must not take these runs' tasks) and a
    `quanto worker` on it with its metrics endpoint on a free port: (server address, metrics URL)."""
    folder = tmp_path_factory.mktemp("metrics-worker")
    server = DevServer(state_dir=folder / "temporal", port=free_port(), ui_port=0)
    server.start(wait_s=60)
    port = free_port()
    proc = start_worker(
        folder / "worker.log", env={"TEMPORAL_ADDRESS": server.address, "QUANTO_METRICS_PORT": str(port)}
    )
    try:
        yield server.address, f"http://127.0.0.1:{port}/metrics"
    finally:
        code = stop_process_group(proc, wait_s=20)
        server.stop()
    assert code == 0  # the worker (endpoint, pool, metrics folder) stops cleanly


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(metrics_worker, tmp_path_factory):
    """Side by side (the worker's first activities pay its cold start): a validate-only pipeline run
    (ingest on the I/O queue, validate in the compute process pool), a run that fails validation and
    an ingestion job on the sample vendor; then one scrape."""
    address, metrics_url = metrics_worker
    folder = tmp_path_factory.mktemp("metrics-runs")
    client = await connect(address)
    # The pool's first processes start cold (imports) on a busy machine: a roomy heartbeat timeout.
    base = {**DAILY, "runtime": {"heartbeat_timeout_s": 60}}
    _, ok = write_config(
        folder, "it-metrics", base, universe={**SMALL_UNIVERSE, "synthetic": {"bad_tick_rate": 0.002}}
    )
    _, dirty = write_config(
        folder,
        "it-metrics-dirty",
        base,
        universe={**SMALL_UNIVERSE, "symbols": ["MET1"], "synthetic": {"bad_tick_rate": 0.05}},
        validation={"max_quarantine_share": 0.01},
    )
    ingest = ingest_config(folder / "ingest", "it-metrics-ingest", symbols=["IBM"], end="2010-03-01")

    async def fails(handle) -> None:
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    handles = [
        await start_pipeline(client, ok, "test", until="validate"),
        await start_pipeline(client, dirty, "test", until="validate"),
        await start_ingest(client, ingest, "test", dt.date(2026, 11, 20)),
    ]
    await asyncio.gather(handles[0].result(), fails(handles[1]), handles[2].result())
    return scrape(metrics_url)


@pytest.mark.asyncio(loop_scope="module")
async def test_quanto_series_from_the_worker_and_its_process_pool(runs):
    ingest, validate = {"stage": "ingest"}, {"stage": "validate"}
    assert total(runs, "quanto_stage_duration_seconds_count", **ingest, status="completed") >= 2
    # validate runs in the compute queue's process pool: its counts reach the worker's endpoint.
    # (At least: on a busy machine an attempt may outlive its heartbeat timeout and run again.)
    assert total(runs, "quanto_stage_duration_seconds_count", **validate, status="completed") >= 1
    assert total(runs, "quanto_stage_duration_seconds_count", **validate, status="failed") >= 1
    rows_in = total(runs, "quanto_stage_rows_total", **validate, kind="in")
    quarantined = total(runs, "quanto_stage_rows_total", **validate, kind="quarantined")
    assert rows_in > 0 and 0 < quarantined < rows_in
    assert total(runs, "quanto_stage_rows_total", **validate, kind="out") > 0
    assert total(runs, "quanto_stage_rows_total", **ingest, kind="out") >= rows_in
    assert total(runs, "quanto_ingest_rows_total", vendor="sample") > 0
    assert total(runs, "quanto_ingest_seconds_total", vendor="sample") > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_temporal_sdk_series_on_the_same_endpoint(runs):
    names = {name for name, _ in runs}
    exported = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names if n.startswith("temporal_")}
    # Every SDK metric the dashboards and alerts use is really exported under that name.
    assert exported >= TEMPORAL_SDK_METRICS, sorted(TEMPORAL_SDK_METRICS - exported)
    assert total(runs, "temporal_workflow_completed", workflow_type="ResearchPipelineWorkflow") >= 1
    assert total(runs, "temporal_workflow_failed", workflow_type="ResearchPipelineWorkflow") >= 1
    assert total(runs, "temporal_activity_execution_latency_count", activity_type="pipeline.validate") >= 1


# --- retries -------------------------------------------------------------------------------------------


@activity.defn(name="it-metrics.flaky")
async def flaky() -> int:
    """Fails its first attempt, as a vendor outage would."""
    if activity.info().attempt == 1:
        raise RuntimeError("first attempt fails")
    return activity.info().attempt


@workflow.defn(name="it-metrics.Flaky")
class FlakyWorkflow:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity(
            flaky,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3),
        )


async def test_retries_are_counted(temporal_server):
    client = await connect()
    queue = f"it-metrics-{uuid.uuid4().hex[:8]}"
    before = REGISTRY.get_sample_value("quanto_activity_retries_total", {"activity": "it-metrics.flaky"}) or 0
    async with Worker(
        client,
        task_queue=queue,
        workflows=[FlakyWorkflow],
        activities=[flaky],
        interceptors=[CountRetries()],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        attempts = await client.execute_workflow(FlakyWorkflow.run, id=queue, task_queue=queue)
    assert attempts == 2
    after = REGISTRY.get_sample_value("quanto_activity_retries_total", {"activity": "it-metrics.flaky"})
    assert after == before + 1
