"""The trading job file, deterministic order ids, the strategy's order plan, the trading schedule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from quanto.backtest.portfolio import simulate
from quanto.config.loading import load_config
from quanto.config.models import BacktestConfig
from quanto.config.schedules import SchedulesConfig
from quanto.config.trading import TradingConfig
from quanto.execution.broker import client_order_id
from quanto.execution.strategy import plan_orders

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "name": "t",
    "account": "acct",
    "universe": {"symbols": ["A", "B"]},
    "feed": {"source": "replay", "replay": {"date": "2024-03-15"}},
    "model": {"job": "research"},
}


def config(**over) -> TradingConfig:
    return TradingConfig.model_validate({**BASE, **over})


def test_the_job_file_refuses_what_cannot_trade():
    with pytest.raises(ValidationError, match="next_open"):
        config(strategy={"fill": "this_close"})
    with pytest.raises(ValidationError, match="mode live needs broker kind alpaca"):
        config(mode="live")
    with pytest.raises(ValidationError, match="account must match"):
        config(account="Has Spaces")
    with pytest.raises(ValidationError, match="replay"):
        config(feed={"source": "replay"})
    cfg = config()
    assert cfg.workflow_id(cfg.session_date()) == "trading-acct-2024-03-15"
    assert cfg.broker.base_url("paper") == "http://127.0.0.1:8765"
    live = config(mode="live", broker={"kind": "alpaca"}, feed={"source": "alpaca"})
    assert live.broker.base_url("live") == "https://api.alpaca.markets"


def test_client_order_ids_are_deterministic_and_distinct():
    ts = dt.datetime(2024, 3, 15, 14, 0, tzinfo=dt.UTC)
    a = client_order_id("trading-acct-2024-03-15", ts, "A", "rebalance")
    assert a == client_order_id("trading-acct-2024-03-15", ts, "A", "rebalance")
    assert len(a) <= 48 and a.startswith("q-")
    others = {
        client_order_id("trading-acct-2024-03-15", ts, "B", "rebalance"),
        client_order_id("trading-acct-2024-03-15", ts + dt.timedelta(minutes=1), "A", "rebalance"),
        client_order_id("trading-acct-2024-03-15", ts, "A", "flatten"),
        client_order_id("trading-other-2024-03-15", ts, "A", "rebalance"),
    }
    assert a not in others and len(others) == 4


def test_plan_orders_takes_the_backtests_first_decisions():
    """The orders planned at the first bar's close are the fills the backtest makes at the next open."""
    rng = np.random.default_rng(3)
    ts = pd.date_range("2024-03-15 13:30", periods=3, freq="1min", tz="UTC")
    rows = []
    for s in ("A", "B", "C"):
        px = 100 + rng.normal(0, 1, 3).cumsum()
        rows += [{"symbol": s, "ts": t, "open": p - 0.1, "close": p} for t, p in zip(ts, px, strict=True)]
    bars = pd.DataFrame(rows)
    preds = {"A": 0.02, "B": -0.01, "C": 0.0}
    strategy = BacktestConfig(mode="long_short", fraction=0.1)
    first = bars[bars["ts"] == ts[0]]
    closes = dict(zip(first["symbol"], first["close"], strict=True))
    plans = plan_orders(preds, closes, {}, strategy.initial_capital, strategy, "regression", 3)
    decisions = pd.DataFrame(
        [{"symbol": s, "ts": ts[0], "signal": float(np.sign(p))} for s, p in preds.items()]
        + [{"symbol": s, "ts": t, "signal": float(np.sign(p))} for t in ts[1:] for s, p in preds.items()]
    )
    fills = simulate(bars, decisions, strategy).fills
    at_open = fills[fills["ts"] == ts[1]].set_index("symbol")
    assert {p.symbol for p in plans} == set(at_open.index) == {"A", "B"}  # C has no signal
    for p in plans:
        assert p.side == at_open.loc[p.symbol, "side"]
        assert p.qty == pytest.approx(at_open.loc[p.symbol, "qty"], rel=1e-12)


def test_the_trading_schedule_starts_a_trading_day():
    from quanto.starter.schedules import build_schedule

    path = REPO / "configs" / "schedules.yaml"
    cfg = load_config(SchedulesConfig, path)
    entry = next(e for e in cfg.schedules if e.kind == "trading")
    schedule, digest = build_schedule(entry, cfg.timezone, path.parent)
    assert schedule.action.workflow == "TradingDayWorkflow"
    assert schedule.action.id == "trading-paper-demo-scheduled"
    (req,) = schedule.action.args
    assert req.session_date == ""  # each run trades the day it starts (here: the replay's date)
    assert req.bootstrap is not None and req.bootstrap["name"] == "paper-demo-research"
    assert schedule.state.paused and digest == build_schedule(entry, cfg.timezone, path.parent)[1]
