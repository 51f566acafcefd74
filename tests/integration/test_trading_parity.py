"""Parity: a historical session replayed through the trading loop and the local paper exchange gives
the backtest's fills and P&L on the same bars, model and config — to the cent."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from quanto.backtest.metrics import periods_per_year_for
from quanto.backtest.portfolio import simulate
from quanto.backtest.signals import signals_from_predictions
from quanto.execution import day
from quanto.execution.replay import replay_bars, session_times
from quanto.execution.strategy import SessionModel
from quanto.models.base import Design
from quanto.store import trading as records
from quanto.store.db import connect
from tests.integration.trading_support import (
    local_exchange,
    trade_in_process,
    trading_config,
    train_research_model,
)

pytestmark = pytest.mark.integration
DATE = dt.date(2024, 3, 15)


@pytest.fixture
def exchange_port():
    with local_exchange() as port:
        yield port


def backtest_of(cfg, ctx, model_id):
    """The backtest of the same session: the model's predictions on the same bars (computed in one
    batch), the backtest's signals, `portfolio.simulate` with close_at_end (the session-close flatten)."""
    bars, _ = replay_bars(cfg, ctx, DATE)
    times = session_times(cfg.calendar, DATE)
    model = SessionModel.load(ctx.lake, model_id)
    table = model.features(bars)
    session = table[(table["ts"] >= times.open) & (table["ts"] < times.close)].reset_index(drop=True)
    design = Design(session, list(model.model.features))
    preds = session[["symbol", "ts"]].assign(prediction=model.model.predict(design, np.arange(len(session))))
    decisions = signals_from_predictions(preds, cfg.strategy, model.objective)
    session_bars = bars[(bars["ts"] >= times.open) & (bars["ts"] < times.close)]
    strategy = cfg.strategy.model_copy(update={"close_at_end": True})
    return simulate(session_bars, decisions, strategy, periods_per_year_for(cfg.universe.timeframe))


def test_replayed_session_matches_the_backtest_to_the_cent(tmp_path, pg_dsn, exchange_port):
    lake_root = tmp_path / "lake"
    model_id = train_research_model(lake_root, pg_dsn)
    cfg = trading_config(lake_root, exchange_port)
    wid = cfg.workflow_id(DATE)
    stats, events, ctx = trade_in_process(cfg, pg_dsn, model_id, "parity")
    assert stats["bars"] == 390 and stats["refused"] == 0 and stats["state"] == "ACTIVE"
    assert sum(kind == "progress" for kind, _ in events) == 390

    broker = day.open_broker(cfg)
    ours = sorted(broker.fills(), key=lambda f: (f.symbol, f.ts, f.client_order_id))
    ref = backtest_of(cfg, ctx, model_id)
    theirs = ref.fills.sort_values(["symbol", "ts"], kind="stable")
    assert len(ours) == len(theirs) > 50
    for f, (_, r) in zip(ours, theirs.iterrows(), strict=True):
        assert (f.symbol, f.side) == (r["symbol"], r["side"])
        assert f.qty == pytest.approx(r["qty"], rel=1e-9)
        assert f.price == pytest.approx(r["price"], rel=1e-12)
        assert round(f.commission, 2) == round(r["commission"], 2)
    account = broker.account()
    final = ref.equity["equity"].iloc[-1]
    assert abs(account.equity - final) < 0.005, (account.equity, final)
    assert all(p.qty == 0 for p in broker.positions())  # flattened at the close

    with connect(pg_dsn) as conn:
        recorded = records.session_records(conn, wid)
    assert len(recorded["fills"]) == len(ours)
    assert recorded["orders"]["client_order_id"].is_unique
    pnl = recorded["pnl"].sort_values("ts")
    assert pnl["equity"].iloc[-1] == pytest.approx(account.equity, abs=0.005)
    risk = recorded["risk"]
    assert (risk["action"] == "approve").sum() == len(recorded["orders"])
    assert (risk["action"] == "alert").sum() == risk.loc[
        risk["action"] == "alert", "rule"
    ].nunique()  # once each
    assert isinstance(pd.Timestamp(pnl["ts"].iloc[0]), pd.Timestamp)
