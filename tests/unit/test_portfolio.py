"""The portfolio engine against a plain Python loop, hand-computed cases, and accounting properties.

`reference_simulate` is the oracle: the rules of quanto.backtest.portfolio (and of fills, costs, stops
and sizing) written again as a loop over timestamps with dicts, one symbol at a time, sharing no
code with the engine. benchmarks/backtest_engine.py times the engine against it.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quanto.backtest.costs import borrow_fee, commission
from quanto.backtest.fills import fill_bar, fill_price, half_spread, timing_code
from quanto.backtest.portfolio import (
    EQUITY_COLUMNS,
    FILL_COLUMNS,
    POSITION_COLUMNS,
    TRADE_COLUMNS,
    simulate,
)
from quanto.backtest.sizing import signal_targets, trailing_return_stats
from quanto.backtest.stops import NO_EXIT, stop_exit
from quanto.config.models import BacktestConfig

BASE = pd.Timestamp("2024-01-01", tz="UTC")
NO_COSTS = {"commission_bps": 0.0, "slippage_bps": 0.0}


def day(i: int) -> pd.Timestamp:
    return BASE + pd.Timedelta(days=i)


# --------------------------------------------------------------------------------------------------
# The oracle: a plain loop
# --------------------------------------------------------------------------------------------------

REASONS = ("signal", "rebalance", "stop_loss", "take_profit", "trailing_stop", "close_at_end", "liquidation")


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def reference_simulate(
    bars: pd.DataFrame, decisions: pd.DataFrame, cfg: BacktestConfig, ppy: float | None = None
):
    """Returns dict(equity=[row dicts], fills=[dicts], trades=[dicts], positions={(ts, symbol): qty},
    scaled=[dicts]) for signal (sizing fraction / fixed_qty / risk), target_weight and target_qty runs."""
    kind = next(k for k in ("signal", "target_weight", "target_qty") if k in decisions.columns)
    ppy = ppy if ppy is not None else cfg.periods_per_year
    symbols = sorted(set(decisions["symbol"]))
    start, end = decisions["ts"].min(), decisions["ts"].max()
    quoted = "bid" in bars.columns and "ask" in bars.columns
    bars_at: dict[pd.Timestamp, dict[str, dict]] = defaultdict(dict)
    last_ts: dict[str, pd.Timestamp] = {}
    for r in bars.to_dict("records"):
        if r["symbol"] in symbols and start <= r["ts"] <= end:
            bars_at[r["ts"]][r["symbol"]] = r
            last_ts[r["symbol"]] = max(last_ts.get(r["symbol"], r["ts"]), r["ts"])
    wanted = {(r["symbol"], r["ts"]): float(r[kind]) for r in decisions.to_dict("records")}

    capital = cfg.initial_capital
    state = {
        "cash": capital,
        "liquidating": False,
    }
    qty = dict.fromkeys(symbols, 0.0)
    last = dict.fromkeys(symbols, math.nan)
    pending: dict[str, tuple[float, int] | None] = dict.fromkeys(symbols)
    blocked = dict.fromkeys(symbols, 0)
    bars_seen = dict.fromkeys(symbols, -1)
    trade: dict[str, dict | None] = dict.fromkeys(symbols)
    fills: list[dict] = []
    trades: list[dict] = []
    scaled: list[dict] = []
    curve: list[dict] = []
    positions: dict[tuple[pd.Timestamp, str], float] = {}
    exits = (cfg.stop_loss, cfg.take_profit, cfg.trailing_stop)
    use_stops = any(x is not None for x in exits)
    timing = cfg.fill

    def spread_of(bar: dict) -> float:
        if not quoted:
            return 0.0
        bid, ask = bar["bid"], bar["ask"]
        if math.isnan(bid) or math.isnan(ask) or ask <= bid:
            return 0.0
        return 0.5 * (ask - bid)

    def execute(sym, ts, t_i, target, ref, bar, reason, requested, at_close):
        old = qty[sym]
        delta = target - old
        if delta == 0.0:
            return
        side = 1.0 if delta > 0 else -1.0
        n = abs(delta)
        price = ref * (1.0 + side * cfg.slippage_bps * 1e-4) + side * spread_of(bar)
        fee = cfg.commission_per_order + cfg.commission_per_share * n + cfg.commission_bps * 1e-4 * n * price
        fee = fee if fee > cfg.commission_min else cfg.commission_min
        slip = n * abs(price - ref)
        flow = -delta * price - fee
        state["cash"] += flow
        fills.append(
            dict(
                ts=ts, symbol=sym, side="buy" if delta > 0 else "sell", qty=n, price=price,
                commission=fee, slippage=slip, reason=REASONS[reason], requested_qty=abs(requested),
            )
        )  # fmt: skip
        reverses = old != 0 and target != 0 and (target > 0) != (old > 0)
        if old == 0 or (not reverses and abs(target) > abs(old)):
            closed, opened = 0.0, n
        elif reverses:
            closed, opened = abs(old), abs(target)
        else:
            closed, opened = n, 0.0
        if closed:
            tr = trade[sym]
            tr["exit_qty"] += closed
            tr["exit_notional"] += closed * price
            tr["costs"] += closed / n * (fee + slip)
            tr["flow"] += closed / n * flow
            if target == 0 or reverses:
                tr.update(exit_ts=ts, exit_bar=bars_seen[sym], exit_reason=REASONS[reason], open=False)
                trades.append(tr)
                trade[sym] = None
        if opened:
            tr = trade[sym]
            if tr is None:
                tr = trade[sym] = dict(
                    symbol=sym, side="long" if target > 0 else "short", entry_ts=ts, entry_bar=bars_seen[sym],
                    entry_qty=0.0, entry_notional=0.0, exit_qty=0.0, exit_notional=0.0, costs=0.0, flow=0.0,
                    extreme=price, stops_from=t_i + 1 if at_close else t_i,
                )  # fmt: skip
            tr["entry_qty"] += opened
            tr["entry_notional"] += opened * price
            tr["costs"] += opened / n * (fee + slip)
            tr["flow"] += opened / n * flow
        qty[sym] = target

    def fill_orders(ts, t_i, at_open):
        orders = {s: pending[s] for s in symbols if s in bars_at[ts] and pending[s] is not None}
        if not orders:
            return
        col = "open" if at_open else "close"
        equity, kept, added = state["cash"], 0.0, 0.0
        parts = {}
        for s in symbols:
            mark = bars_at[ts][s][col] if s in bars_at[ts] else last[s]
            if qty[s] != 0:
                equity += qty[s] * mark
            if s in orders:
                target, q = orders[s][0], qty[s]
                if q != 0 and target != 0 and (target > 0) != (q > 0):
                    k, a = 0.0, abs(target)
                elif abs(target) <= abs(q):
                    k, a = abs(target), 0.0
                else:
                    k, a = abs(q), abs(target) - abs(q)
                parts[s] = (k, a)
                kept += k * mark
                added += a * mark
            elif qty[s] != 0:
                kept += abs(qty[s]) * mark
        scale = 1.0
        limit = cfg.max_leverage * equity
        if added > 0 and kept + added > limit:
            scale = min(max((limit - kept) / added, 0.0), 1.0)
        for s, (target, reason) in orders.items():
            pending[s] = None
            q = qty[s]
            requested = target - q
            k, a = parts[s]
            if scale < 1.0 and a > 0:
                granted = _sign(target) * (k + scale * a)
                if not cfg.fractional_units:
                    granted = float(math.trunc(granted))
                scaled.append(dict(ts=ts, symbol=s, requested_qty=requested, qty=granted - q))
                target = granted
            bar = bars_at[ts][s]
            execute(s, ts, t_i, target, bar[col], bar, reason, requested, not at_open)

    def check_stops(ts, t_i):
        for s in symbols:
            if s not in bars_at[ts] or qty[s] == 0 or t_i < trade[s]["stops_from"]:
                continue
            bar, tr = bars_at[ts][s], trade[s]
            side = 1.0 if qty[s] > 0 else -1.0
            entry = tr["entry_notional"] / tr["entry_qty"]
            sl, tp, trail = exits
            levels = []  # (level, reason): the tighter of stop-loss and trailing stop binds
            if sl is not None:
                levels.append((entry * (1.0 - side * sl), 2))
            if trail is not None:
                levels.append((tr["extreme"] * (1.0 - side * trail), 4))
            stop = reason = None
            for level, why in levels:
                if stop is None or (level > stop if side > 0 else level < stop):
                    stop, reason = level, why
            take = entry * (1.0 + side * tp) if tp is not None else None
            o, h, lo = bar["open"], bar["high"], bar["low"]
            worst, best = (lo, h) if side > 0 else (h, lo)
            hit = None
            if stop is not None and side * (o - stop) <= 0:
                hit = (reason, o)
            elif take is not None and side * (o - take) >= 0:
                hit = (3, o)
            elif stop is not None and side * (worst - stop) <= 0:
                hit = (reason, stop)
            elif take is not None and side * (best - take) >= 0:
                hit = (3, take)
            if hit is None:
                tr["extreme"] = max(tr["extreme"], h) if side > 0 else min(tr["extreme"], lo)
                continue
            execute(s, ts, t_i, 0.0, hit[1], bar, hit[0], qty[s], False)
            blocked[s] = side
            if pending[s] is not None:
                if _sign(pending[s][0]) == side:
                    pending[s] = None
                else:
                    blocked[s] = 0

    def decide(ts):
        long_value = sum(qty[s] * last[s] for s in symbols if qty[s] > 0)
        short_value = sum(qty[s] * last[s] for s in symbols if qty[s] < 0)
        equity = state["cash"] + long_value + short_value
        if not state["liquidating"] and equity <= 0:
            state["liquidating"] = True
            for s in symbols:
                pending[s] = (0.0, 6) if qty[s] != 0 else None
        if state["liquidating"]:
            return
        for s in symbols:
            if s not in bars_at[ts]:
                continue
            pending[s] = None
            goal = wanted.get((s, ts), 0.0 if kind == "signal" else math.nan)
            if math.isnan(goal):
                continue
            side = _sign(goal)
            if blocked[s] != 0:
                if side == blocked[s]:
                    continue
                blocked[s] = 0
            price = last[s]
            if kind == "signal" and cfg.sizing == "fixed_qty":
                target = goal * cfg.fixed_qty
            elif kind == "target_qty":
                target = goal
            else:
                if kind == "signal":
                    base = cfg.fraction if cfg.fraction is not None else 1.0 / len(symbols)
                    goal = (
                        goal * base
                        if cfg.sizing == "fraction"
                        else goal * (cfg.risk_per_trade / cfg.stop_loss)
                    )
                target = goal * equity / price if equity > 0 else 0.0
            if not cfg.fractional_units:
                target = float(math.trunc(target))
            q = qty[s]
            if kind == "signal":  # signals act on a change of side only
                trade_it = side != _sign(q) and target != q
            elif _sign(target) != _sign(q):
                trade_it = True
            elif kind == "target_qty":
                trade_it = target != q
            else:
                trade_it = (
                    abs(target - q) * price / equity > cfg.drift_threshold if equity > 0 else target != q
                )
            if trade_it:
                pending[s] = (target, 0 if kind == "signal" else 1)

    for t_i, ts in enumerate(sorted(bars_at)):
        today = bars_at[ts]
        for s in today:
            bars_seen[s] += 1
        if timing == "next_open":
            fill_orders(ts, t_i, at_open=True)
        if use_stops:
            check_stops(ts, t_i)
        for s in today:
            last[s] = today[s]["close"]
        if cfg.borrow_rate > 0:
            for s in symbols:
                if qty[s] < 0:
                    fee = -qty[s] * last[s] * cfg.borrow_rate / ppy
                    state["cash"] -= fee
                    trade[s]["costs"] += fee
                    trade[s]["flow"] -= fee
        if timing == "this_close":
            decide(ts)
        if timing != "next_open":
            fill_orders(ts, t_i, at_open=False)
        if cfg.close_at_end:
            for s in symbols:
                if last_ts[s] == ts and qty[s] != 0:
                    execute(s, ts, t_i, 0.0, today[s]["close"], today[s], 5, qty[s], True)
                    pending[s] = None
        long_value = sum(qty[s] * last[s] for s in symbols if qty[s] > 0)
        short_value = sum(qty[s] * last[s] for s in symbols if qty[s] < 0)
        curve.append(
            dict(ts=ts, cash=state["cash"], long_value=long_value, short_value=short_value,
                 equity=state["cash"] + long_value + short_value)
        )  # fmt: skip
        for s in today:
            positions[(ts, s)] = qty[s]
        if timing != "this_close":
            decide(ts)

    for s in symbols:
        tr = trade[s]
        if tr is not None:
            tr.update(exit_ts=last_ts[s], exit_bar=bars_seen[s], exit_reason="open", open=True)
            tr["flow"] += qty[s] * last[s]
            tr["exit_price"] = last[s]
            trades.append(tr)
    for tr in trades:
        tr["entry_price"] = tr["entry_notional"] / tr["entry_qty"]
        if not tr["open"]:
            tr["exit_price"] = tr["exit_notional"] / tr["exit_qty"]
        tr["pnl"] = tr["flow"]
        tr["qty"] = tr["entry_qty"]
        tr["return"] = tr["pnl"] / tr["entry_notional"]
        tr["bars_held"] = tr["exit_bar"] - tr["entry_bar"]
    return dict(equity=curve, fills=fills, trades=trades, positions=positions, scaled=scaled)


def assert_matches_reference(bars, decisions, cfg, ppy=252.0) -> None:
    result = simulate(bars, decisions, cfg, periods_per_year=ppy)
    ref = reference_simulate(bars, decisions, cfg, ppy)

    eq = result.equity
    assert list(eq.columns) == list(EQUITY_COLUMNS)
    assert list(eq["ts"]) == [r["ts"] for r in ref["equity"]]
    for col in ("cash", "long_value", "short_value", "equity"):
        np.testing.assert_allclose(
            eq[col], [r[col] for r in ref["equity"]], rtol=1e-12, atol=1e-9, err_msg=col
        )

    got = result.fills
    assert list(got.columns) == list(FILL_COLUMNS)
    want = pd.DataFrame(ref["fills"], columns=list(FILL_COLUMNS))
    assert len(got) == len(want)
    for col in ("ts", "symbol", "side", "reason"):
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("qty", "price", "commission", "slippage", "requested_qty"):
        np.testing.assert_allclose(got[col], want[col].astype(float), rtol=1e-12, atol=1e-12, err_msg=col)

    trades = result.trades
    assert list(trades.columns) == list(TRADE_COLUMNS)
    key = ["symbol", "entry_ts"]
    got_t = trades.sort_values(key).reset_index(drop=True)
    want_t = pd.DataFrame(ref["trades"], columns=list(TRADE_COLUMNS)).sort_values(key).reset_index(drop=True)
    assert len(got_t) == len(want_t)
    for col in ("symbol", "side", "entry_ts", "exit_ts", "exit_reason", "open", "bars_held"):
        assert got_t[col].tolist() == want_t[col].tolist(), col
    for col in ("entry_price", "exit_price", "qty", "pnl", "costs", "return"):
        np.testing.assert_allclose(got_t[col], want_t[col].astype(float), rtol=1e-10, atol=1e-9, err_msg=col)

    pos = result.positions
    assert list(pos.columns) == list(POSITION_COLUMNS)
    assert dict(zip(zip(pos["ts"], pos["symbol"], strict=True), pos["qty"], strict=True)) == pytest.approx(
        ref["positions"], rel=1e-12, abs=1e-12
    )
    scaled = result.scaled_orders
    assert len(scaled) == len(ref["scaled"])
    if len(scaled):
        np.testing.assert_allclose(scaled["qty"], [r["qty"] for r in ref["scaled"]], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def bars_frame(rows: list[tuple]) -> pd.DataFrame:
    """(symbol, day, open, close) or (symbol, day, open, high, low, close) → bars."""
    out = []
    for r in rows:
        if len(r) == 4:
            sym, d, o, c = r
            h, lo = max(o, c), min(o, c)
        else:
            sym, d, o, h, lo, c = r
        out.append(dict(symbol=sym, ts=day(d), open=float(o), high=float(h), low=float(lo), close=float(c)))
    return pd.DataFrame(out)


def decisions_frame(rows: list[tuple[str, int, float]], kind: str = "signal") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "ts": [day(r[1]) for r in rows],
            kind: [float(r[2]) for r in rows],
        }
    )


def every_bar(bars: pd.DataFrame, kind: str, value: float) -> pd.DataFrame:
    return bars[["symbol", "ts"]].assign(**{kind: value}).reset_index(drop=True)


@st.composite
def markets(draw, max_symbols: int = 3, max_bars: int = 25, quotes: bool = True):
    """1-3 symbols on a daily grid with holes; OHLC from bounded gaps and moves; optional quotes."""
    n_sym = draw(st.integers(1, max_symbols))
    n_bars = draw(st.integers(2, max_bars))
    move = st.floats(-0.25, 0.25, allow_nan=False)
    wick = st.floats(0.0, 0.05, allow_nan=False)
    with_quotes = quotes and draw(st.booleans())
    rows = []
    for i in range(n_sym):
        keep = draw(st.lists(st.booleans(), min_size=n_bars, max_size=n_bars))
        keep[draw(st.integers(0, n_bars - 1))] = True
        price = draw(st.floats(5.0, 200.0))
        for d in range(n_bars):
            o = price * (1 + draw(move))
            c = o * (1 + draw(move))
            h = max(o, c) * (1 + draw(wick))
            lo = min(o, c) * (1 - draw(wick))
            price = c
            if keep[d]:
                row = dict(symbol=f"S{i}", ts=day(d), open=o, high=h, low=lo, close=c)
                if with_quotes:
                    half = c * draw(st.floats(0.0, 0.01))
                    row.update(bid=c - half, ask=c + half)
                rows.append(row)
    return pd.DataFrame(rows)


@st.composite
def decisions_for(draw, bars: pd.DataFrame, kind: str, long_only: bool = False):
    """A decision on a random subset of the bars (at least one)."""
    n = len(bars)
    present = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    present[draw(st.integers(0, n - 1))] = True
    low = 0.0 if long_only else -1.0
    if kind == "signal":
        values = st.sampled_from([0.0, 1.0] if long_only else [-1.0, 0.0, 1.0])
    elif kind == "target_weight":
        values = st.one_of(st.floats(low, 1.0), st.just(math.nan))
    else:
        values = st.one_of(
            st.integers(int(low * 60), 60).map(float), st.floats(low * 60, 60.0), st.just(math.nan)
        )
    frame = bars[["symbol", "ts"]][np.asarray(present)].reset_index(drop=True)
    return frame.assign(**{kind: [draw(values) for _ in range(len(frame))]})


@st.composite
def configs(draw, kind: str):
    stop_loss = draw(st.one_of(st.none(), st.floats(0.01, 0.2)))
    sizing = "fraction"
    if kind == "signal":
        sizing = draw(st.sampled_from(["fraction", "fixed_qty"] + (["risk"] if stop_loss else [])))
    return BacktestConfig(
        mode="long_short",
        fill=draw(st.sampled_from(["next_open", "next_close", "this_close"])),
        initial_capital=10_000.0,
        commission_bps=draw(st.sampled_from([0.0, 5.0])),
        commission_per_share=draw(st.sampled_from([0.0, 0.01])),
        commission_per_order=draw(st.sampled_from([0.0, 1.0])),
        commission_min=draw(st.sampled_from([0.0, 2.5])),
        slippage_bps=draw(st.sampled_from([0.0, 3.0, 25.0])),
        borrow_rate=draw(st.sampled_from([0.0, 0.3])),
        sizing=sizing,
        fraction=draw(st.one_of(st.none(), st.floats(0.1, 1.5))),
        fixed_qty=draw(st.floats(1.0, 80.0)) if sizing == "fixed_qty" else None,
        risk_per_trade=0.02,
        fractional_units=draw(st.booleans()),
        drift_threshold=draw(st.sampled_from([0.0, 0.05])),
        stop_loss=stop_loss,
        take_profit=draw(st.one_of(st.none(), st.floats(0.01, 0.3))),
        trailing_stop=draw(st.one_of(st.none(), st.floats(0.01, 0.2))),
        max_leverage=draw(st.floats(0.3, 3.0)),
        close_at_end=draw(st.booleans()),
    )


ORACLE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------
# (a) the engine equals the plain loop
# --------------------------------------------------------------------------------------------------


@ORACLE
@given(st.data(), st.sampled_from(["signal", "target_weight", "target_qty"]))
def test_engine_matches_the_reference_loop(data, kind):
    bars = data.draw(markets())
    decisions = data.draw(decisions_for(bars, kind))
    cfg = data.draw(configs(kind))
    assert_matches_reference(bars, decisions, cfg)


@pytest.mark.parametrize("fill", ["next_open", "next_close", "this_close"])
def test_reference_agreement_on_a_long_random_run_with_everything_on(fill):
    # A seeded run long enough to reach every rule: stops of all kinds, scaling, borrow, reversals.
    rng = np.random.default_rng(7)
    rows = []
    for i, sym in enumerate(("AAA", "BBB", "CCC", "DDD")):
        price = 50.0 * (i + 1)
        for d in range(300):
            o = price * np.exp(rng.normal(0, 0.01))
            c = o * np.exp(rng.normal(0, 0.02))
            rows.append(
                (
                    sym,
                    d,
                    o,
                    max(o, c) * (1 + abs(rng.normal(0, 0.01))),
                    min(o, c) * (1 - abs(rng.normal(0, 0.01))),
                    c,
                )
            )
            price = c
    bars = bars_frame(rows)
    bars = bars[rng.random(len(bars)) > 0.1].reset_index(drop=True)  # holes
    decisions = bars[["symbol", "ts"]].assign(
        signal=rng.choice([-1.0, 0.0, 1.0], len(bars), p=[0.3, 0.2, 0.5])
    )
    cfg = BacktestConfig(
        mode="long_short", fill=fill, initial_capital=100_000, fraction=0.4, max_leverage=1.2,
        commission_bps=2, commission_per_order=1, commission_min=2, slippage_bps=5, borrow_rate=0.05,
        stop_loss=0.03, take_profit=0.06, trailing_stop=0.04, close_at_end=True,
    )  # fmt: skip
    result = simulate(bars, decisions, cfg, periods_per_year=252)
    reasons = set(result.fills["reason"])
    assert {"signal", "stop_loss", "take_profit", "trailing_stop", "close_at_end"} <= reasons
    assert len(result.scaled_orders) > 0
    assert_matches_reference(bars, decisions, cfg)


# --------------------------------------------------------------------------------------------------
# (b) hand-computed cases
# --------------------------------------------------------------------------------------------------


def test_one_trade_with_known_costs_by_hand():
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 102, 104), ("X", 2, 103, 101), ("X", 3, 100, 99)])
    decisions = decisions_frame([("X", 0, 1), ("X", 1, 1), ("X", 2, 0), ("X", 3, 1)])
    cfg = BacktestConfig(
        sizing="fixed_qty", fixed_qty=10, initial_capital=10_000, slippage_bps=10,
        commission_bps=5, commission_per_share=0.01, commission_per_order=1.0,
    )  # fmt: skip
    result = simulate(bars, decisions, cfg)

    buy = 102 * 1.001  # day-1 open + 10 bps
    buy_fee = 1 + 0.01 * 10 + 5e-4 * 10 * buy  # 1.61051
    sell = 100 * 0.999  # day-3 open − 10 bps
    sell_fee = 1 + 0.01 * 10 + 5e-4 * 10 * sell  # 1.5995
    cash_in_trade = 10_000 - 10 * buy - buy_fee
    np.testing.assert_allclose(
        result.equity["equity"],
        [10_000, cash_in_trade + 1040, cash_in_trade + 1010, cash_in_trade + 10 * sell - sell_fee],
        rtol=1e-13,
    )
    assert result.equity["long_value"].tolist() == [0, 1040, 1010, 0]
    fills = result.fills.to_dict("records")
    assert [(f["ts"], f["side"], f["qty"], f["reason"]) for f in fills] == [
        (day(1), "buy", 10, "signal"),
        (day(3), "sell", 10, "signal"),
    ]
    assert fills[0]["price"] == pytest.approx(102.102, rel=1e-14)
    assert fills[0]["commission"] == pytest.approx(1.61051, rel=1e-13)
    assert fills[1]["commission"] == pytest.approx(1.5995, rel=1e-13)
    assert fills[0]["slippage"] == pytest.approx(1.02, rel=1e-12)  # 10 units × 0.102

    (trade,) = result.trades.to_dict("records")
    pnl = 10 * (99.9 - 102.102) - 1.61051 - 1.5995  # −25.23001
    assert trade["pnl"] == pytest.approx(pnl, rel=1e-12)
    assert trade["costs"] == pytest.approx(1.61051 + 1.5995 + 1.02 + 1.0, rel=1e-12)  # fees + slippage
    assert (trade["entry_ts"], trade["exit_ts"], trade["bars_held"]) == (day(1), day(3), 2)
    assert (trade["entry_price"], trade["exit_price"]) == pytest.approx((102.102, 99.9), rel=1e-14)
    assert trade["return"] == pytest.approx(pnl / 1021.02, rel=1e-12)
    assert (trade["side"], trade["exit_reason"], trade["open"]) == ("long", "signal", False)
    assert result.equity["equity"].iloc[-1] - 10_000 == pytest.approx(pnl, rel=1e-12)


def test_fill_timing_variants():
    bars = bars_frame([("X", 0, 10, 11), ("X", 1, 12, 13), ("X", 2, 14, 15)])
    decisions = decisions_frame([("X", 0, 1), ("X", 1, 1), ("X", 2, 1)])
    entries = {}
    for fill in ("next_open", "next_close", "this_close"):
        cfg = BacktestConfig(fill=fill, sizing="fixed_qty", fixed_qty=1, **NO_COSTS)
        first = simulate(bars, decisions, cfg).fills.iloc[0]
        entries[fill] = (first["ts"], first["price"])
    assert entries == {
        "next_open": (day(1), 12.0),
        "next_close": (day(1), 13.0),
        "this_close": (day(0), 11.0),
    }
    # The same rule as a pure function the trading loop calls: decision bar → fill bar.
    assert [fill_bar(0, 3, timing_code(f)) for f in ("next_open", "next_close", "this_close")] == [1, 1, 0]
    assert fill_bar(2, 3, timing_code("next_open")) == -1  # the last bar's decision never fills
    with pytest.raises(ValueError, match="fill timing"):
        timing_code("next_week")


def test_no_fill_on_a_bar_the_symbol_lacks():
    # Y has no bar on day 2: its day-1 decision fills at the day-3 open, not at a price that never traded.
    bars = bars_frame(
        [("X", d, 10, 10) for d in range(4)] + [("Y", 0, 20, 20), ("Y", 1, 20, 20), ("Y", 3, 25, 30)]
    )
    decisions = decisions_frame([("X", d, 0) for d in range(4)] + [("Y", 0, 0), ("Y", 1, 1), ("Y", 3, 1)])
    cfg = BacktestConfig(initial_capital=200, sizing="fixed_qty", fixed_qty=2, **NO_COSTS)
    result = simulate(bars, decisions, cfg)
    (fill,) = result.fills.to_dict("records")
    assert (fill["ts"], fill["symbol"], fill["price"]) == (day(3), "Y", 25.0)
    y = result.positions[result.positions["symbol"] == "Y"]
    assert y["ts"].tolist() == [day(0), day(1), day(3)]  # no row for the missing bar
    assert y["qty"].tolist() == [0, 0, 2]
    np.testing.assert_allclose(result.equity["equity"], [200, 200, 200, 200 + 2 * (30 - 25)])


def test_stop_loss_hit_inside_the_bar_fills_at_the_stop():
    bars = bars_frame(
        [
            ("X", 0, 100, 100, 100, 100),
            ("X", 1, 100, 101, 99, 100),
            ("X", 2, 98, 99, 94, 97),
            ("X", 3, 97, 97),
        ]
    )
    decisions = decisions_frame([("X", d, 1) for d in range(4)])
    cfg = BacktestConfig(sizing="fixed_qty", fixed_qty=10, stop_loss=0.05, initial_capital=10_000, **NO_COSTS)
    result = simulate(bars, decisions, cfg)
    entry, stop = result.fills.to_dict("records")
    assert (entry["ts"], entry["price"]) == (day(1), 100.0)
    assert (stop["ts"], stop["side"], stop["reason"]) == (day(2), "sell", "stop_loss")
    assert stop["price"] == pytest.approx(95.0, rel=1e-15)  # the low of 94 crossed 95: filled at 95
    (trade,) = result.trades.to_dict("records")
    assert trade["pnl"] == pytest.approx(-50.0, rel=1e-13) and trade["exit_reason"] == "stop_loss"
    # The standing long signal does not buy back on day 3: re-entry waits for the signal to change.
    assert len(result.fills) == 2
    assert result.equity["equity"].iloc[-1] == pytest.approx(9_950.0, rel=1e-14)


def test_a_gap_through_the_stop_fills_at_the_open():
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 101, 99, 100), ("X", 2, 90, 93, 88, 92)])
    decisions = decisions_frame([("X", d, -1) for d in range(3)])
    gap_up = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 101, 99, 100), ("X", 2, 110, 112, 108, 111)])
    cfg = BacktestConfig(
        mode="long_short", sizing="fixed_qty", fixed_qty=1, stop_loss=0.05, slippage_bps=10, initial_capital=1_000,
        commission_bps=0,
    )  # fmt: skip
    short = simulate(gap_up, decisions, cfg).fills.to_dict("records")
    assert short[0]["price"] == pytest.approx(100 * (1 - 1e-3))  # sold at the open less slippage
    # Stop level 99.9 · 1.05 = 104.895; the open of 110 is past it: bought back at 110 plus slippage.
    assert (short[1]["reason"], short[1]["price"]) == ("stop_loss", pytest.approx(110 * 1.001, rel=1e-14))
    long_cfg = cfg.model_copy(update={"slippage_bps": 0.0})
    longs = simulate(bars, decisions.assign(signal=1.0), long_cfg).fills.to_dict("records")
    assert (longs[1]["reason"], longs[1]["price"]) == ("stop_loss", 90.0)  # stop 95, opened at 90


def test_take_profit_trailing_stop_and_a_bar_that_reaches_both_levels():
    rows = [("X", 0, 100, 100), ("X", 1, 100, 110, 99, 108), ("X", 2, 108, 109, 98, 100)]
    decisions = decisions_frame([("X", d, 1) for d in range(3)])
    base = dict(sizing="fixed_qty", fixed_qty=1, initial_capital=1_000, **NO_COSTS)
    # Trailing 10 %: the peak becomes 110 after day 1 → level 99; day 2's low of 98 crosses it.
    trail = simulate(bars_frame(rows), decisions, BacktestConfig(trailing_stop=0.1, **base)).fills
    assert trail["reason"].tolist() == ["signal", "trailing_stop"]
    assert trail["price"].iloc[1] == pytest.approx(99.0, rel=1e-14)
    # Take profit 5 %: 105 is inside day 1's range (the entry bar itself, entered at its open).
    take = simulate(bars_frame(rows), decisions, BacktestConfig(take_profit=0.05, **base)).fills
    assert take["reason"].tolist() == ["signal", "take_profit"]
    assert (take["ts"].iloc[1], take["price"].iloc[1]) == (day(1), pytest.approx(105.0, rel=1e-14))
    # Both a 1 % stop and a 5 % take-profit inside day 1: the stop is assumed first (conservative).
    both = simulate(
        bars_frame(rows), decisions, BacktestConfig(stop_loss=0.01, take_profit=0.05, **base)
    ).fills
    assert (both["reason"].iloc[1], both["price"].iloc[1]) == ("stop_loss", pytest.approx(99.0, rel=1e-14))
    # The trailing stop is strictly tighter than the stop-loss here, so it names the exit.
    reason, price = stop_exit(1.0, 100.0, 120.0, 0.05, math.nan, 0.1, 109.0, 110.0, 107.5)
    assert (reason, price) == (4, pytest.approx(108.0))  # TRAILING_STOP at 120 · 0.9
    assert stop_exit(1.0, 100.0, 120.0, 0.05, math.nan, 0.1, 107.0, 110.0, 106.0)[1] == 107.0  # gapped
    assert stop_exit(1.0, 100.0, 100.0, 0.05, math.nan, math.nan, 99.0, 101.0, 98.0)[0] == NO_EXIT


def test_entered_at_a_close_the_stop_waits_for_the_next_bar():
    # next_close: bought at day 1's close (100); day 1's own low of 80 happened before the entry.
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 100, 80, 100), ("X", 2, 100, 100, 99, 100)])
    decisions = decisions_frame([("X", d, 1) for d in range(3)])
    cfg = BacktestConfig(fill="next_close", sizing="fixed_qty", fixed_qty=1, stop_loss=0.1, **NO_COSTS)
    assert simulate(bars, decisions, cfg).fills["reason"].tolist() == ["signal"]


def test_borrow_cost_over_n_bars():
    bars = bars_frame([("X", d, 100, 100) for d in range(7)])
    decisions = decisions_frame(
        [("X", 0, -1)] + [("X", d, -1) for d in range(1, 5)] + [("X", 5, 0), ("X", 6, 0)]
    )
    cfg = BacktestConfig(
        mode="long_short",
        sizing="fixed_qty",
        fixed_qty=10,
        borrow_rate=0.252,
        initial_capital=10_000,
        **NO_COSTS,
    )
    result = simulate(bars, decisions, cfg, periods_per_year=252)
    # Short from day 1's open to day 6's open: held at the closes of days 1..5 → 5 fees of
    # 10 units × 100 × 0.252 / 252 = 1.0 each.
    np.testing.assert_allclose(result.equity["equity"], [10_000, 9_999, 9_998, 9_997, 9_996, 9_995, 9_995])
    (trade,) = result.trades.to_dict("records")
    assert trade["costs"] == pytest.approx(5.0) and trade["pnl"] == pytest.approx(-5.0)
    assert borrow_fee(-10.0, 100.0, 0.252, 252.0) == pytest.approx(1.0)
    assert borrow_fee(10.0, 100.0, 0.252, 252.0) == 0.0
    with pytest.raises(ValueError, match="periods_per_year"):
        simulate(bars, decisions, cfg)


def test_commission_minimum_and_formula():
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 100), ("X", 2, 100, 100)])
    decisions = decisions_frame([("X", 0, 1), ("X", 1, 0), ("X", 2, 0)])
    cfg = BacktestConfig(
        sizing="fixed_qty",
        fixed_qty=10,
        commission_bps=1,
        commission_min=5,
        slippage_bps=0,
        initial_capital=5_000,
    )
    fills = simulate(bars, decisions, cfg).fills
    assert fills["commission"].tolist() == [5.0, 5.0]  # 1 bp of 1,000 = 0.10 < the 5.00 minimum
    assert commission(10.0, 100.0, 0.0, 0.0, 1.0, 5.0) == 5.0
    assert commission(1_000.0, 100.0, 0.005, 1.0, 1.0, 5.0) == pytest.approx(1 + 5 + 10)
    assert commission(0.0, 100.0, 0.005, 1.0, 1.0, 5.0) == 0.0  # no order, no fee


def test_whole_units_round_toward_zero():
    bars = bars_frame([("X", 0, 30, 30), ("X", 1, 30, 31), ("X", 2, 31, 31)])
    decisions = decisions_frame([("X", 0, -1), ("X", 1, -1), ("X", 2, -1)])
    cfg = BacktestConfig(
        mode="long_short", fraction=1.0, initial_capital=1_000, fractional_units=False, **NO_COSTS
    )
    (fill,) = simulate(bars, decisions, cfg).fills.to_dict("records")
    assert (fill["side"], fill["qty"]) == ("sell", 33.0)  # 1,000 / 30 = 33.3 → 33 shares, not 34
    fractional = simulate(bars, decisions, cfg.model_copy(update={"fractional_units": True})).fills
    assert fractional["qty"].iloc[0] == pytest.approx(1_000 / 30)


def test_leverage_cap_scales_the_entries_and_records_them():
    bars = bars_frame([(s, d, 50, 50) for s in ("A", "B") for d in range(3)])
    decisions = decisions_frame([(s, d, 0.8) for s in ("A", "B") for d in range(3)], kind="target_weight")
    cfg = BacktestConfig(max_leverage=1.0, initial_capital=10_000, **NO_COSTS)
    result = simulate(bars, decisions, cfg)
    first = result.fills[result.fills["ts"] == day(1)]
    # 2 × 0.8 = 1.6 × equity asked, 1.0 allowed: each order scaled by 0.625 → 0.5 of equity = 100 units.
    assert first["qty"].tolist() == pytest.approx([100.0, 100.0])
    assert first["requested_qty"].tolist() == pytest.approx([160.0, 160.0])
    assert result.scaled_orders[["symbol", "requested_qty", "qty"]].to_dict("records")[:2] == [
        {"symbol": "A", "requested_qty": pytest.approx(160.0), "qty": pytest.approx(100.0)},
        {"symbol": "B", "requested_qty": pytest.approx(160.0), "qty": pytest.approx(100.0)},
    ]
    assert result.equity["gross_exposure"].max() == pytest.approx(1.0)
    # At 2× the weights fit: nothing is scaled.
    assert simulate(bars, decisions, cfg.model_copy(update={"max_leverage": 2.0})).scaled_orders.empty


def test_close_at_end_closes_at_the_last_close_with_costs():
    bars = bars_frame([("X", 0, 10, 10), ("X", 1, 10, 12), ("X", 2, 13, 15)])
    decisions = decisions_frame([("X", d, 1) for d in range(3)])
    cfg = BacktestConfig(
        sizing="fixed_qty", fixed_qty=100, commission_bps=0, slippage_bps=10, initial_capital=5_000
    )
    kept = simulate(bars, decisions, cfg)
    (trade,) = kept.trades.to_dict("records")
    assert trade["open"] and trade["exit_reason"] == "open" and trade["exit_price"] == 15.0
    closed = simulate(bars, decisions, cfg.model_copy(update={"close_at_end": True}))
    (trade,) = closed.trades.to_dict("records")
    assert not trade["open"] and trade["exit_reason"] == "close_at_end"
    assert (trade["exit_ts"], trade["exit_price"]) == (day(2), pytest.approx(15 * 0.999))
    assert closed.equity["long_value"].iloc[-1] == 0.0
    assert closed.equity["equity"].iloc[-1] == pytest.approx(5_000 + 100 * (15 * 0.999 - 10 * 1.001))


def test_half_the_spread_is_paid_when_quotes_exist():
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 100), ("X", 2, 100, 100)]).assign(
        bid=[99.0, 99.5, 98.0], ask=[101.0, 100.5, 102.0]
    )
    decisions = decisions_frame([("X", 0, 1), ("X", 1, 0), ("X", 2, 0)])
    cfg = BacktestConfig(sizing="fixed_qty", fixed_qty=1, slippage_bps=0, commission_bps=0)
    fills = simulate(bars, decisions, cfg).fills
    assert fills["price"].tolist() == [100.5, 98.0]  # bought at 100 + 0.5, sold at 100 − 2.0
    assert fills["slippage"].tolist() == [0.5, 2.0]
    assert half_spread(99.0, 101.0) == 1.0
    assert half_spread(math.nan, 101.0) == 0.0 and half_spread(101.0, 99.0) == 0.0
    assert fill_price(100.0, -1.0, 10.0, 0.5) == pytest.approx(99.4)


def test_a_wiped_out_account_is_liquidated_and_stops_trading():
    bars = bars_frame(
        [("X", 0, 10, 10), ("X", 1, 10, 10), ("X", 2, 25, 40), ("X", 3, 30, 30), ("X", 4, 20, 20)]
    )
    decisions = decisions_frame([("X", d, -1) for d in range(5)])
    cfg = BacktestConfig(mode="long_short", fraction=1.0, initial_capital=1_000, **NO_COSTS)
    result = simulate(bars, decisions, cfg)
    # Short 100 at 10; the close of 40 leaves equity 1,000 − 3,000 < 0: bought back at day 3's open.
    assert result.fills["reason"].tolist() == ["signal", "liquidation"]
    assert result.fills["price"].iloc[1] == 30.0
    np.testing.assert_allclose(result.equity["equity"], [1_000, 1_000, -2_000, -1_000, -1_000])
    assert result.equity["returns"].iloc[3] == 0.0  # no return is defined after equity ≤ 0


def test_drift_threshold_decides_when_target_weights_rebalance():
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 100), ("X", 2, 110, 110), ("X", 3, 130, 130)])
    decisions = decisions_frame([("X", d, 0.5) for d in range(4)], kind="target_weight")
    cfg = BacktestConfig(initial_capital=10_000, drift_threshold=0.03, **NO_COSTS)
    fills = simulate(bars, decisions, cfg).fills
    # Day 1: bought 50 units (0.5 of 10,000 at 100). At day 2's close the weight is 5,500 / 10,500 =
    # 0.524 (drift 0.024 ≤ 0.03: held); at day 3's close 6,500 / 11,500 = 0.565 (> 0.03) but no bar follows.
    assert fills["qty"].tolist() == [50.0]
    every = simulate(bars, decisions, cfg.model_copy(update={"drift_threshold": 0.0})).fills
    assert every["ts"].tolist() == [day(1), day(3)]  # day 2's drift is traded at day 3's open
    assert every["qty"].iloc[1] == pytest.approx(50 - 0.5 * 10_500 / 110)


def test_stop_blocks_re_entry_until_the_decision_changes():
    bars = bars_frame(
        [
            ("X", 0, 100, 100),
            ("X", 1, 100, 100, 90, 100),
            ("X", 2, 100, 100),
            ("X", 3, 100, 100),
            ("X", 4, 100, 100),
        ]
    )
    decisions = decisions_frame([("X", 0, 1), ("X", 1, 1), ("X", 2, 0), ("X", 3, 1), ("X", 4, 1)])
    cfg = BacktestConfig(sizing="fixed_qty", fixed_qty=1, stop_loss=0.05, **NO_COSTS)
    fills = simulate(bars, decisions, cfg).fills
    assert list(zip(fills["ts"], fills["reason"], strict=True)) == [
        (day(1), "signal"),
        (day(1), "stop_loss"),
        (day(4), "signal"),  # the signal went flat on day 2 and long again on day 3
    ]


def test_trade_pnl_splits_at_a_reversal():
    bars = bars_frame([("X", 0, 10, 10), ("X", 1, 10, 11), ("X", 2, 12, 13), ("X", 3, 14, 14)])
    decisions = decisions_frame([("X", 0, 1), ("X", 1, -1), ("X", 2, -1), ("X", 3, -1)])
    cfg = BacktestConfig(
        mode="long_short",
        sizing="fixed_qty",
        fixed_qty=10,
        commission_per_order=3,
        commission_bps=0,
        slippage_bps=0,
    )
    result = simulate(bars, decisions, cfg)
    assert result.fills["qty"].tolist() == [10, 20]  # one order reverses the position
    long_, short = result.trades.to_dict("records")
    assert long_["pnl"] == pytest.approx(10 * (12 - 10) - 3 - 1.5)  # half of the reversal's fee
    assert short["pnl"] == pytest.approx(10 * (12 - 14) - 1.5) and short["open"]
    assert long_["pnl"] + short["pnl"] == pytest.approx(result.equity["equity"].iloc[-1] - 1e6)


def test_benchmark_is_equal_weight_buy_and_hold_or_the_named_symbol():
    bars = bars_frame(
        [("A", d, 10 + d, 11 + d) for d in range(4)] + [("B", d, 20, 20 + 2 * d) for d in range(4)]
    )
    bars = pd.concat([bars, bars_frame([("SPY", d, 100, 100 + d) for d in range(4)])], ignore_index=True)
    decisions = every_bar(bars[bars["symbol"] != "SPY"], "signal", 0.0)
    result = simulate(bars, decisions, BacktestConfig(initial_capital=1_000))
    # Each half bought at its day-1 open (11 and 20), valued at each close.
    expected = [1_000] + [500 / 11 * (11 + d) + 500 / 20 * (20 + 2 * d) for d in (1, 2, 3)]
    np.testing.assert_allclose(result.equity["benchmark"], expected)
    assert result.equity["benchmark_returns"].iloc[1] == pytest.approx(expected[1] / 1_000 - 1)
    spy = simulate(bars, decisions, BacktestConfig(initial_capital=1_000, benchmark="SPY"))
    np.testing.assert_allclose(spy.equity["benchmark"], [1_000, 1_010, 1_020, 1_030])
    with pytest.raises(ValueError, match="benchmark 'QQQ'"):
        simulate(bars, decisions, BacktestConfig(benchmark="QQQ"))


def test_result_metrics_skip_the_starting_row_except_under_this_close():
    bars = bars_frame([("X", d, 10 + d, 10.5 + d) for d in range(6)])
    decisions = every_bar(bars, "signal", 1.0)
    result = simulate(bars, decisions, BacktestConfig(initial_capital=1_000))
    m = result.metrics(252)
    assert m["periods"] == 5 and m["trades"] == 1
    assert m["total_return"] == pytest.approx(result.equity["equity"].iloc[-1] / 1_000 - 1)
    same_close = simulate(bars, decisions, BacktestConfig(initial_capital=1_000, fill="this_close"))
    m = same_close.metrics(252)
    assert m["periods"] == 6  # the first row already holds the entry and its costs
    assert m["total_return"] == pytest.approx(same_close.equity["equity"].iloc[-1] / 1_000 - 1)
    assert result.metrics(252, benchmark=True)["trades"] == 0


def test_bad_input_is_rejected_with_a_clear_error():
    bars = bars_frame([("X", d, 10, 10) for d in range(3)])
    ok = decisions_frame([("X", 0, 1)])
    cfg = BacktestConfig()
    with pytest.raises(ValueError, match="no bar"):
        simulate(bars, decisions_frame([("X", 0, 1), ("X", 5, 1)]), cfg)
    with pytest.raises(ValueError, match="duplicate"):
        simulate(bars, decisions_frame([("X", 0, 1), ("X", 0, 1)]), cfg)
    with pytest.raises(ValueError, match="duplicate"):
        simulate(pd.concat([bars, bars]), ok, cfg)
    with pytest.raises(ValueError, match=r"signal must be -1, 0 or 1, got \[0.5\]"):
        simulate(bars, decisions_frame([("X", 0, 0.5)]), cfg)
    with pytest.raises(ValueError, match="long_flat"):
        simulate(bars, decisions_frame([("X", 0, -1)]), cfg)
    with pytest.raises(ValueError, match="exactly one of"):
        simulate(bars, ok.assign(target_qty=1.0), cfg)
    with pytest.raises(KeyError, match="high"):
        simulate(bars.drop(columns=["high", "low"]), ok, BacktestConfig(stop_loss=0.1))
    with pytest.raises(ValueError, match="positive open"):
        simulate(bars.assign(open=[-1, 10, 10]), ok, cfg)
    simulate(bars.assign(open=[10, -1, 10]), ok, cfg)  # outside the decision window: not used, no error
    with pytest.raises(ValueError, match="no decisions"):
        simulate(bars, ok.iloc[:0], cfg)
    with pytest.raises(ValueError, match="finite"):
        simulate(bars, decisions_frame([("X", 0, math.inf)], "target_weight"), cfg)
    with pytest.raises(ValueError, match="needs stop_loss"):
        BacktestConfig(sizing="risk")


# --------------------------------------------------------------------------------------------------
# (c) sizing
# --------------------------------------------------------------------------------------------------


def test_trailing_return_stats_match_pandas_on_each_symbols_own_bars():
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (40, 2)), axis=0))
    has = np.ones_like(close, dtype=bool)
    has[[5, 6, 20], 1] = False
    close[~has] = np.nan
    mean, var = trailing_return_stats(close, has, window=5)
    for j in range(2):
        own = pd.Series(close[has[:, j], j]).pct_change()
        expected_mean = own.rolling(5).mean().to_numpy()
        expected_var = own.rolling(5).var().to_numpy()
        np.testing.assert_allclose(mean[has[:, j], j], expected_mean, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(var[has[:, j], j], expected_var, rtol=1e-12, equal_nan=True)
    assert np.isnan(mean[~has]).all()


def test_kelly_vol_target_and_risk_weights_by_hand():
    # Returns alternate +2 % / −1 %: mean 0.005, sample variance of the last 4.
    close = np.array([100.0])
    for k in range(8):
        close = np.r_[close, close[-1] * (1.02 if k % 2 == 0 else 0.99)]
    close = close[:, None]
    has = np.ones_like(close, dtype=bool)
    signal = np.where(has, 1.0, 0.0)
    signal[-1] = -1.0
    r = np.array([0.02, -0.01, 0.02, -0.01])
    mu, var = r.mean(), r.var(ddof=1)  # 0.005, 0.0003

    kelly = BacktestConfig(sizing="kelly", sizing_window=4, kelly_cap=100.0, fraction=0.5)
    weights, _ = signal_targets(signal, close, has, kelly, 1, 252)
    assert np.isnan(weights[:4, 0]).sum() == 0 and (weights[:4, 0] == 0).all()  # fewer than 4 returns yet
    assert weights[-2, 0] == pytest.approx(0.5 * mu / var)  # 8.33…
    assert weights[-1, 0] == 0.0  # short, but the short side has no edge (−μ < 0)
    capped, _ = signal_targets(signal, close, has, kelly.model_copy(update={"kelly_cap": 2.0}), 1, 252)
    assert capped[-2, 0] == pytest.approx(0.5 * 2.0)

    vol = BacktestConfig(sizing="vol_target", vol_target=0.2, sizing_window=4)
    weights, _ = signal_targets(signal, close, has, vol, 2, 252)
    assert weights[-2, 0] == pytest.approx(0.5 * 0.2 / math.sqrt(var * 252))
    assert weights[-1, 0] == pytest.approx(-0.5 * 0.2 / math.sqrt(var * 252))

    risk = BacktestConfig(sizing="risk", risk_per_trade=0.01, stop_loss=0.05)
    weights, _ = signal_targets(signal, close, has, risk, 1, None)
    assert weights[0, 0] == pytest.approx(0.2)  # 1 % at risk over a 5 % stop = 20 % of equity


def test_risk_sizing_loses_the_risked_fraction_at_the_stop():
    bars = bars_frame([("X", 0, 100, 100), ("X", 1, 100, 100, 100, 100), ("X", 2, 100, 100, 90, 95)])
    decisions = every_bar(bars, "signal", 1.0)
    cfg = BacktestConfig(
        sizing="risk", risk_per_trade=0.01, stop_loss=0.05, initial_capital=100_000, **NO_COSTS
    )
    result = simulate(bars, decisions, cfg)
    assert result.fills["reason"].tolist() == ["signal", "stop_loss"]
    assert result.equity["equity"].iloc[-1] == pytest.approx(99_000)  # exactly 1 % lost


# --------------------------------------------------------------------------------------------------
# (d) properties
# --------------------------------------------------------------------------------------------------


@FAST
@given(st.data(), st.sampled_from(["next_open", "next_close", "this_close"]))
def test_property_no_trade_without_a_signal(data, fill):
    bars = data.draw(markets())
    decisions = data.draw(decisions_for(bars, "signal")).assign(signal=0.0)
    result = simulate(bars, decisions, BacktestConfig(mode="long_short", fill=fill, initial_capital=1e6))
    assert result.fills.empty and result.trades.empty
    assert (result.equity["equity"] == 1e6).all() and (result.equity["returns"] == 0).all()
    weights = data.draw(decisions_for(bars, "target_weight")).assign(target_weight=math.nan)
    assert simulate(bars, weights, BacktestConfig(fill=fill)).fills.empty


@FAST
@given(st.data(), st.sampled_from(["next_open", "next_close", "this_close"]))
def test_property_costs_never_increase_pnl(data, fill):
    # Target quantities make the orders identical with and without costs (no equity-dependent
    # sizing, no stop levels moved by fill prices), so the runs differ only by what the costs took.
    bars = data.draw(markets())
    decisions = data.draw(decisions_for(bars, "target_qty"))
    free = BacktestConfig(mode="long_short", fill=fill, max_leverage=1e9, initial_capital=1e6, **NO_COSTS)
    dear = free.model_copy(
        update={
            "commission_bps": data.draw(st.floats(0, 50)),
            "commission_per_share": data.draw(st.floats(0, 0.05)),
            "commission_per_order": data.draw(st.floats(0, 5)),
            "commission_min": data.draw(st.floats(0, 5)),
            "slippage_bps": data.draw(st.floats(0, 50)),
            "borrow_rate": data.draw(st.floats(0, 0.5)),
        }
    )
    a = simulate(bars, decisions, free, periods_per_year=252)
    b = simulate(bars, decisions, dear, periods_per_year=252)
    # A wiped-out account or a leverage cut (orders sized by the equity left) would part the paths.
    assume("liquidation" not in set(a.fills["reason"]) | set(b.fills["reason"]))
    assume(a.scaled_orders.empty and b.scaled_orders.empty)
    pd.testing.assert_frame_equal(
        a.fills[["ts", "symbol", "side", "qty"]], b.fills[["ts", "symbol", "side", "qty"]]
    )
    assert (b.equity["equity"] <= a.equity["equity"] + 1e-9).all()
    assert (b.trades["pnl"].to_numpy() <= a.trades["pnl"].to_numpy() + 1e-9).all()
    extra_costs = b.trades["costs"].sum() - a.trades["costs"].sum()  # a pays the quoted spread, too
    assert a.equity["equity"].iloc[-1] - b.equity["equity"].iloc[-1] == pytest.approx(extra_costs, abs=1e-6)


@FAST
@given(st.data(), st.sampled_from(["signal", "target_weight", "target_qty"]))
def test_property_equity_is_cash_plus_marked_positions_at_every_bar(data, kind):
    bars = data.draw(markets())
    decisions = data.draw(decisions_for(bars, kind))
    cfg = data.draw(configs(kind))
    result = simulate(bars, decisions, cfg, periods_per_year=252)
    eq = result.equity.set_index("ts")
    # Each symbol's qty and close carried forward over the bars it lacks, marked at every grid ts.
    pos = result.positions.pivot(index="ts", columns="symbol", values=["qty", "price"]).ffill().fillna(0.0)
    value = pos["qty"] * pos["price"]
    np.testing.assert_allclose(eq["long_value"], value.clip(lower=0).sum(axis=1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(eq["short_value"], value.clip(upper=0).sum(axis=1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(eq["equity"], eq["cash"] + value.sum(axis=1), rtol=1e-12, atol=1e-9)
    # Every currency unit is accounted for: trades add up to the equity change, and the costs of
    # the trades are the fills' commissions and slippage plus the borrow fees.
    assert result.trades["pnl"].sum() == pytest.approx(eq["equity"].iloc[-1] - cfg.initial_capital, abs=1e-6)
    fill_costs = result.fills["commission"].sum() + result.fills["slippage"].sum()
    assert result.trades["costs"].sum() >= fill_costs - 1e-6
    # Fills happen only on bars the symbol has.
    keys = set(zip(bars["symbol"], bars["ts"], strict=True))
    assert all(k in keys for k in zip(result.fills["symbol"], result.fills["ts"], strict=True))


def _shuffled_market(rng: np.random.Generator, gaps: np.ndarray, moves: np.ndarray) -> pd.DataFrame:
    """Prices from the base gaps and moves, shuffled and with random signs: each bar's return is then
    independent of everything before it with mean 0, so no past-only rule has an edge."""
    g = rng.permutation(gaps) * rng.choice([-1.0, 1.0], gaps.size)
    m = rng.permutation(moves) * rng.choice([-1.0, 1.0], moves.size)
    open_ = np.empty(gaps.size)
    close = np.empty(gaps.size)
    price = 100.0
    for k in range(gaps.size):
        open_[k] = price * (1 + g[k])
        close[k] = price = open_[k] * (1 + m[k])
    return pd.DataFrame(
        {
            "symbol": "X",
            "ts": BASE + pd.to_timedelta(np.arange(gaps.size), "D"),
            "open": open_,
            "close": close,
        }
    )


def _final_pnl(bars: pd.DataFrame, signal: np.ndarray) -> float:
    cfg = BacktestConfig(mode="long_short", fraction=1.0, initial_capital=1.0, **NO_COSTS)
    result = simulate(bars, bars[["symbol", "ts"]].assign(signal=signal), cfg)
    return float(result.equity["equity"].iloc[-1] - 1.0)


def test_a_past_only_strategy_cannot_profit_from_shuffled_future_prices():
    base = np.random.default_rng(0)
    gaps, moves = np.abs(base.normal(0, 0.005, 250)), np.abs(base.normal(0, 0.015, 250))
    honest, peeking = [], []
    for seed in range(150):
        bars = _shuffled_market(np.random.default_rng(seed + 1), gaps, moves)
        close = bars["close"]
        trend = np.sign(close - close.rolling(10, min_periods=1).mean()).to_numpy()  # knows only the past
        honest.append(_final_pnl(bars, trend))
        ahead = np.sign(bars["close"].shift(-1) - bars["open"].shift(-1)).fillna(0).to_numpy()  # the next bar
        peeking.append(_final_pnl(bars, ahead))
    mean, se = np.mean(honest), np.std(honest, ddof=1) / math.sqrt(len(honest))
    assert abs(mean) < 4 * se, (mean, se)
    # The test has the power to see an edge: the same engine with a peek at the next bar wins big.
    assert np.mean(peeking) > 4 * np.std(peeking, ddof=1) / math.sqrt(len(peeking))
