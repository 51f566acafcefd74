"""The live stream end to end without Temporal: a fake vendor WebSocket drops the connection for three
minutes; the follower reconnects, reports the gap, backfills it from the (fake) REST API, and the lake
ends up with every minute exactly once."""

from __future__ import annotations

import datetime as dt
import json
import time

import polars as pl
import pytest

from quanto.config.ingest import IngestConfig
from quanto.data.catalog import open_catalog, run_sql
from quanto.data.live import follow_stream
from quanto.lake.storage import Lake
from tests.fakes.vendor_http import ALPACA_KEY_ID, ALPACA_SECRET_KEY, POLYGON_API_KEY, FakeVendorServer
from tests.fakes.vendor_ws import FakeAlpacaServer, FakePolygonServer

START = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)  # a regular session minute of both fakes


def _until_done(server, grace_s: float = 0.5):
    """cancelled(): true shortly after the fake sent its last step (frames in flight get read)."""
    seen: list[float] = []

    def cancelled() -> bool:
        if server.done and not seen:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > grace_s

    return cancelled


VENDORS = {
    # vendor: (fake stream server, its credentials, the environment the worker reads)
    "alpaca": (
        FakeAlpacaServer,
        {"key": ALPACA_KEY_ID, "secret": ALPACA_SECRET_KEY},
        {"ALPACA_API_KEY_ID": ALPACA_KEY_ID, "ALPACA_API_SECRET_KEY": ALPACA_SECRET_KEY},
    ),
    "polygon": (FakePolygonServer, {"key": POLYGON_API_KEY}, {"POLYGON_API_KEY": POLYGON_API_KEY}),
}


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_outage_is_backfilled_over_rest_and_nothing_is_doubled(vendor, tmp_path, monkeypatch):
    server_type, credentials, env = VENDORS[vendor]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    symbols = ["AAPL", "MSFT"]
    ws = server_type(symbols, START, steps=20, outages={6: 3}, credentials=credentials)
    with FakeVendorServer() as rest, ws:
        cfg = IngestConfig.model_validate(
            {
                "name": "live",
                "lake_root": str(tmp_path / "lake"),
                "vendor": vendor,
                "symbols": symbols,
                "timeframe": "1min",
                "start": "2024-01-02",
                vendor: {
                    "rest": {"base_url": rest.base_url, "rate_per_s": 100, "burst": 100},
                    "stream": {
                        "enabled": True,
                        "url": ws.url,
                        "channels": ["bars"],
                        "flush_rows": 8,
                        "duration_s": 60,
                        "reconnect_initial_s": 0.05,
                    },
                },
            }
        )
        beats: list[dict] = []
        result = follow_stream(
            cfg,
            Lake(cfg.lake_root),
            START.date(),
            heartbeat=beats.append,
            cancelled=_until_done(ws),
            record=False,
        )
        skipped, sent = ws.skipped_bars(), ws.sent_bars()
        backfill_oracle = pl.concat(
            [
                rest.expected_bars(
                    vendor, s, "1min", START + dt.timedelta(minutes=6), START + dt.timedelta(minutes=9)
                )
                for s in symbols
            ]
        )
    assert skipped.height == 3 * len(symbols)
    assert result.reconnects >= 1 and result.gaps == len(symbols)
    assert result.backfilled_rows == skipped.height
    lake_bars = pl.from_arrow(open_catalog(Lake(cfg.lake_root)).sql("SELECT * FROM bars").arrow())
    keys = lake_bars.select("symbol", "ts")
    assert keys.height == keys.unique().height == 20 * len(symbols)  # every minute, once
    streamed = lake_bars.join(sent.select("symbol", "ts"), on=["symbol", "ts"], how="semi").sort(
        "symbol", "ts"
    )
    assert streamed.select("open", "close", "volume").equals(
        sent.sort("symbol", "ts").select("open", "close", "volume")
    )
    filled = lake_bars.join(skipped.select("symbol", "ts"), on=["symbol", "ts"], how="semi").sort(
        "symbol", "ts"
    )
    assert filled.select("open", "close", "volume").equals(
        backfill_oracle.sort("symbol", "ts").select("open", "close", "volume")
    )
    assert any(b.get("state") == "streaming" for b in beats)
    # Keys were sent to both servers and appear in no file the follower wrote.
    for path in Lake(cfg.lake_root).root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in env.values()), path
    manifest = next(Lake(cfg.lake_root).abspath("manifests/ingest_partition").rglob("*.json"))
    assert json.loads(manifest.read_text())["partition"]["route"] == "stream"


def test_kite_ticks_become_bars_and_an_outage_is_backfilled_with_rest_bars_winning(tmp_path, monkeypatch):
    from tests.fakes.vendor_http import KITE_ACCESS_TOKEN, KITE_API_KEY
    from tests.fakes.vendor_ws import FakeKiteServer

    monkeypatch.setenv("KITE_API_KEY", KITE_API_KEY)
    monkeypatch.setenv("KITE_ACCESS_TOKEN", KITE_ACCESS_TOKEN)
    symbols = ["NSE:INFY", "NSE:TCS"]
    start = dt.datetime(2024, 1, 2, 4, 0, tzinfo=dt.UTC)  # 09:30 IST
    ws = FakeKiteServer(
        symbols, start, steps=20, outages={6: 3},
        tokens={"NSE:INFY": 408065, "NSE:TCS": 2953217},  # the REST fake's instrument list
        credentials={"api_key": KITE_API_KEY, "access_token": KITE_ACCESS_TOKEN},
    )  # fmt: skip
    with FakeVendorServer() as rest, ws:
        cfg = IngestConfig.model_validate(
            {
                "name": "kite-live",
                "lake_root": str(tmp_path / "lake"),
                "vendor": "kite",
                "symbols": symbols,
                "timeframe": "1min",
                "start": "2024-01-02",
                "calendar": "XBOM",
                "kite": {
                    "rest": {"base_url": rest.base_url, "rate_per_s": 100, "burst": 100},
                    "stream": {
                        "enabled": True,
                        "url": ws.url,
                        "flush_rows": 8,
                        "duration_s": 60,
                        "reconnect_initial_s": 0.05,
                    },  # fmt: skip
                },
            }
        )
        result = follow_stream(
            cfg, Lake(cfg.lake_root), start.date(), cancelled=_until_done(ws), record=False
        )
        skipped = ws.skipped_bars()
        oracle = pl.concat(
            [rest.expected_bars("kite", s, "1min", start, start + dt.timedelta(minutes=20)) for s in symbols]
        )
    assert result.reconnects >= 1 and result.gaps == len(symbols) and result.depth > 0
    lake_bars = pl.from_arrow(open_catalog(Lake(cfg.lake_root)).sql("SELECT * FROM bars").arrow())
    keys = lake_bars.select("symbol", "ts")
    assert keys.height == keys.unique().height  # REST backfill replaced the partial edge bars
    assert skipped.select("symbol", "ts").join(keys, on=["symbol", "ts"], how="anti").height == 0
    # Every bar the stream missed comes from REST, exactly.
    filled = lake_bars.join(skipped.select("symbol", "ts"), on=["symbol", "ts"], how="semi").sort(
        "symbol", "ts"
    )
    want = oracle.join(skipped.select("symbol", "ts"), on=["symbol", "ts"], how="semi").sort("symbol", "ts")
    assert filled.select("close", "volume").equals(want.select("close", "volume"))
    depth = run_sql(Lake(cfg.lake_root), "SELECT count(*), min(bid_px_1 < ask_px_1) FROM depth")["rows"][0]
    assert depth[0] == result.depth and depth[1]


def test_a_restarted_follower_backfills_what_the_crash_lost(tmp_path, monkeypatch):
    for k, v in VENDORS["alpaca"][2].items():
        monkeypatch.setenv(k, v)
    symbols = ["AAPL", "MSFT"]
    creds = VENDORS["alpaca"][1]
    with FakeVendorServer() as rest:

        def job(url: str) -> IngestConfig:
            return IngestConfig.model_validate(
                {
                    "name": "restart", "lake_root": str(tmp_path / "lake"), "vendor": "alpaca",
                    "symbols": symbols, "timeframe": "1min", "start": "2024-01-02",
                    "alpaca": {"rest": {"base_url": rest.base_url, "rate_per_s": 100, "burst": 100},
                               "stream": {"enabled": True, "url": url, "flush_rows": 4, "duration_s": 60}},
                }
            )  # fmt: skip

        first = FakeAlpacaServer(symbols, START, steps=10, credentials=creds)
        with first:
            follow_stream(job(first.url), Lake(tmp_path / "lake"), START.date(), cancelled=_until_done(first),
                          record=False)  # fmt: skip
        # The process died; a new attempt connects 5 minutes later: minutes 10..14 were never received.
        later = FakeAlpacaServer(symbols, START + dt.timedelta(minutes=15), steps=5, credentials=creds)
        with later:
            second = follow_stream(job(later.url), Lake(tmp_path / "lake"), START.date(),
                                   cancelled=_until_done(later), record=False)  # fmt: skip
        lost = pl.concat(
            [
                rest.expected_bars(
                    "alpaca", s, "1min", START + dt.timedelta(minutes=10), START + dt.timedelta(minutes=15)
                )
                for s in symbols
            ]  # fmt: skip
        )
    assert second.gaps == len(symbols) and second.backfilled_rows == lost.height == 5 * len(symbols)
    bars = pl.from_arrow(open_catalog(Lake(tmp_path / "lake")).sql("SELECT * FROM bars").arrow())
    keys = bars.select("symbol", "ts")
    assert keys.height == keys.unique().height == 20 * len(symbols)  # minutes 0..19, each once
    filled = bars.join(lost.select("symbol", "ts"), on=["symbol", "ts"], how="semi").sort("symbol", "ts")
    assert filled["close"].to_list() == lost.sort("symbol", "ts")["close"].to_list()
