"""Benchmark: a trading day end to end — bar arrival to orders acknowledged through the whole loop,
and a halt signal to the last open order cancelled through Temporal.

Setup (all real, all local): a throwaway PostgreSQL database, the local paper exchange as a detached
process, 50 synthetic symbols, a LightGBM model trained in-process on five sessions and promoted.

- `loop_bar_to_ack_50_symbols`: `TradingLoop.bar` for each bar of a replayed session (from a fresh
  account each time, so that about every symbol places an order: the worst case): the bar is
  delivered to the exchange, fills are synced, account risk is checked, features are updated and the
  model predicts, the orders are risk-checked and submitted (4 threads) inside the submission gate.
  Latency = each order's acknowledgement − the bar's arrival (before the delivery); the line also
  gives the p99 of the bar's last acknowledgement. Peer: a bare alpaca-py loop on a second account — deliver the bar, then submit the
  same number of market orders from the same thread pool with `TradingClient.submit_order`, no
  features, model, risk or records: the floor any loop pays. Goal: p99 < 100 ms.
- `halt_signal_to_cancelled`: a TradingDayWorkflow replays a session slowly (a dev server and a
  `quanto worker` of their own); right after a bar's orders are acknowledged (open at the exchange),
  the clock starts, `halt` is signalled, and it stops when the exchange has no open order left.
  `resume` follows, and the next bar's orders give the next sample. Peer: `TradingClient.cancel_orders`
  on the exchange directly (no workflow, no database gate). Goal: p99 < 1 s.

$QUANTO_BENCH_BARS (default 150) bars for the loop, $QUANTO_BENCH_HALTS (default 12) halts. One JSON
line per case (DESIGN.md section 9): `ours_s` / `peer_s` are p99 in seconds, `ratio` = peer / ours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

BARS = int(os.environ.get("QUANTO_BENCH_BARS", 150))
HALTS = int(os.environ.get("QUANTO_BENCH_HALTS", 12))
SYMBOLS = [f"S{i:02d}" for i in range(50)]
DATE = dt.date(2024, 3, 15)
REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def research(lake: Path) -> dict:
    return {
        "name": "bench-trading-research",
        "lake_root": str(lake),
        "universe": {
            "vendor": "synthetic",
            "symbols": SYMBOLS,
            "timeframe": "1min",
            "start": "2024-02-05",
            "end": "2024-02-10",
            "synthetic": {"seed": 5, "bad_tick_rate": 0.0},
        },
        "features": {"names": ["logret_1", "logret_5", "logret_20", "vol_20", "ret_skew_20"]},
        "label": {"kind": "forward_return", "horizon": 5},
        "model": {"params": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 200}, "n_jobs": 1},
        "walk_forward": {"train_bars": 1500, "test_bars": 300},
        "evaluation": {"canary": False},
    }


def trading(lake: Path, port: int, account: str, replay: dict) -> dict:
    return {
        "name": "bench-trading",
        "account": account,
        "lake_root": str(lake),
        "universe": {
            "vendor": "synthetic",
            "symbols": SYMBOLS,
            "synthetic": {"seed": 5, "bad_tick_rate": 0.0},
        },
        "feed": {"source": "replay", "warmup_sessions": 1, "replay": {"date": DATE.isoformat(), **replay}},
        "model": {"job": "bench-trading-research"},
        # 1.5 % per position: 50 positions stay inside the default 5 % / 25 % / 1x limits.
        "strategy": {"mode": "long_short", "fraction": 0.015},
        "risk": {
            "max_daily_loss": 0.5,
            "max_drawdown": 0.5,
            "min_window_return": -0.5,
            "max_trades_per_minute": 1000,
        },
        "broker": {"kind": "local", "port": port},
    }


def loop_case(cfg, ctx, model_id: str) -> dict:
    """Bar → last acknowledgement through the TradingLoop, and the bare alpaca-py floor."""
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    from quanto.execution import day
    from quanto.execution.replay import bar_groups, bar_payload, replay_bars, session_times
    from quanto.execution.replay_market import LocalReplayMarket
    from quanto.execution.session import TradingLoop
    from quanto.execution.strategy import SessionModel
    from quanto.store.db import connect

    times = session_times(cfg.calendar, DATE)
    bars, _ = replay_bars(cfg, ctx, DATE)
    day.reset_local_account(cfg)
    broker = day.open_broker(cfg)
    market = LocalReplayMarket(cfg.broker.base_url(cfg.mode), day.account_key(cfg))
    acks: list[float] = []
    submit = broker.submit

    def timed_submit(request):
        order = submit(request)
        acks.append(time.perf_counter())
        return order

    broker.submit = timed_submit  # type: ignore[method-assign]
    loop = TradingLoop(
        cfg, ctx.workflow_id, broker, SessionModel.load(ctx.lake, model_id), bars, times.open, times.close,
        db=lambda: connect(ctx.dsn), market=market, sleep=lambda s: None,
    )  # fmt: skip
    groups = bar_groups(bars, times.open, times.close)[:BARS]
    ours, counts, ours_last = [], [], []
    with connect(ctx.dsn) as loop.conn, connect(ctx.dsn) as loop.gate:
        loop.conn.autocommit = loop.gate.autocommit = True
        from quanto.store import trading as records

        records.ensure_control(loop.conn, ctx.workflow_id, cfg.account)
        loop.opening_equity = broker.account().last_equity
        loop.peak_equity = loop.opening_equity
        for i, (ts, group) in enumerate(groups):
            # A fresh account before each bar (not timed): every symbol with a signal is entered, so
            # each bar places about one order per symbol instead of only the signals that flipped.
            day.reset_local_account(cfg)
            acks.clear()
            start = time.perf_counter()
            loop.bar(ts, group, last=False)
            if acks and i >= 5:  # after a warm-up
                ours.extend(a - start for a in acks)
                ours_last.append(max(acks) - start)
                counts.append(len(acks))
        loop.pool.shutdown()
    # The floor: the same bars delivered to a second account, then as many raw submissions.
    peer_key = f"local-{cfg.account}-peer"
    peer_market = LocalReplayMarket(cfg.broker.base_url(cfg.mode), peer_key)
    peer_market.create_account(cash=1e6, costs={}, fractional=True)
    client = TradingClient(peer_key, "x", paper=True, url_override=cfg.broker.base_url(cfg.mode))
    pool = ThreadPoolExecutor(4)
    peer, peer_last = [], []
    for k, (_, group) in enumerate(groups[: len(counts) + 5]):
        start = time.perf_counter()
        peer_market.deliver(bar_payload(group, "1min"))
        n = counts[k - 5] if k >= 5 else 10
        requests = [
            MarketOrderRequest(symbol=s, qty=1, side=OrderSide.BUY if j % 2 else OrderSide.SELL, time_in_force=TimeInForce.DAY)
            for j, s in enumerate(SYMBOLS[:n])
        ]  # fmt: skip
        acked = list(pool.map(lambda r: (client.submit_order(r), time.perf_counter())[1], requests))
        if k >= 5:
            peer.extend(a - start for a in acked)
            peer_last.append(max(acked) - start)
    line = latency_line("loop_bar_to_ack_50_symbols", ours, peer, goal_ms=100)
    line["ours_last_ack_p99_ms"] = round(1e3 * pct(ours_last, 99), 1)
    line["peer_last_ack_p99_ms"] = round(1e3 * pct(peer_last, 99), 1)
    line["peer"] = "bare alpaca-py loop (deliver + submit the same number of orders, no model/risk/records)"
    line["orders_per_bar_median"] = float(np.median(counts))
    return line


def latency_line(bench: str, ours: list[float], peer: list[float], goal_ms: float) -> dict:
    """The DESIGN §9 line of a latency case: p99 seconds as ours_s / peer_s, ratio peer / ours, and
    both p50 and p99 in milliseconds."""
    line = {
        "bench": bench,
        "n": len(ours),
        "ours_s": round(pct(ours, 99), 4),
        "peer": "",
        "peer_s": round(pct(peer, 99), 4),
    }
    line["ratio"] = round(pct(peer, 99) / pct(ours, 99), 3)
    for name, samples in (("ours", ours), ("peer", peer)):
        line[f"{name}_p50_ms"] = round(1e3 * pct(samples, 50), 1)
        line[f"{name}_p99_ms"] = round(1e3 * pct(samples, 99), 1)
    line["goal_p99_ms"] = goal_ms
    return line


async def halt_case(lake: Path, port: int, dsn: str) -> dict:
    """Halt signal → last open order cancelled, through a real workflow."""
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import LimitOrderRequest

    from quanto.config.trading import TradingConfig
    from quanto.execution import day
    from quanto.execution.broker import BrokerError
    from quanto.starter.client import connect
    from quanto.starter.server import DevServer
    from quanto.starter.trade import start_trading

    home = Path(tempfile.mkdtemp(prefix="quanto-bench-halt-"))
    server = DevServer(state_dir=home / "temporal", port=_free_port(), ui_port=0)
    server.start(wait_s=60)
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": server.address,
        "QUANTO_PG_DSN": dsn,
        "QUANTO_LOG_DIR": str(home),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "quanto.starter.cli", "worker"], cwd=REPO, env=env, start_new_session=True,
        stdout=open(home / "worker.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    try:
        os.environ["TEMPORAL_ADDRESS"] = server.address
        # A bar every 2 s: the orders of a bar stay open at the exchange until the next one.
        cfg = TradingConfig.model_validate(
            trading(lake, port, "bench-halt", {"speed": 30, "bars": 3 * HALTS + 20})
        )
        client = await connect(server.address)
        handle = await start_trading(client, cfg, "", DATE, confirm_live=False)
        broker = day.open_broker(cfg)
        while True:  # until the workflow's prepare step has created the exchange account
            try:
                broker.account()
                break
            except BrokerError:
                await asyncio.sleep(0.2)
        ours = []
        while len(ours) < HALTS:
            deadline = time.monotonic() + 60
            while not [o for o in broker.orders("open")]:
                if time.monotonic() > deadline:
                    raise RuntimeError("no open orders within 60 s")
                time.sleep(0.005)
            start = time.perf_counter()
            await handle.signal("halt", "benchmark")
            while [o for o in broker.orders("open")]:
                time.sleep(0.002)
            ours.append(time.perf_counter() - start)
            log(f"halt {len(ours)}: {1e3 * ours[-1]:.0f} ms")
            await handle.signal("resume")
            while (await handle.query("status"))["state"] != "ACTIVE":
                await asyncio.sleep(0.01)
        await handle.terminate("benchmark done")
        # Peer: cancel as many resting orders on the exchange directly.
        raw = TradingClient(day.account_key(cfg), "x", paper=True, url_override=cfg.broker.base_url(cfg.mode))
        peer = []
        for _ in range(HALTS):
            for s in SYMBOLS[:10]:
                raw.submit_order(
                    LimitOrderRequest(symbol=s, qty=1, side="buy", time_in_force="gtc", limit_price=1.0)
                )
            start = time.perf_counter()
            raw.cancel_orders()
            peer.append(time.perf_counter() - start)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        server.stop()
    line = latency_line("halt_signal_to_cancelled", ours, peer, goal_ms=1000)
    line["peer"] = "alpaca-py cancel_orders on the exchange directly (no workflow)"
    return line


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from quanto.config.models import PipelineConfig
    from quanto.config.trading import TradingConfig
    from quanto.lake.materialize import StageContext
    from quanto.lake.storage import Lake
    from quanto.models.registry import promote
    from quanto.research import run_pipeline_local
    from quanto.starter.exchange import ensure_exchange, stop_exchange
    from quanto.store.db import connect

    os.environ.setdefault("QUANTO_HOME", tempfile.mkdtemp(prefix="quanto-bench-home-"))
    base = os.environ.get("QUANTO_PG_DSN", "postgresql://postgres@127.0.0.1:5432/quanto").rsplit("/", 1)[0]
    name = f"quanto_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = f"{base}/{name}"
    lake = Path(tempfile.mkdtemp(prefix="quanto-bench-lake-"))
    port = _free_port()
    ensure_exchange(port)
    try:
        log("training the model (50 symbols, 5 sessions)")
        ctx = StageContext(lake=Lake(lake), workflow_id="bench", run_id="bench", dsn=dsn)
        model_id = run_pipeline_local(PipelineConfig.model_validate(research(lake)), ctx, until="train")[
            "train"
        ].summary["model_id"]
        with connect(dsn) as conn:
            promote(conn, model_id)
        cfg = TradingConfig.model_validate(trading(lake, port, "bench-loop", {"speed": 0}))
        ctx = StageContext(lake=Lake(lake), workflow_id=cfg.workflow_id(DATE), run_id="bench", dsn=dsn)
        log("loop: bar → acknowledgements")
        print(json.dumps(loop_case(cfg, ctx, model_id)), flush=True)
        log("halt signal → cancelled")
        print(json.dumps(asyncio.run(halt_case(lake, port, dsn))), flush=True)
    finally:
        stop_exchange(port)
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
