"""TradingDayWorkflow against the real dev server, PostgreSQL, the local paper exchange and the real
alpaca-py client: halt / resume / flatten mid-session, automatic halt on the daily loss limit, a
worker SIGKILLed while it submits orders, a halted state that survives worker and server restarts,
live mode refused without the confirmation flag, and replay of the saved history."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from quanto.execution import day
from quanto.starter.trade import start_trading
from quanto.store import trading as records
from quanto.store.db import connect as db_connect
from quanto.workflows.trading import TradingDayWorkflow
from tests.conftest import REPO, start_worker
from tests.integration.conftest import connect, stop_process_group, wait_for
from tests.integration.trading_support import (
    local_exchange,
    trading_config,
    train_research_model,
    write_trading_config,
)

pytestmark = pytest.mark.integration
DATE = dt.date(2024, 3, 15)
HISTORIES = Path(__file__).parent / "histories"


@pytest.fixture(scope="module")
def exchange_port():
    with local_exchange() as port:
        yield port


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pg_dsn):
    """A lake with the research job's production model, shared by the module's sessions."""
    lake = tmp_path_factory.mktemp("trading") / "lake"
    return lake, train_research_model(lake, pg_dsn)


async def status(handle) -> dict:
    return await handle.query("status")


async def bars_done(handle, at_least: int, timeout: float = 90) -> dict:
    async def reached():
        s = await status(handle)
        return s if s["bars_done"] >= at_least else None

    return await wait_for(reached, timeout, f"{at_least} bars traded")


def exchange_orders(cfg) -> list:
    return day.open_broker(cfg).orders("all")


@pytest.mark.asyncio(loop_scope="module")
async def test_halt_resume_flatten_mid_session(session_worker, trained, exchange_port, pg_dsn):
    lake, model_id = trained
    # About 40 s for the day: time to signal between bars.
    cfg = trading_config(
        lake,
        exchange_port,
        account="ctl",
        feed={
            "source": "replay",
            "warmup_sessions": 1,
            "replay": {"date": "2024-03-15", "speed": 600, "bars": 120},
        },
    )
    client = await connect()
    handle = await start_trading(client, cfg, "", DATE, confirm_live=False)
    assert handle.id == "trading-ctl-2024-03-15"
    await bars_done(handle, 20)

    await handle.signal("halt", "test halt")
    halted = await wait_for(lambda: _state_is(handle, "HALTED"), 10, "HALTED")
    assert halted["halted_at"] is not None
    await asyncio.sleep(1.0)  # the control activity cancels within the second
    orders_at_halt = exchange_orders(cfg)
    assert not [o for o in orders_at_halt if o.is_open], "open orders must be cancelled after a halt"
    seen = (await status(handle))["bars_done"]
    await bars_done(handle, seen + 15)
    assert len(exchange_orders(cfg)) == len(orders_at_halt), "no order may be submitted while halted"

    await handle.signal("resume")
    await wait_for(lambda: _state_is(handle, "ACTIVE"), 10, "ACTIVE")
    seen = (await status(handle))["bars_done"]
    await bars_done(handle, seen + 20)
    assert len(exchange_orders(cfg)) > len(orders_at_halt), "trading continues after resume"

    await handle.signal("flatten", "test flatten")
    await wait_for(lambda: _state_is(handle, "HALTED"), 10, "HALTED after flatten")
    seen = (await status(handle))["bars_done"]
    await bars_done(handle, seen + 5)
    broker = day.open_broker(cfg)
    assert all(p.qty == 0 for p in broker.positions()), "flatten closes every position"
    after_flatten = len(exchange_orders(cfg))

    result = await handle.result()
    assert result.status == "completed" and result.state == "HALTED"
    assert len(exchange_orders(cfg)) == after_flatten
    assert result.report_html and Path(result.report_html).is_file()
    assert result.report_pdf and Path(result.report_pdf).read_bytes()[:4] == b"%PDF"

    # `quanto trade status --json` prints the contract's fields.
    out = subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", "trade", "status", "--id", handle.id, "--json"],
        capture_output=True, text=True, cwd=REPO, env=os.environ, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["workflow_id"] == handle.id and shown["state"] == "HALTED" and shown["halted_at"]
    assert set(shown) >= {"positions", "orders", "pnl"}
    for order in shown["orders"]:
        assert set(order) >= {"client_order_id", "symbol", "side", "qty", "status", "submitted_at"}

    with db_connect(pg_dsn) as conn:
        recorded = records.session_records(conn, handle.id)
    signals = [p["signal"] for p in recorded["audit"]["payload"] if isinstance(p, dict) and "signal" in p]
    assert {"halt", "resume", "flatten"} <= set(signals)
    assert recorded["orders"]["client_order_id"].is_unique

    history = await handle.fetch_history()
    if os.environ.get("QUANTO_SAVE_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        saved = {"workflow_id": handle.id, "history": json.loads(history.to_json())}
        (HISTORIES / "trading_day.json").write_text(json.dumps(saved))
    replayer = Replayer(workflows=[TradingDayWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
    for path in sorted(HISTORIES.glob("trading_*.json")):
        doc = json.loads(path.read_text())
        await replayer.replay_workflow(WorkflowHistory.from_json(doc["workflow_id"], doc["history"]))


async def _state_is(handle, state: str) -> dict | None:
    s = await status(handle)
    return s if s["state"] == state else None


@pytest.mark.asyncio(loop_scope="module")
async def test_daily_loss_breach_halts_automatically(session_worker, trained, exchange_port):
    lake, _ = trained
    cfg = trading_config(
        lake,
        exchange_port,
        account="loss",
        risk={"max_daily_loss": 0.00005, "max_drawdown": 0.5, "min_window_return": -0.5},
        feed={
            "source": "replay",
            "warmup_sessions": 1,
            "replay": {"date": "2024-03-15", "speed": 0, "bars": 120},
        },
    )
    client = await connect()
    handle = await start_trading(client, cfg, "", DATE, confirm_live=False)
    result = await handle.result()
    assert result.state == "HALTED"
    s = await status(handle)
    assert any(e["rule"] == "max_daily_loss" and e["action"] == "halt" for e in s["risk_events"])
    orders = exchange_orders(cfg)
    assert not [o for o in orders if o.is_open]
    with db_connect() as conn:
        recorded = records.session_records(conn, handle.id)
    halts = recorded["risk"][recorded["risk"]["action"] == "halt"]
    assert len(halts) >= 1
    halted_at = halts["ts"].min()
    late = recorded["orders"][recorded["orders"]["decision_ts"] > halted_at]
    assert late.empty, "no order decided after the automatic halt"


@pytest.mark.asyncio(loop_scope="module")
async def test_worker_killed_while_submitting_never_doubles_an_order(
    own_server, trained, exchange_port, tmp_path
):
    lake, _ = trained
    cfg = trading_config(
        lake,
        exchange_port,
        account="kill",
        feed={
            "source": "replay",
            "warmup_sessions": 1,
            "replay": {"date": "2024-03-15", "speed": 900, "bars": 80},
        },
    )
    worker = start_worker(tmp_path / "w1.log")
    try:
        client = await connect()
        handle = await start_trading(client, cfg, "", DATE, confirm_live=False)
        await bars_done(handle, 10)
        before = len(exchange_orders(cfg))

        async def more_orders():  # kill right as the exchange acknowledges a new order
            return len(exchange_orders(cfg)) > before

        await wait_for(more_orders, 30, "a new order", interval=0.02)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            stop_process_group(worker)
    worker = start_worker(tmp_path / "w2.log")
    try:
        result = await asyncio.wait_for(handle.result(), 240)
    finally:
        stop_process_group(worker)
    assert result.status == "completed"
    assert result.stats["resumed_at"] is not None
    orders = exchange_orders(cfg)
    ids = [o.client_order_id for o in orders]
    assert len(ids) == len(set(ids))
    with db_connect() as conn:
        recorded = records.session_records(conn, handle.id)
    assert sorted(recorded["orders"]["client_order_id"]) == sorted(ids), "every broker order is recorded once"
    assert all(p.qty == 0 for p in day.open_broker(cfg).positions())
    reconciles = [p for p in recorded["audit"]["payload"] if isinstance(p, dict) and "differences" in p]
    assert len(reconciles) >= 2  # at the start and after the restart


@pytest.mark.asyncio(loop_scope="module")
async def test_halt_survives_worker_and_server_restarts(own_server, trained, exchange_port, tmp_path, pg_dsn):
    lake, _ = trained
    cfg = trading_config(
        lake,
        exchange_port,
        account="durable",
        feed={
            "source": "replay",
            "warmup_sessions": 1,
            "replay": {"date": "2024-03-15", "speed": 200, "bars": 150},
        },
    )
    worker = start_worker(tmp_path / "w1.log", env={"TEMPORAL_ADDRESS": own_server.address})
    client = await connect()
    handle = await start_trading(client, cfg, "", DATE, confirm_live=False)
    try:
        await bars_done(handle, 5)
        await handle.signal("halt", "durability test")
        await wait_for(lambda: _state_is(handle, "HALTED"), 10, "HALTED")
        stop_process_group(worker, signal.SIGKILL)
        worker = start_worker(tmp_path / "w2.log", env={"TEMPORAL_ADDRESS": own_server.address})
        assert (await wait_for(lambda: _state_is(handle, "HALTED"), 30, "HALTED after a worker restart"))[
            "halted_at"
        ]

        own_server.stop()
        own_server.start(wait_s=60)
        client = await connect()
        handle = client.get_workflow_handle(handle.id)
        s = await wait_for(lambda: _state_is(handle, "HALTED"), 60, "HALTED after a server restart")
        assert s["halted_at"]

        async def recorded_halt():  # the halt reaches the control row before any order can go out
            with db_connect(pg_dsn) as conn:
                return records.control_state(conn, handle.id)["state"] == "HALTED"

        await wait_for(recorded_halt, 60, "the control row to say HALTED")
        count = len(exchange_orders(cfg))
        seen = (await status(handle))["bars_done"]
        await bars_done(handle, seen + 10, timeout=120)
        assert len(exchange_orders(cfg)) == count, "still no orders after the restarts"
    finally:
        await handle.terminate("test over")
        stop_process_group(worker)


def test_live_mode_refuses_to_start_without_confirmation(tmp_path, trained):
    lake, _ = trained
    cfg = trading_config(
        lake,
        1,
        account="live",
        mode="live",
        broker={"kind": "alpaca", "url": "http://127.0.0.1:1"},
        feed={"source": "replay", "replay": {"date": "2024-03-15"}},
    )
    with pytest.raises(day.LiveModeRefused, match="--confirm-live"):
        day.check_live(cfg, confirmed=False)
    day.check_live(cfg, confirmed=True)
    path = write_trading_config(tmp_path, cfg)
    out = subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", "trade", "start", "-c", str(path), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out
    assert "--confirm-live" in json.loads(out.stdout)["error"]


@pytest.mark.asyncio(loop_scope="module")
async def test_live_feed_skips_a_holiday_and_continues_as_new(own_server, trained, exchange_port, tmp_path):
    """Christmas 2024 is a holiday: the run finds no session and continues as new for the 26th, whose
    last 20 minutes come from Alpaca's stream (a fake server) and are paper-traded on the local exchange."""
    from temporalio.client import WorkflowExecutionStatus

    from tests.fakes.vendor_ws import FakeAlpacaServer
    from tests.integration.trading_support import SYMBOLS

    lake, _ = trained
    start = dt.datetime(2024, 12, 26, 20, 40, tzinfo=dt.UTC)  # 20 minutes before the 16:00 New York close
    with FakeAlpacaServer(symbols=SYMBOLS, start=start, steps=20, interval_s=0.05) as server:
        cfg = trading_config(
            lake,
            exchange_port,
            account="live",
            continue_as_new=True,
            feed={"source": "alpaca", "url": server.url, "warmup_sessions": 1, "grace_s": 1.0},
        )
        keys = {
            "ALPACA_API_KEY_ID": server.credentials["key"],
            "ALPACA_API_SECRET_KEY": server.credentials["secret"],
        }
        worker = start_worker(tmp_path / "worker.log", env=keys)
        client = await connect()
        handle = await start_trading(client, cfg, "", dt.date(2024, 12, 25), confirm_live=False)
        try:

            async def runs():
                found = [wf async for wf in client.list_workflows(f"WorkflowId = '{handle.id}'")]
                continued = [wf for wf in found if wf.status == WorkflowExecutionStatus.CONTINUED_AS_NEW]
                return found if len(continued) >= 2 else None  # the holiday, then the 26th

            found = await wait_for(runs, 180, "the holiday's run and the 26th's run to continue as new")
        finally:
            await client.get_workflow_handle(handle.id).terminate("test over")
            stop_process_group(worker)
    first = min(found, key=lambda wf: wf.start_time)
    history = await client.get_workflow_handle(handle.id, run_id=first.run_id).fetch_history()
    activities = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert activities == ["trading.prepare"]  # a holiday: no session activity
    with db_connect() as conn:
        recorded = records.session_records(conn, handle.id)
    pnl = recorded["pnl"]
    days = {pd_ts.date() for pd_ts in pnl["ts"]}
    assert days == {dt.date(2024, 12, 26)} and len(pnl) == 20  # every streamed minute, nothing else
    assert len(recorded["fills"]) > 0 and recorded["orders"]["client_order_id"].is_unique
