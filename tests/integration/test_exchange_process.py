"""The paper exchange as a detached process: ensure_exchange starts one (once), the adapter trades on
it, stop_exchange ends it."""

from __future__ import annotations

import datetime as dt

import pytest

from quanto.execution.alpaca import AlpacaBroker
from quanto.execution.broker import OrderRequest
from quanto.execution.replay_market import LocalReplayMarket
from quanto.starter.exchange import ensure_exchange, exchange_status, stop_exchange
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_ensure_trade_and_stop_a_detached_exchange(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTO_HOME", str(tmp_path))
    port = free_port()
    assert exchange_status(port)["running"] is False
    url = ensure_exchange(port)
    try:
        status = exchange_status(port)
        assert status["running"] and status["url"] == url == f"http://127.0.0.1:{port}"
        assert (tmp_path / f"exchange-{port}.pid").read_text() == str(status["pid"])
        assert ensure_exchange(port) == url and exchange_status(port)["pid"] == status["pid"]  # not twice

        market = LocalReplayMarket(url, "process-test")
        market.create_account(10_000.0)
        ts = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)
        bar = {"symbol": "AAA", "timeframe": "1min", "open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0}
        market.deliver([{**bar, "ts": ts}])
        broker = AlpacaBroker(url, "process-test", "secret")
        broker.submit(OrderRequest("q-1", "AAA", "buy", 3))
        market.deliver([{**bar, "ts": ts + dt.timedelta(minutes=1), "open": 11.0}])
        assert broker.positions()[0].avg_entry_price == 11.0
        assert exchange_status(port)["accounts"] == 1
    finally:
        assert stop_exchange(port) is True
    assert exchange_status(port)["running"] is False
    assert not (tmp_path / f"exchange-{port}.pid").exists()
    assert stop_exchange(port) is False
    assert (tmp_path / "logs" / f"exchange-{port}.log").exists()
