"""Backtest engine and metrics: a plain bar-by-bar loop as oracle, hand-computed cases, properties."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quanto.backtest.engine import (
    EQUITY_COLUMNS,
    POSITION_COLUMNS,
    TRADE_COLUMNS,
    backtest_predictions,
    target_positions,
)
from quanto.backtest.metrics import performance_metrics, periods_per_year_for
from quanto.config.models import BacktestConfig

RTOL = 1e-10

# --------------------------------------------------------------------------------------------------
# Oracle: the rules written as a plain loop over timestamps, one symbol bar at a time.
# --------------------------------------------------------------------------------------------------


def _oracle_signal(pred: float | None, cfg: BacktestConfig, objective: str) -> float:
    if pred is None or math.isnan(pred):
        return 0.0
    centre = 0.5 if objective == "classification" else 0.0
    if pred > centre + cfg.entry_threshold:
        return 1.0
    if cfg.mode == "long_short" and pred < centre - cfg.entry_threshold:
        return -1.0
    return 0.0


def oracle_backtest(bars: pd.DataFrame, preds: pd.DataFrame, cfg: BacktestConfig, objective: str):
    """Returns (equity rows [(ts, equity, benchmark)], trades [dict], positions {(symbol, ts): position})."""
    pred_at = {(r.symbol, r.ts): r.prediction for r in preds.itertuples()}
    symbols = sorted(set(preds["symbol"]))
    start, end = preds["ts"].min(), preds["ts"].max()
    bars_at: dict[pd.Timestamp, dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in bars.itertuples():
        if r.symbol in symbols and start <= r.ts <= end:
            bars_at[r.ts][r.symbol] = (r.open, r.close)

    capital = cfg.initial_capital / len(symbols)
    cost_rate = (cfg.commission_bps + cfg.slippage_bps) / 1e4
    equity = dict.fromkeys(symbols, capital)
    position = dict.fromkeys(symbols, 0.0)
    pending: dict[str, float | None] = dict.fromkeys(symbols)
    last_close: dict[str, float] = {}
    last_ts: dict[str, pd.Timestamp] = {}
    open_trade: dict[str, dict | None] = dict.fromkeys(symbols)
    shares: dict[str, float | None] = dict.fromkeys(symbols)  # benchmark: shares bought at the 2nd bar
    bench_value = dict.fromkeys(symbols, capital)
    seen_bars = dict.fromkeys(symbols, 0)
    trades: list[dict] = []
    positions: dict[tuple[str, pd.Timestamp], float] = {}
    curve = []

    for ts in sorted(bars_at):
        for sym, (o, c) in bars_at[ts].items():
            if pending[sym] is not None:
                old, new = position[sym], pending[sym]
                fill = max(equity[sym] * (1 + old * (o / last_close[sym] - 1)), 0.0)
                eq = fill
                if new != old:
                    if old != 0:
                        exit_cost = abs(old) * fill * cost_rate
                        eq -= exit_cost
                        t = open_trade[sym]
                        t.update(exit_ts=ts, exit_price=o, pnl=eq - t["start"], open=False)
                        t["costs"] += exit_cost
                        trades.append(t)
                        open_trade[sym] = None
                    if new != 0:
                        entry_cost = abs(new) * fill * cost_rate
                        open_trade[sym] = dict(
                            symbol=sym,
                            side="long" if new > 0 else "short",
                            entry_ts=ts,
                            entry_price=o,
                            qty_fraction=abs(new),
                            costs=entry_cost,
                            start=eq,
                        )
                        eq -= entry_cost
                    eq = max(eq, 0.0)
                position[sym] = new
                equity[sym] = max(eq * (1 + new * (c / o - 1)), 0.0)
            positions[(sym, ts)] = position[sym]
            pending[sym] = _oracle_signal(pred_at.get((sym, ts)), cfg, objective)
            last_close[sym], last_ts[sym] = c, ts

            seen_bars[sym] += 1
            if seen_bars[sym] == 2:
                shares[sym] = capital / o
            if shares[sym] is not None:
                bench_value[sym] = shares[sym] * c
        curve.append((ts, sum(equity.values()), sum(bench_value.values())))

    for sym in symbols:
        t = open_trade[sym]
        if t is not None:
            t.update(
                exit_ts=last_ts[sym], exit_price=last_close[sym], pnl=equity[sym] - t["start"], open=True
            )
            trades.append(t)
    for t in trades:
        t["return"] = t["pnl"] / t["start"] if t["start"] > 0 else 0.0
    return curve, trades, positions


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def random_market(seed: int, objective: str, n_bars: int = 80, symbols=("AAA", "BBB", "CCC")):
    """Seeded bars on a daily grid; BBB misses ~25% of bars; predictions cover a sub-range with holes."""
    rng = np.random.default_rng(seed)
    grid = pd.date_range("2024-01-01", periods=n_bars, freq="D", tz="UTC")
    bars, preds = [], []
    for i, sym in enumerate(symbols):
        close = 50 * (i + 1) * np.exp(np.cumsum(rng.normal(0, 0.02, n_bars)))
        open_ = close * np.exp(rng.normal(0, 0.01, n_bars))
        frame = pd.DataFrame({"symbol": sym, "ts": grid, "open": open_, "close": close})
        if sym == "BBB":
            frame = frame[rng.random(n_bars) > 0.25]
        bars.append(frame)
        first = 20 + 3 * i  # predictions start at different bars per symbol, end at bar 70
        p = frame[(frame["ts"] >= grid[first]) & (frame["ts"] <= grid[70])][["symbol", "ts"]].copy()
        p = p[rng.random(len(p)) > 0.1]  # some bars inside the window have no prediction
        p["prediction"] = rng.random(len(p)) if objective == "classification" else rng.normal(0, 1, len(p))
        preds.append(p)
    return (
        pd.concat(bars, ignore_index=True),
        pd.concat(preds, ignore_index=True),
    )


def make_bars(rows: list[tuple[str, int, float, float]]) -> pd.DataFrame:
    """(symbol, day index, open, close) → bars on 2024-01-01 + day."""
    base = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "ts": [base + pd.Timedelta(days=r[1]) for r in rows],
            "open": [float(r[2]) for r in rows],
            "close": [float(r[3]) for r in rows],
        }
    )


def make_preds(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
    base = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "ts": [base + pd.Timedelta(days=r[1]) for r in rows],
            "prediction": [float(r[2]) for r in rows],
        }
    )


def day(i: int) -> pd.Timestamp:
    return pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=i)


def assert_matches_oracle(bars, preds, cfg, objective) -> None:
    result = backtest_predictions(bars, preds, cfg, objective)
    curve, trades, positions = oracle_backtest(bars, preds, cfg, objective)

    eq = result.equity
    assert list(eq.columns) == list(EQUITY_COLUMNS)
    assert list(eq["ts"]) == [c[0] for c in curve]
    np.testing.assert_allclose(eq["equity"], [c[1] for c in curve], rtol=RTOL)
    np.testing.assert_allclose(eq["benchmark"], [c[2] for c in curve], rtol=RTOL)

    got = result.trades
    assert list(got.columns) == list(TRADE_COLUMNS)
    expected = pd.DataFrame(trades, columns=[*TRADE_COLUMNS, "start"]).drop(columns="start")
    expected = expected.sort_values(["symbol", "entry_ts"]).reset_index(drop=True)
    got = got.sort_values(["symbol", "entry_ts"]).reset_index(drop=True)
    assert len(got) == len(expected)
    for col in ("symbol", "side", "open"):
        assert got[col].tolist() == expected[col].tolist(), col
    for col in ("entry_ts", "exit_ts"):
        assert [pd.Timestamp(x) for x in got[col]] == [pd.Timestamp(x) for x in expected[col]], col
    for col in ("entry_price", "exit_price", "qty_fraction", "pnl", "costs", "return"):
        np.testing.assert_allclose(
            got[col].to_numpy(float), expected[col].to_numpy(float), rtol=RTOL, atol=1e-6, err_msg=col
        )

    pos = result.positions
    assert list(pos.columns) == list(POSITION_COLUMNS)
    assert {(s, t): p for s, t, p in zip(pos["symbol"], pos["ts"], pos["position"], strict=True)} == positions


# --------------------------------------------------------------------------------------------------
# (a) vectorized engine == plain loop
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("objective", ["regression", "classification"])
@pytest.mark.parametrize("mode", ["long_flat", "long_short"])
def test_engine_matches_loop_oracle(seed, objective, mode):
    bars, preds = random_market(seed, objective)
    threshold = 0.05 if objective == "classification" else 0.2
    cfg = BacktestConfig(
        mode=mode, entry_threshold=threshold, commission_bps=1.5, slippage_bps=2.5, initial_capital=1e6
    )
    result = backtest_predictions(bars, preds, cfg, objective)
    assert len(result.trades) > 5  # the case exercises many fills
    assert (result.trades["side"] == "short").any() == (mode == "long_short")
    assert_matches_oracle(bars, preds, cfg, objective)


def test_oracle_agreement_survives_shuffled_input_and_a_wiped_out_short():
    # A short through a price that triples wipes the sleeve out; it must stay at 0 afterwards.
    bars = make_bars(
        [("X", 0, 10, 10), ("X", 1, 10, 10), ("X", 2, 31, 35), ("X", 3, 36, 30), ("X", 4, 30, 28)]
        + [("Y", d, 20, 20 + d) for d in range(5)]
    )
    preds = make_preds([("X", d, -1.0) for d in range(5)] + [("Y", d, 1.0) for d in range(5)])
    cfg = BacktestConfig(mode="long_short", initial_capital=1000)
    result = backtest_predictions(bars.sample(frac=1, random_state=0), preds, cfg)
    x_positions = result.positions[result.positions["symbol"] == "X"]
    assert x_positions["position"].tolist() == [0, -1, -1, -1, -1]
    # X sleeve (500) is wiped out on day 2's gap, Y sleeve rides 20 → 24 from the day-1 open.
    assert result.equity["equity"].iloc[-1] == pytest.approx(500 * 24 / 20 * (1 - 3e-4))
    assert (result.equity["equity"] >= 0).all()
    assert_matches_oracle(bars, preds, cfg, "regression")


# --------------------------------------------------------------------------------------------------
# (b) hand-computed cases
# --------------------------------------------------------------------------------------------------


def test_one_long_trade_by_hand():
    bars = make_bars([("X", 0, 100, 100), ("X", 1, 102, 104), ("X", 2, 103, 101), ("X", 3, 100, 99)])
    preds = make_preds([("X", 0, 1.0), ("X", 1, 1.0), ("X", 2, -1.0), ("X", 3, 1.0)])
    cfg = BacktestConfig(mode="long_flat", commission_bps=1, slippage_bps=2, initial_capital=10_000)
    result = backtest_predictions(bars, preds, cfg)

    entry_cost = 10_000 * 3e-4  # 3.0 at day 1's open
    after_entry = 10_000 - entry_cost
    exit_fill = after_entry * 100 / 102  # held from the 102 open to the 100 open of day 3
    exit_cost = exit_fill * 3e-4
    expected = [
        10_000,
        after_entry * 104 / 102,
        after_entry * 101 / 102,
        exit_fill - exit_cost,  # flat over day 3: the fall to 99 is not ours
    ]
    np.testing.assert_allclose(result.equity["equity"], expected, rtol=1e-13)
    np.testing.assert_allclose(
        result.equity["benchmark"], [10_000, 10_000 * 104 / 102, 10_000 * 101 / 102, 10_000 * 99 / 102]
    )
    assert result.positions["position"].tolist() == [0, 1, 1, 0]
    # The decision on the last bar (long) has no bar to fill at.
    assert result.positions["target_position"].tolist() == [1, 1, 0, 1]

    (trade,) = result.trades.to_dict("records")
    assert trade["side"] == "long" and not trade["open"]
    assert (trade["entry_ts"], trade["entry_price"]) == (day(1), 102.0)
    assert (trade["exit_ts"], trade["exit_price"]) == (day(3), 100.0)
    assert trade["costs"] == pytest.approx(entry_cost + exit_cost, rel=1e-13)
    assert trade["pnl"] == pytest.approx(expected[-1] - 10_000, rel=1e-12)
    assert trade["return"] == pytest.approx(trade["pnl"] / 10_000, rel=1e-12)
    assert result.equity["returns"].iloc[0] == 0.0
    assert result.equity["drawdown"].iloc[-1] == pytest.approx(expected[-1] / expected[1] - 1)


def test_short_flip_pays_both_legs_and_open_trade_is_marked_to_market():
    bars = make_bars([("X", 0, 50, 50), ("X", 1, 50, 40), ("X", 2, 44, 48), ("X", 3, 50, 55)])
    preds = make_preds([("X", 0, -0.5), ("X", 1, 0.5), ("X", 2, 0.5)])  # no prediction on day 3
    cfg = BacktestConfig(mode="long_short", commission_bps=5, slippage_bps=5, initial_capital=1_000)
    result = backtest_predictions(bars, preds, cfg)
    # The window ends at the last prediction (day 2): day 3 is outside.
    assert result.equity["ts"].tolist() == [day(0), day(1), day(2)]

    c = 1e-3
    e1 = 1_000 * (1 - c) * (1 + 0.2)  # short at 50, close 40: +20 %
    fill = e1 * (1 - (44 / 40 - 1))  # short through the 40 → 44 gap
    e2 = fill * (1 - 2 * c) * (48 / 44)  # flip: exit + entry cost on the fill equity, then long 44 → 48
    np.testing.assert_allclose(result.equity["equity"], [1_000, e1, e2], rtol=1e-13)

    short, long_ = result.trades.to_dict("records")
    assert (short["side"], short["entry_price"], short["exit_price"], short["open"]) == (
        "short",
        50,
        44,
        False,
    )
    assert short["pnl"] == pytest.approx(fill * (1 - c) - 1_000, rel=1e-12)
    assert short["costs"] == pytest.approx(1_000 * c + fill * c, rel=1e-12)
    assert (long_["side"], long_["entry_ts"], long_["open"]) == ("long", day(2), True)
    assert (long_["exit_ts"], long_["exit_price"]) == (day(2), 48.0)  # marked at the last close
    assert long_["costs"] == pytest.approx(fill * c, rel=1e-12)
    assert short["pnl"] + long_["pnl"] == pytest.approx(e2 - 1_000, rel=1e-12)


def test_fill_waits_for_the_symbols_next_bar_and_missing_bars_carry_equity():
    # Y has no bar on day 2: its day-1 decision fills at the day-3 open, gap measured from the day-1 close.
    bars = make_bars(
        [("X", d, 10, 10) for d in range(4)] + [("Y", 0, 20, 20), ("Y", 1, 20, 20), ("Y", 3, 25, 30)]
    )
    preds = make_preds([("X", d, 0.0) for d in range(4)] + [("Y", 0, 0.0), ("Y", 1, 1.0), ("Y", 3, 1.0)])
    cfg = BacktestConfig(commission_bps=0, slippage_bps=0, initial_capital=200)
    result = backtest_predictions(bars, preds, cfg)
    y = result.positions[result.positions["symbol"] == "Y"]
    assert y["ts"].tolist() == [day(0), day(1), day(3)]
    assert y["position"].tolist() == [0, 0, 1]
    # Y bought at 25 (not at 20): the gap belongs to the flat position.
    np.testing.assert_allclose(result.equity["equity"], [200, 200, 200, 100 + 100 * 30 / 25])
    (trade,) = result.trades.to_dict("records")
    assert (trade["entry_ts"], trade["entry_price"], trade["open"]) == (day(3), 25.0, True)
    # Benchmark: X flat at 10; Y bought at the day-1 open (20), carried through day 2, 30 at the end.
    np.testing.assert_allclose(result.equity["benchmark"], [200, 200, 200, 100 + 100 * 30 / 20])


def test_no_signal_no_trade():
    bars = make_bars([("X", d, 100 + d, 101 + d) for d in range(6)])
    preds = make_preds([("X", d, 0.1) for d in range(6)])
    cfg = BacktestConfig(mode="long_short", entry_threshold=0.2, initial_capital=5_000)
    result = backtest_predictions(bars, preds, cfg)
    assert result.trades.empty and list(result.trades.columns) == list(TRADE_COLUMNS)
    assert (result.positions["position"] == 0).all()
    assert (result.equity["equity"] == 5_000).all()
    assert (result.equity["returns"] == 0).all()
    metrics = result.metrics(252)
    assert metrics["trades"] == 0 and metrics["exposure"] == 0.0 and metrics["win_rate"] is None
    json.dumps(metrics, allow_nan=False)


def test_classification_signals():
    cfg = BacktestConfig(mode="long_short", entry_threshold=0.1)
    probs = np.array([0.61, 0.6, 0.5, 0.4, 0.39, np.nan])
    assert target_positions(probs, cfg, "classification").tolist() == [1, 0, 0, 0, -1, 0]
    flat_cfg = BacktestConfig(mode="long_flat", entry_threshold=0.1)
    assert target_positions(probs, flat_cfg, "classification").tolist() == [1, 0, 0, 0, 0, 0]
    assert target_positions(np.array([0.3, -0.3, 0.1]), cfg, "regression").tolist() == [1, -1, 0]


def test_bad_input_is_rejected_with_a_clear_error():
    bars = make_bars([("X", d, 10, 10) for d in range(3)])
    cfg = BacktestConfig()
    with pytest.raises(ValueError, match="no bar"):
        backtest_predictions(bars, make_preds([("X", 0, 1.0), ("X", 5, 1.0)]), cfg)
    with pytest.raises(ValueError, match="duplicate"):
        backtest_predictions(bars, make_preds([("X", 0, 1.0), ("X", 0, 1.0)]), cfg)
    with pytest.raises(ValueError, match="probabilities"):
        backtest_predictions(bars, make_preds([("X", 0, 1.5)]), cfg, "classification")
    with pytest.raises(ValueError, match="long_short"):
        backtest_predictions(
            bars, make_preds([("X", 0, 1.0)]), BacktestConfig(mode="long_short", entry_threshold=-0.1)
        )
    with pytest.raises(ValueError, match="objective"):
        backtest_predictions(bars, make_preds([("X", 0, 1.0)]), cfg, "ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no predictions"):
        backtest_predictions(bars, make_preds([]), cfg)
    with pytest.raises(KeyError, match="prediction"):
        backtest_predictions(bars, make_preds([("X", 0, 1.0)]).drop(columns="prediction"), cfg)


# --------------------------------------------------------------------------------------------------
# (c) properties
# --------------------------------------------------------------------------------------------------


@st.composite
def markets(draw):
    """1-3 symbols on a daily grid with random holes, prices from bounded gaps and bar moves."""
    n_sym = draw(st.integers(1, 3))
    n_bars = draw(st.integers(2, 20))
    moves = st.floats(-0.3, 0.3, allow_nan=False)
    bar_rows, pred_rows = [], []
    for i in range(n_sym):
        sym = f"S{i}"
        keep = draw(st.lists(st.booleans(), min_size=n_bars, max_size=n_bars))
        keep[draw(st.integers(0, n_bars - 1))] = True
        gaps = draw(st.lists(moves, min_size=n_bars, max_size=n_bars))
        bars_moves = draw(st.lists(moves, min_size=n_bars, max_size=n_bars))
        signals = draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=n_bars, max_size=n_bars))
        price = 100.0
        for d in range(n_bars):
            open_ = price * (1 + gaps[d])
            price = open_ * (1 + bars_moves[d])
            if keep[d]:
                bar_rows.append((sym, d, open_, price))
                pred_rows.append((sym, d, signals[d]))
    return make_bars(bar_rows), make_preds(pred_rows)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(markets(), st.sampled_from(["long_flat", "long_short"]), st.floats(0, 0.5))
def test_property_engine_matches_loop_oracle(market, mode, threshold):
    bars, preds = market
    cfg = BacktestConfig(mode=mode, entry_threshold=threshold, commission_bps=3, slippage_bps=4)
    assert_matches_oracle(bars, preds, cfg, "regression")


@FAST
@given(
    markets(),
    st.sampled_from(["long_flat", "long_short"]),
    st.floats(0, 50),
    st.floats(0, 50),
)
def test_property_costs_never_increase_pnl(market, mode, low_bps, extra_bps):
    bars, preds = market
    cheap = backtest_predictions(
        bars, preds, BacktestConfig(mode=mode, commission_bps=low_bps, slippage_bps=0)
    )
    dear = backtest_predictions(
        bars, preds, BacktestConfig(mode=mode, commission_bps=low_bps, slippage_bps=extra_bps)
    )
    pd.testing.assert_frame_equal(cheap.positions, dear.positions)  # same signals
    assert (dear.equity["equity"] <= cheap.equity["equity"] * (1 + 1e-12)).all()
    assert dear.trades["costs"].sum() >= cheap.trades["costs"].sum() * (1 - 1e-12) - 1e-9


@FAST
@given(
    markets(), st.sampled_from(["long_flat", "long_short"]), st.sampled_from(["regression", "classification"])
)
def test_property_no_signal_keeps_equity_flat(market, mode, objective):
    bars, preds = market
    preds = preds.assign(prediction=0.5 if objective == "classification" else 0.0)
    result = backtest_predictions(bars, preds, BacktestConfig(mode=mode, initial_capital=1e6), objective)
    assert result.trades.empty
    np.testing.assert_allclose(result.equity["equity"], 1e6, rtol=1e-12)
    assert (result.equity["returns"].abs() < 1e-12).all()


@FAST
@given(markets())
def test_property_benchmark_is_buy_and_hold_by_hand(market):
    bars, preds = market
    result = backtest_predictions(bars, preds, BacktestConfig(initial_capital=1e6))
    symbols = sorted(preds["symbol"].unique())
    sleeve = 1e6 / len(symbols)
    expected = np.zeros(len(result.equity))
    for sym in symbols:
        own = bars[bars["symbol"] == sym].sort_values("ts").reset_index(drop=True)
        for j, ts in enumerate(result.equity["ts"]):
            seen = own[own["ts"] <= ts]
            # Bought at the open of the symbol's second bar; before that the sleeve is cash.
            expected[j] += sleeve if len(seen) < 2 else sleeve * seen["close"].iloc[-1] / own["open"].iloc[1]
    np.testing.assert_allclose(result.equity["benchmark"], expected, rtol=1e-12)


@FAST
@given(markets(), st.sampled_from(["long_flat", "long_short"]), st.floats(0, 30))
def test_property_trade_pnl_adds_up_to_equity(market, mode, bps):
    bars, preds = market
    cfg = BacktestConfig(mode=mode, commission_bps=bps, initial_capital=1e6)
    result = backtest_predictions(bars, preds, cfg)
    assert result.trades["pnl"].sum() == pytest.approx(result.equity["equity"].iloc[-1] - 1e6, abs=1e-6)
    assert (result.trades["open"].sum()) <= preds["symbol"].nunique()


# --------------------------------------------------------------------------------------------------
# (d) metrics by hand
# --------------------------------------------------------------------------------------------------


def _trades(pnls, open_flags=None) -> pd.DataFrame:
    open_flags = open_flags or [False] * len(pnls)
    return pd.DataFrame({"pnl": pnls, "open": open_flags})


def test_metrics_by_hand():
    r = [0.1, -0.2, 0.05, 0.1]
    m = performance_metrics(pd.Series(r), _trades([]), periods_per_year=4)
    growth = 1.1 * 0.8 * 1.05 * 1.1
    assert m["periods"] == 4
    assert m["total_return"] == pytest.approx(growth - 1)
    assert m["annual_return"] == pytest.approx(growth - 1)  # exactly one year of periods
    sd = statistics.stdev(r)  # sample deviation
    assert m["annual_volatility"] == pytest.approx(sd * 2)
    assert m["sharpe"] == pytest.approx(statistics.mean(r) / sd * 2)
    assert m["sortino"] == pytest.approx(0.0125 / math.sqrt(0.2**2 / 4) * 2)  # = 0.25
    assert m["sortino"] == pytest.approx(0.25)
    assert m["max_drawdown"] == pytest.approx(0.88 / 1.1 - 1)  # -20 %
    assert m["max_drawdown_duration"] == 3  # 0.88, 0.924, 1.0164 all below the 1.1 peak
    assert m["trades"] == 0 and m["win_rate"] is None and m["profit_factor"] is None
    assert m["exposure"] is None


def test_drawdown_duration_counts_bars_below_the_peak_until_recovery():
    r = [0.1, -0.1, 1.1 / 0.99 - 1, -0.08, -0.08, 0.01, 0.5]
    m = performance_metrics(r, None, periods_per_year=252)
    assert m["max_drawdown_duration"] == 3  # one bar under, recovery, then three bars under, new high
    assert m["max_drawdown"] == pytest.approx(0.92 * 0.92 - 1)
    loss_first = performance_metrics([-0.1, 0.05], None, periods_per_year=252)
    assert loss_first["max_drawdown"] == pytest.approx(-0.1)  # measured from the initial capital
    assert loss_first["max_drawdown_duration"] == 2


def test_metrics_cagr_and_constant_returns():
    m = performance_metrics(np.full(504, 0.001), None, periods_per_year=252)
    assert m["annual_return"] == pytest.approx(1.001**252 - 1)
    assert m["total_return"] == pytest.approx(1.001**504 - 1)
    assert m["annual_volatility"] == 0.0
    assert m["sharpe"] is None and m["sortino"] is None  # no deviation, no downside
    assert m["max_drawdown"] == 0.0 and m["max_drawdown_duration"] == 0


def test_metrics_risk_free_and_sortino_targets():
    r = [0.02, -0.01, 0.03, 0.0]
    m = performance_metrics(r, None, periods_per_year=12, risk_free=0.12)
    x = [v - 0.01 for v in r]
    assert m["sharpe"] == pytest.approx(statistics.mean(x) / statistics.stdev(x) * math.sqrt(12))
    downside = math.sqrt((0.02**2 + 0.01**2) / 4)
    assert m["sortino"] == pytest.approx(statistics.mean(x) / downside * math.sqrt(12))


def test_trade_statistics():
    trades = _trades([10.0, -5.0, 20.0, -100.0], [False, False, False, True])
    m = performance_metrics([0.01, 0.02], trades, periods_per_year=252)
    assert m["win_rate"] == pytest.approx(2 / 3)  # the open trade is not counted
    assert m["profit_factor"] == pytest.approx(30 / 5)
    assert m["trades"] == 4
    only_wins = performance_metrics([0.01], _trades([3.0, 4.0]), periods_per_year=252)
    assert only_wins["profit_factor"] is None and only_wins["win_rate"] == 1.0
    only_losses = performance_metrics([0.01], _trades([-3.0]), periods_per_year=252)
    assert only_losses["profit_factor"] == 0.0 and only_losses["win_rate"] == 0.0
    only_open = performance_metrics([0.01], _trades([3.0], [True]), periods_per_year=252)
    assert only_open["win_rate"] is None and only_open["trades"] == 1


def test_exposure_and_edge_cases():
    positions = pd.DataFrame({"position": [0.0, 1.0, -1.0, 0.0, 1.0]})
    m = performance_metrics([0.0] * 5, None, 252, positions=positions)
    assert m["exposure"] == pytest.approx(3 / 5)
    empty = performance_metrics([], None, 252)
    assert empty["periods"] == 0 and empty["total_return"] == 0.0 and empty["annual_return"] is None
    assert empty["sharpe"] is None and empty["annual_volatility"] is None
    wiped = performance_metrics([0.5, -1.0], None, 252)
    assert wiped["annual_return"] == -1.0 and wiped["max_drawdown"] == -1.0
    for value in (m, empty, wiped):
        json.dumps(value, allow_nan=False)
    with pytest.raises(ValueError):
        performance_metrics([0.1, float("nan")], None, 252)
    with pytest.raises(ValueError):
        performance_metrics([0.1], None, 0)


def test_periods_per_year_for():
    assert periods_per_year_for("1d") == 252
    assert periods_per_year_for("1h") == 252 * 6.5
    assert periods_per_year_for("5min") == 252 * 78
    assert periods_per_year_for("1min") == 252 * 390
    with pytest.raises(ValueError, match="timeframe"):
        periods_per_year_for("1w")


def test_result_metrics_skip_the_starting_row():
    bars, preds = random_market(5, "regression")
    result = backtest_predictions(bars, preds, BacktestConfig(mode="long_short"))
    m = result.metrics(252)
    assert m["periods"] == len(result.equity) - 1
    assert m["total_return"] == pytest.approx(result.equity["equity"].iloc[-1] / 1e6 - 1)
    assert m["trades"] == len(result.trades)
    assert 0 < m["exposure"] <= 1
    bench = result.metrics(252, benchmark=True)
    assert bench["total_return"] == pytest.approx(result.equity["benchmark"].iloc[-1] / 1e6 - 1)
    assert bench["trades"] == 0
    json.dumps(m, allow_nan=False)
