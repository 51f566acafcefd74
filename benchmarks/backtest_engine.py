"""Benchmark: the portfolio engine (`quanto.backtest.portfolio.simulate`) vs a plain Python loop and vectorbt.

Cases (seeded data, built once):
1. single_asset_ma_crossover: one symbol, 1,000,000 one-minute bars (consecutive minutes, no session
   gaps), a 10/50 moving-average crossover (long when SMA10 > SMA50, else flat) decided at each close
   and filled at the next bar's open; all of equity per position, 1 bp commission + 2 bps slippage.
   Peers:
   - "python-loop-reference": `reference_simulate` of tests/unit/test_portfolio.py, the engine's
     rules written as a plain loop over timestamps. Its fills and equity must be IDENTICAL to ours
     (every float equal, not close) or the benchmark fails. Pure Python has no warm-up to discard; it
     runs REPS times (~20-35 s each at full scale).
   - "vectorbt": `Portfolio.from_signals` (vectorbt 1.2.0) with the same signals shifted one bar so
     they execute at the next bar's `price=open`, size inf (all cash), fees 1e-4, slippage 2e-4. Its
     fills are on the same bars as ours (checked: "same_fill_bars"); quantities differ slightly
     (vectorbt sizes from cash at the fill price, ours from equity at the decision close, under the
     leverage cap).
2. portfolio_target_weights: 500 symbols x 2,500 daily bars; every 21 bars the 50 symbols with the
   best trailing 126-bar return get target weight 1/50 (the rest 0), filled at the next open with the
   same costs. Peer "vectorbt": `Portfolio.from_orders` with size_type "targetpercent", one group with
   cash sharing, call_seq "auto" (sells before buys), orders one bar later at `price=open`.

What is timed: ours = `simulate(...)` plus building its equity and fills frames (the equity curve and
the executions, which is what the peers produce); `ours_all_s` adds the trades and positions frames
(1M rows) for the record. vectorbt = the `from_*` call plus `pf.value()` (its equity curve; its order
records come with the call). The reference = its whole loop.

vectorbt runs here with pandas 3 / numpy 2, with one caveat measured and avoided: given a tz-aware
DatetimeIndex, every vectorbt call spends seconds converting the index to Python Timestamps (pandas
3's DatetimeArray.__array__ on tz-aware data), ~18 s per call at 1M bars; it is therefore given a
naive (UTC wall-clock) DatetimeIndex, as a vectorbt user would. Without vectorbt installed (the `dev`
extra installs it) its lines say why in "peer_error".

$QUANTO_BENCH_SCALE (default 1) scales the bar count of case 1 and the symbol count of case 2;
$QUANTO_BENCH_REPS (default 3) sets the timed repetitions: ours and vectorbt alternate after one
warm-up each (medians), the reference loop runs REPS times. Prints one JSON line per case and peer
(DESIGN.md section 9) with the 1-minute load average; progress goes to stderr.
Goals: ours >= vectorbt (ratio >= 1) on both cases; fills identical to the reference loop. Where the
single-asset case falls short, the compiled loops cost about the same (~35 ns per bar each); ours
spends the rest turning long (symbol, ts) frames into the grid, validating them, and building the
12-column equity frame, where vectorbt starts from wide arrays and builds one value series.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from quanto.backtest.portfolio import simulate
from quanto.config.models import BacktestConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference loop lives in the tests
from tests.unit.test_portfolio import reference_simulate  # noqa: E402

try:
    import vectorbt as vbt

    VBT_ERROR = None
except Exception as err:  # the `dev` extra installs it; without it that peer reports why
    vbt = None
    VBT_ERROR = f"{type(err).__name__}: {err}"

SCALE = float(os.environ.get("QUANTO_BENCH_SCALE", 1.0))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
N_BARS = max(1_000, round(1_000_000 * SCALE))
N_SYMBOLS = max(5, round(500 * SCALE))
N_DAYS = 2_500
FAST, SLOW = 10, 50
REBALANCE_EVERY, LOOKBACK, TOP = 21, 126, 50
FEES, SLIPPAGE = 1e-4, 2e-4  # 1 bp commission, 2 bps slippage, per side
GOAL = "ratio >= 1 (ours at least as fast as the peer)"


def log(msg: str) -> None:
    print(f"[backtest_engine] {msg}", file=sys.stderr, flush=True)


def emit(**fields) -> None:
    fields.update(reps=REPS, scale=SCALE, load_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(fields), flush=True)


def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """(median seconds of `reps` runs, the last result); for the pure-Python reference: no warm-up."""
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def race(ours_fn: Callable[[], object], peer_fn: Callable[[], object], reps: int):
    """(ours median s, peer median s, ours' last result, the peer's): one warm-up each, then the two
    alternate so machine noise hits both."""
    ours_fn(), peer_fn()
    ours_s, peer_s = [], []
    for _ in range(reps):
        # Outside the timed sections: vectorbt's results are freed only by the cycle collector, and
        # their piled-up memory otherwise sends the next run's arrays to fresh pages (page faults).
        gc.collect()
        t = time.perf_counter()
        mine = ours_fn()
        ours_s.append(time.perf_counter() - t)
        gc.collect()
        t = time.perf_counter()
        theirs = peer_fn()
        peer_s.append(time.perf_counter() - t)
    return statistics.median(ours_s), statistics.median(peer_s), mine, theirs


# --- case 1: one symbol, a million bars -----------------------------------------------------------


def single_asset(n: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0.0, 0.0002, n))
    ts = pd.Timestamp("2020-01-02 14:30", tz="UTC") + pd.to_timedelta(np.arange(n), "min")
    bars = pd.DataFrame({"symbol": "X", "ts": ts, "open": open_, "close": close})
    price = pd.Series(close)
    signal = (price.rolling(FAST).mean() > price.rolling(SLOW).mean()).astype(float).to_numpy()
    return bars, bars[["symbol", "ts"]].assign(signal=signal)


def ours(bars: pd.DataFrame, decisions: pd.DataFrame, cfg: BacktestConfig, everything: bool = False):
    result = simulate(bars, decisions, cfg)
    for name in ("equity", "fills", *(("trades", "positions") if everything else ())):
        getattr(result, name)  # each frame is built on its first read
    return result


def check_identical(result, reference: dict) -> None:
    """Fills and equity of ours and the reference loop are equal float for float."""
    want = pd.DataFrame(reference["fills"])
    got = result.fills
    if len(got) != len(want):
        raise AssertionError(f"fills differ in number: ours {len(got)}, reference {len(want)}")
    for col in ("ts", "side", "reason"):
        if got[col].tolist() != want[col].tolist():
            raise AssertionError(f"fills differ in {col}")
    for col in ("qty", "price", "commission", "slippage"):
        if not np.array_equal(got[col].to_numpy(), want[col].to_numpy(dtype=float)):
            raise AssertionError(f"fills differ in {col}")
    equity = np.array([row["equity"] for row in reference["equity"]])
    if not np.array_equal(result.equity["equity"].to_numpy(), equity):
        raise AssertionError("equity curves differ")


def vbt_signals(bars: pd.DataFrame, decisions: pd.DataFrame):
    index = pd.DatetimeIndex(bars["ts"]).tz_localize(None)  # see the docstring: naive for vectorbt
    close = pd.Series(bars["close"].to_numpy(), index=index)
    open_ = pd.Series(bars["open"].to_numpy(), index=index)
    held = pd.Series(decisions["signal"].to_numpy() > 0, index=index).shift(1, fill_value=False)
    entries = held & ~held.shift(1, fill_value=False)
    exits = ~held & held.shift(1, fill_value=False)

    def run():
        pf = vbt.Portfolio.from_signals(
            close, entries, exits, price=open_, fees=FEES, slippage=SLIPPAGE, init_cash=1e6, freq="1min"
        )
        pf.value()
        return pf

    return run


def bench_single_asset() -> None:
    bars, decisions = single_asset(N_BARS)
    cfg = BacktestConfig(fraction=1.0, commission_bps=FEES * 1e4, slippage_bps=SLIPPAGE * 1e4)
    log(f"single asset: {N_BARS:,} bars, {int(decisions['signal'].diff().abs().sum()):,} signal changes")
    run_ours = lambda: ours(bars, decisions, cfg)  # noqa: E731
    ours(bars, decisions, cfg)  # compiles (or loads the cached) engine
    ours_all_s, result = timed(lambda: ours(bars, decisions, cfg, everything=True), REPS)
    ref_s, reference = timed(lambda: reference_simulate(bars, decisions, cfg), REPS)
    check_identical(result, reference)
    log(f"reference loop {ref_s:.1f} s; fills and equity identical to ours "
        f"({ours_all_s:.3f} s with every frame)")  # fmt: skip

    if vbt is None:
        ours_s, result = timed(run_ours, REPS)
        common = dict(bench="single_asset_ma_crossover", n=N_BARS, ours_s=round(ours_s, 4),
                      unit_rate=round(N_BARS / ours_s), ours_all_s=round(ours_all_s, 4), fills=len(result.fills))  # fmt: skip
        emit(**common, peer="python-loop-reference", peer_s=round(ref_s, 3), ratio=round(ref_s / ours_s, 1),
             fills_identical=True, goal="fills identical")  # fmt: skip
        emit(**common, peer="vectorbt", peer_s=None, ratio=None, peer_error=VBT_ERROR, goal=GOAL)
        return
    ours_s, peer_s, result, pf = race(run_ours, vbt_signals(bars, decisions), REPS)
    peer_rows = np.sort(pf.orders.records["idx"])
    ours_rows = np.searchsorted(bars["ts"].to_numpy(), result.fills["ts"].to_numpy())
    same = bool(np.array_equal(peer_rows, np.sort(ours_rows)))
    log(
        f"ours {ours_s:.3f} s, vectorbt {peer_s:.3f} s ({len(peer_rows):,} orders, same bars as ours: {same})"
    )
    common = dict(bench="single_asset_ma_crossover", n=N_BARS, ours_s=round(ours_s, 4),
                  unit_rate=round(N_BARS / ours_s), ours_all_s=round(ours_all_s, 4), fills=len(result.fills))  # fmt: skip
    emit(**common, peer="python-loop-reference", peer_s=round(ref_s, 3), ratio=round(ref_s / ours_s, 1),
         fills_identical=True, goal="fills identical")  # fmt: skip
    emit(**common, peer=f"vectorbt {vbt.__version__} from_signals", peer_s=round(peer_s, 4),
         ratio=round(peer_s / ours_s, 2), peer_fills=len(peer_rows), same_fill_bars=same, goal=GOAL)  # fmt: skip


# --- case 2: 500 symbols, rebalanced to target weights -------------------------------------------


def portfolio(n_symbols: int, n_days: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.01, 0.03, size=(1, n_symbols))
    close = np.exp(rng.uniform(np.log(10), np.log(300), (1, n_symbols)) + np.cumsum(rng.normal(2e-4, 1, (n_days, n_symbols)) * vol, axis=0))  # fmt: skip
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.3, close.shape) * vol)
    days = pd.bdate_range("2014-01-02", periods=n_days, tz="UTC")
    symbols = np.asarray([f"S{i:04d}" for i in range(n_symbols)], dtype=object)
    bars = pd.DataFrame(
        {
            "symbol": np.tile(symbols, n_days),
            "ts": np.repeat(days, n_symbols),
            "open": open_.ravel(),
            "close": close.ravel(),
        }
    )
    momentum = pd.DataFrame(close).pct_change(LOOKBACK).to_numpy()
    weights = np.full(close.shape, np.nan)  # NaN: no decision, hold
    for t in range(LOOKBACK, n_days, REBALANCE_EVERY):
        top = np.argsort(-momentum[t])[:TOP]
        weights[t] = 0.0
        weights[t, top] = 1.0 / TOP
    decided = ~np.isnan(weights).all(axis=1)
    decided[-1] = True  # a (NaN) decision row on the last day: the window runs to the end
    rows = np.flatnonzero(decided)
    decisions = pd.DataFrame(
        {
            "symbol": np.tile(symbols, rows.size),
            "ts": np.repeat(days[rows], n_symbols),
            "target_weight": weights[rows].ravel(),
        }
    )
    return bars, decisions, (days, symbols, open_, close, weights)


def vbt_rebalance(wide):
    days, symbols, open_, close, weights = wide
    index = days.tz_localize(None)
    close_df = pd.DataFrame(close, index=index, columns=symbols)
    open_df = pd.DataFrame(open_, index=index, columns=symbols)
    size = pd.DataFrame(weights, index=index, columns=symbols).shift(1)  # execute at the next open

    def run():
        pf = vbt.Portfolio.from_orders(
            close_df, size, size_type="targetpercent", price=open_df, fees=FEES, slippage=SLIPPAGE,
            init_cash=1e6, cash_sharing=True, group_by=True, call_seq="auto", freq="1D",
        )  # fmt: skip
        pf.value()
        return pf

    return run


def bench_portfolio() -> None:
    bars, decisions, wide = portfolio(N_SYMBOLS, N_DAYS)
    n = len(bars)
    cfg = BacktestConfig(commission_bps=FEES * 1e4, slippage_bps=SLIPPAGE * 1e4)
    weights = int(decisions["target_weight"].notna().sum())
    log(f"portfolio: {N_SYMBOLS} symbols x {N_DAYS} bars, {weights:,} target weights")
    run_ours = lambda: ours(bars, decisions, cfg)  # noqa: E731
    ours(bars, decisions, cfg)
    ours_all_s, _ = timed(lambda: ours(bars, decisions, cfg, everything=True), REPS)
    common = dict(bench="portfolio_target_weights", n=n, unit_rate=None, ours_all_s=round(ours_all_s, 4),
                  symbols=N_SYMBOLS)  # fmt: skip
    if vbt is None:
        ours_s, result = timed(run_ours, REPS)
        common.update(ours_s=round(ours_s, 4), unit_rate=round(n / ours_s), fills=len(result.fills))
        emit(**common, peer="vectorbt", peer_s=None, ratio=None, peer_error=VBT_ERROR, goal=GOAL)
        return
    ours_s, peer_s, result, pf = race(run_ours, vbt_rebalance(wide), REPS)
    final, peer_final = float(result.equity["equity"].iloc[-1]), float(pf.value().iloc[-1])
    log(f"ours {ours_s:.3f} s ({ours_all_s:.3f} s with every frame), {len(result.fills):,} fills, final equity "
        f"{final:,.0f}; vectorbt {peer_s:.3f} s, {pf.orders.count():,} orders, final equity {peer_final:,.0f}")  # fmt: skip
    common.update(ours_s=round(ours_s, 4), unit_rate=round(n / ours_s), fills=len(result.fills))
    emit(**common, peer=f"vectorbt {vbt.__version__} from_orders targetpercent", peer_s=round(peer_s, 4),
         ratio=round(peer_s / ours_s, 2), peer_fills=int(pf.orders.count()), final_equity=round(final, 2),
         peer_final_equity=round(peer_final, 2), goal=GOAL)  # fmt: skip


if __name__ == "__main__":
    log(f"scale {SCALE}, reps {REPS}, load {os.getloadavg()}")
    bench_single_asset()
    bench_portfolio()
