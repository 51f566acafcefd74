"""IngestionWorkflow with the live stream on: history over REST, then the stream activity follows the
session until the `stop_stream` signal, backfilling an outage; the result reports what it wrote."""

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
from tests.fakes.vendor_ws import FakeAlpacaServer
from tests.integration.conftest import connect, stop_process_group, wait_for

pytestmark = pytest.mark.integration

KEYS = {"ALPACA_API_KEY_ID": ALPACA_KEY_ID, "ALPACA_API_SECRET_KEY": ALPACA_SECRET_KEY}
TODAY = dt.date(2024, 1, 3)
OPEN = dt.datetime(2024, 1, 3, 14, 30, tzinfo=dt.UTC)


async def test_history_then_stream_until_stopped(own_server, pg_dsn, tmp_path):
    ws = FakeAlpacaServer(
        ["AAPL", "MSFT"], OPEN, steps=30, outages={10: 4}, interval_s=0.05,
        credentials={"key": ALPACA_KEY_ID, "secret": ALPACA_SECRET_KEY},
    )  # fmt: skip
    with FakeVendorServer() as rest, ws:
        cfg = IngestConfig.model_validate(
            {
                "name": "it-stream",
                "lake_root": str(tmp_path / "lake"),
                "vendor": "alpaca",
                "symbols": ["AAPL", "MSFT"],
                "timeframe": "1min",
                "start": "2024-01-02",
                "alpaca": {
                    "rest": {"base_url": rest.base_url, "rate_per_s": 50, "burst": 10},
                    "stream": {
                        "enabled": True,
                        "url": ws.url,
                        "flush_rows": 10,
                        "flush_s": 1,
                        "duration_s": 600,
                        "reconnect_initial_s": 0.05,
                    },  # fmt: skip
                },
                "runtime": {"heartbeat_timeout_s": 5},
            }
        )
        worker = start_worker(tmp_path / "worker.log", env=KEYS)
        try:
            client = await connect()
            handle = await start_ingest(client, cfg, "test", TODAY)

            async def streaming():
                p = await handle.query("progress", result_type=IngestProgress)
                return p.stage == "streaming" and ws.done

            await wait_for(streaming, timeout=120, what="the stream to deliver every step")
            await handle.signal("stop_stream")
            result = await handle.result()
        finally:
            stop_process_group(worker, signal.SIGTERM)
        history_bars = rest.expected_bars(
            "alpaca", "AAPL", "1min", dt.datetime(2024, 1, 2, tzinfo=dt.UTC), OPEN
        ).height
    assert result.partitions == 2 and result.totals["fetched"] == 2  # yesterday, per symbol
    assert result.stream is not None and result.stream.gaps == 2 and result.stream.backfilled_rows == 8
    assert result.stream.reconnects >= 1
    lake = Lake(cfg.lake_root)
    bars = pl.from_arrow(open_catalog(lake).sql("SELECT symbol, ts FROM bars").arrow())
    assert bars.height == bars.unique().height == 2 * (history_bars + 30)  # history + every streamed minute
    desc = await handle.describe()
    attrs = {k.name: v for k, v in desc.typed_search_attributes if k.name.startswith("Quanto")}  # type: ignore[misc]
    assert attrs["QuantoStage"] == "done" and attrs["QuantoKind"] == "ingest"
