"""A session on a live feed: Alpaca's data stream (a fake server speaking its wire format) feeds the
trading loop, which paper-trades those bars on the local exchange — the warm-up from the lake."""

from __future__ import annotations

import datetime as dt

import pytest

from quanto.execution import day
from quanto.store import trading as records
from quanto.store.db import connect
from tests.fakes.vendor_ws import FakeAlpacaServer
from tests.integration.trading_support import (
    SYMBOLS,
    local_exchange,
    trade_in_process,
    trading_config,
    train_research_model,
)

pytestmark = pytest.mark.integration
DATE = dt.date(2024, 3, 15)
LAST_HALF_HOUR = dt.datetime(2024, 3, 15, 19, 30, tzinfo=dt.UTC)  # 15:30 New York: 30 bars to the close


@pytest.fixture
def exchange_port():
    with local_exchange() as port:
        yield port


def test_live_stream_bars_are_traded_until_the_close(tmp_path, pg_dsn, exchange_port, monkeypatch):
    lake_root = tmp_path / "lake"
    model_id = train_research_model(lake_root, pg_dsn)
    with FakeAlpacaServer(symbols=SYMBOLS, start=LAST_HALF_HOUR, steps=30, outages={10: 2}) as server:
        monkeypatch.setenv("ALPACA_API_KEY_ID", server.credentials["key"])
        monkeypatch.setenv("ALPACA_API_SECRET_KEY", server.credentials["secret"])
        cfg = trading_config(
            lake_root,
            exchange_port,
            account="live-feed",
            feed={"source": "alpaca", "url": server.url, "warmup_sessions": 1, "grace_s": 1.0},
        )
        wid = cfg.workflow_id(DATE)
        stats, events, _ = trade_in_process(cfg, pg_dsn, model_id, "live", DATE)
        sent = server.sent_bars()
    # Every minute the stream delivered was traded once, in order; the outage's minutes never came.
    traded = [p["bar_ts"] for kind, p in events if kind == "progress"]
    assert traded == sorted(set(traded))
    assert len(traded) == stats["bars"] == sent["ts"].n_unique() == 28
    assert traded[-1] == "2024-03-15T19:59:00+00:00"  # the session's last minute ends the loop
    assert stats["orders"] > 0 and stats["fills"] > 0
    broker = day.open_broker(cfg)
    assert all(p.qty == 0 for p in broker.positions())  # flattened at the close
    with connect(pg_dsn) as conn:
        recorded = records.session_records(conn, wid)
    assert len(recorded["fills"]) == len(broker.fills())
    assert recorded["orders"]["client_order_id"].is_unique
