"""Benchmark: order latency on the local paper exchange, through our adapter against alpaca-py alone.

The exchange runs as it does for a trading session: a detached process (`ensure_exchange` on a free
port, state under a temporary $QUANTO_HOME), one account per side, 50 symbols, minute bars of a
seeded random walk, no costs.

- `bar_to_ack_50_symbols`: for each bar, the clock starts, the bar of all 50 symbols is delivered
  (`LocalReplayMarket.deliver`: the exchange fills the previous bar's orders at this open), then one
  market order per symbol (buy/sell 1 alternating, so positions stay small) is submitted from a pool
  of $QUANTO_BENCH_THREADS (default 4) threads; each order's latency = its acknowledgement − the
  clock's start. Ours = `AlpacaBroker.submit` (alpaca-py request model, the idempotency handling,
  mapping to our Order); peer = alpaca-py's raw `TradingClient.submit_order` with the same request.
  Bars alternate ours / peer. Goal: p99 < 100 ms.
- `halt_cancel_50_orders`: 50 resting limit orders (one per symbol, far from the market) are placed
  (not timed), then the clock runs from the halt to the last cancellation confirmed: ours =
  `AlpacaBroker.cancel_all()`, peer = `TradingClient.cancel_orders()` (the exchange cancels every order
  before it answers; that no order stays open is asserted after each round). Goal: p99 < 1 s.

$QUANTO_BENCH_REPS (default 3) repetitions after a warm-up, each of $QUANTO_BENCH_BARS / REPS bars
(default 201 bars in all) and $QUANTO_BENCH_HALTS halts (default 30); each line gives the medians over
the repetitions of p50 and p99 (ms), `ours_s` / `peer_s` = the p99 in seconds and `ratio` =
peer p99 / ours p99. One JSON line per case (DESIGN.md section 9); progress goes to stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
BARS = int(os.environ.get("QUANTO_BENCH_BARS", 201))
HALTS = int(os.environ.get("QUANTO_BENCH_HALTS", 30))
THREADS = int(os.environ.get("QUANTO_BENCH_THREADS", 4))
WARMUP_BARS, WARMUP_HALTS = 10, 3
N_SYMBOLS = 50
SEED = 42
T0 = dt.datetime(2024, 3, 4, 14, 30, tzinfo=dt.UTC)  # a Monday's 09:30 New York: 390 minutes of session


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


class Side:
    """One account on the exchange: its replay client, and how it submits and cancels."""

    def __init__(self, url: str, key: str, raw: bool) -> None:
        from alpaca.trading.client import TradingClient

        from quanto.execution.alpaca import AlpacaBroker
        from quanto.execution.replay_market import LocalReplayMarket

        self.raw = raw
        self.market = LocalReplayMarket(url, key)
        self.market.create_account(10_000_000.0, {}, True)
        self.broker = AlpacaBroker(url, key, "bench")
        self.client = TradingClient(key, "bench", url_override=url)
        self.pool = ThreadPoolExecutor(THREADS)
        self.n = 0

    def submit_all(self, requests: list) -> list[float]:
        """Submit every request from the pool; the perf_counter of each acknowledgement."""
        send: Callable = self._submit_raw if self.raw else self._submit_ours
        return list(self.pool.map(send, requests))

    def _submit_ours(self, request) -> float:
        self.broker.submit(request)
        return time.perf_counter()

    def _submit_raw(self, request) -> float:
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

        kwargs = {"symbol": request.symbol, "qty": request.qty, "side": OrderSide(request.side),
                  "time_in_force": TimeInForce(request.time_in_force), "client_order_id": request.client_order_id}  # fmt: skip
        if request.type == "limit":
            self.client.submit_order(LimitOrderRequest(limit_price=request.limit_price, **kwargs))
        else:
            self.client.submit_order(MarketOrderRequest(**kwargs))
        return time.perf_counter()

    def cancel_all(self) -> None:
        if self.raw:
            self.client.cancel_orders()
        else:
            self.broker.cancel_all()

    def requests(self, symbols: list[str], side: str, **kw) -> list:
        from quanto.execution.broker import OrderRequest

        out = []
        for s in symbols:
            self.n += 1
            out.append(OrderRequest(f"b-{self.n}", s, side, 1.0, **kw))
        return out


def make_bars(symbols: list[str], n: int) -> list[list[dict]]:
    """n minute bars of every symbol, one list per timestamp."""
    rng = np.random.default_rng(SEED)
    price = rng.uniform(20, 300, len(symbols))
    out = []
    for i in range(n):
        opens = price * (1 + rng.normal(0, 5e-4, len(symbols)))
        closes = opens * (1 + rng.normal(0, 1e-3, len(symbols)))
        ts = (T0 + dt.timedelta(minutes=i)).isoformat()
        out.append([
            {"symbol": s, "ts": ts, "timeframe": "1min", "open": float(o), "high": float(max(o, c)) * 1.0005,
             "low": float(min(o, c)) * 0.9995, "close": float(c), "volume": 1000.0}
            for s, o, c in zip(symbols, opens, closes, strict=True)
        ])  # fmt: skip
        price = closes
    return out


def bar_round(side: Side, bars: list[dict], symbols: list[str], i: int) -> list[float]:
    requests = side.requests(symbols, "buy" if i % 2 == 0 else "sell")
    start = time.perf_counter()
    side.market.deliver(bars)
    acks = side.submit_all(requests)
    return [a - start for a in acks]


def halt_round(side: Side, symbols: list[str]) -> float:
    side.submit_all(side.requests(symbols, "buy", type="limit", limit_price=1.0, time_in_force="gtc"))
    start = time.perf_counter()
    side.cancel_all()
    took = time.perf_counter() - start
    assert side.broker.orders("open") == [], "an order stayed open after the halt"
    return took


def emit(bench: str, ours: list[list[float]], peer: list[list[float]], goal_ms: float, **extra) -> None:
    o50 = statistics.median(pct(r, 50) for r in ours)
    o99 = statistics.median(pct(r, 99) for r in ours)
    p50 = statistics.median(pct(r, 50) for r in peer)
    p99 = statistics.median(pct(r, 99) for r in peer)
    print(json.dumps({
        "bench": bench, "n": N_SYMBOLS, "ours_s": round(o99, 5), "peer": "alpaca-py TradingClient (no adapter)",
        "peer_s": round(p99, 5), "ratio": round(p99 / o99, 3), "unit_rate": round(N_SYMBOLS / o99, 1),
        "ours_p50_ms": round(o50 * 1e3, 2), "ours_p99_ms": round(o99 * 1e3, 2),
        "peer_p50_ms": round(p50 * 1e3, 2), "peer_p99_ms": round(p99 * 1e3, 2),
        "goal": f"p99 < {goal_ms:g} ms", "meets_goal": o99 * 1e3 < goal_ms,
        "samples_per_rep": len(ours[0]), "reps": len(ours), "threads": THREADS,
        "load_1m": round(os.getloadavg()[0], 2), **extra,
    }), flush=True)  # fmt: skip


def main() -> None:
    from quanto.starter.exchange import ensure_exchange, stop_exchange

    home = tempfile.mkdtemp(prefix="quanto-bench-")
    os.environ["QUANTO_HOME"] = home
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = ensure_exchange(port)
    log(f"exchange on {url} (log under {home})")
    try:
        symbols = [f"S{i:02d}" for i in range(N_SYMBOLS)]
        per_rep = max(1, BARS // REPS)
        bars = make_bars(symbols, WARMUP_BARS + per_rep * REPS + 1)
        ours, peer = Side(url, "bench-ours", raw=False), Side(url, "bench-peer", raw=True)
        for i in range(WARMUP_BARS):  # warm-up: connections, the exchange's first allocations
            bar_round(ours, bars[i], symbols, i)
            bar_round(peer, bars[i], symbols, i)
        lat_ours, lat_peer = [], []
        for rep in range(REPS):
            o_rep, p_rep = [], []
            for k in range(per_rep):
                i = WARMUP_BARS + rep * per_rep + k
                o_rep += bar_round(ours, bars[i], symbols, i)
                p_rep += bar_round(peer, bars[i], symbols, i)
            lat_ours.append(o_rep)
            lat_peer.append(p_rep)
            log(
                f"bar->ack rep {rep + 1}/{REPS}: ours p99 {pct(o_rep, 99) * 1e3:.1f} ms, peer {pct(p_rep, 99) * 1e3:.1f} ms"
            )
        emit("bar_to_ack_50_symbols", lat_ours, lat_peer, 100.0, bars=per_rep * REPS)

        for _ in range(WARMUP_HALTS):
            halt_round(ours, symbols)
            halt_round(peer, symbols)
        halt_ours, halt_peer = [], []
        for rep in range(REPS):
            o_rep, p_rep = [], []
            for _ in range(HALTS):
                o_rep.append(halt_round(ours, symbols))
                p_rep.append(halt_round(peer, symbols))
            halt_ours.append(o_rep)
            halt_peer.append(p_rep)
            log(
                f"halt rep {rep + 1}/{REPS}: ours p99 {pct(o_rep, 99) * 1e3:.1f} ms, peer {pct(p_rep, 99) * 1e3:.1f} ms"
            )
        emit("halt_cancel_50_orders", halt_ours, halt_peer, 1000.0, halts=HALTS * REPS)
    finally:
        stop_exchange(port)


if __name__ == "__main__":
    main()
