"""A worker SIGKILLed in the middle of a large REST ingestion: the run completes after a restart, with no
bar missing and none duplicated, and the partitions finished before the kill are not fetched again."""

from __future__ import annotations

import datetime as dt
import signal

import polars as pl
import pytest

from quanto.config.ingest import IngestConfig
from quanto.contracts import IngestProgress
from quanto.data.catalog import open_catalog
from quanto.lake.storage import Lake
from quanto.starter.ingest import start_ingest
from tests.conftest import start_worker
from tests.fakes.vendor_http import ALPACA_KEY_ID, ALPACA_SECRET_KEY, FakeVendorServer
from tests.integration.conftest import connect, stop_process_group, wait_for

pytestmark = pytest.mark.integration

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN"]
KEYS = {"ALPACA_API_KEY_ID": ALPACA_KEY_ID, "ALPACA_API_SECRET_KEY": ALPACA_SECRET_KEY}


async def test_worker_killed_mid_ingestion_resumes_with_every_bar_once(own_server, pg_dsn, tmp_path):
    # 4 symbols x 41 trading days, one partition per day: 164 REST partitions in 41 batches, each
    # request slowed by 30 ms so the kill lands mid-run.
    with FakeVendorServer(latency_s=0.03) as rest:
        cfg = IngestConfig.model_validate(
            {
                "name": "it-kill",
                "lake_root": str(tmp_path / "lake"),
                "vendor": "alpaca",
                "symbols": SYMBOLS,
                "timeframe": "1min",
                "start": "2024-01-02",
                "end": "2024-03-01",
                "alpaca": {
                    "rest": {"base_url": rest.base_url, "rate_per_s": 20, "burst": 4, "concurrency": 2}
                },
                "partitions": {"period": "day", "per_activity": 4, "max_parallel": 2},
                "runtime": {"heartbeat_timeout_s": 3, "max_attempts": 20},
            }
        )
        client = await connect()
        worker = start_worker(tmp_path / "w1.log", env=KEYS)
        handle = await start_ingest(client, cfg, "test", dt.date(2026, 11, 20))

        async def some_done():
            p = await handle.query("progress", result_type=IngestProgress)
            return p if p.batches_done >= 8 else None

        before = await wait_for(some_done, timeout=120, what="8 batches done")
        assert before.batches_done < before.batches  # the kill lands mid-run
        stop_process_group(worker, signal.SIGKILL, wait_s=5)
        worker = start_worker(tmp_path / "w2.log", env=KEYS)
        try:
            result = await handle.result()
            history = (await handle.fetch_history()).to_json()
        finally:
            stop_process_group(worker, signal.SIGTERM)
        expected = pl.concat(
            [
                rest.expected_bars(
                    "alpaca",
                    s,
                    "1min",
                    dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
                    dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
                )
                for s in SYMBOLS
            ]  # fmt: skip
        )
        requests = rest.counters.requests
    assert result.partitions == 164
    t = result.totals
    # Every batch was counted once; the batches interrupted by the kill skipped what they had finished.
    assert t["fetched"] + t["skipped"] == 164 and t["skipped"] >= 0
    lake = Lake(cfg.lake_root)
    got = pl.from_arrow(open_catalog(lake).sql("SELECT * FROM bars").arrow())
    keys = got.select("symbol", "ts")
    assert keys.height == keys.unique().height == expected.height  # nothing missing, nothing doubled
    joined = got.join(expected, on=["symbol", "ts"], how="inner", suffix="_want")
    assert joined.height == expected.height
    assert (joined["close"] == joined["close_want"]).all() and (
        joined["volume"] == joined["volume_want"]
    ).all()
    # One request per day partition (each fits one page); only partitions in flight at the kill
    # (at most max_parallel x per_activity = 8) were asked for twice.
    assert 164 <= requests <= 164 + 8
    from quanto.store.db import connect as db

    with db() as conn:
        runs_of = conn.execute(
            "SELECT count(DISTINCT run_id) FROM ingest_partitions WHERE workflow_id = %s", (handle.id,)
        ).fetchone()[0]
    assert runs_of == 1  # one workflow run throughout: the kill cost retries, not a restart

    # Keys reached the vendor, and nothing else: not the lake, the worker logs, the workflow history
    # (every payload) or the database.
    with db() as conn:
        rows = [
            str(r)
            for table in ("manifests", "ingest_partitions", "runs")
            for r in conn.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 — fixed table names
        ]
    outputs = {"history": history.encode(), "database": "\n".join(rows).encode()}
    for path in [
        *Lake(cfg.lake_root).root.rglob("*"),
        *tmp_path.glob("*.log"),
        *tmp_path.rglob("worker.log"),
    ]:
        if path.is_file():
            outputs[str(path)] = path.read_bytes()
    assert len(outputs) > 50
    for name, data in outputs.items():
        for secret in KEYS.values():
            assert secret.encode() not in data, f"{name} holds a secret"
