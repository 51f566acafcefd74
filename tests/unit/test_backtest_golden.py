"""Golden (regression) tests of the portfolio engine, in the manner of LEAN's regression algorithms.

Four fixed strategies run on the packaged sample daily bars (`quanto.data.sample`, adjusted prices of
AAPL, IBM and MSFT, 2005-2012); their statistics are pinned in tests/golden/backtest_regression.json
and compared with tight tolerances (relative 1e-9 for money and ratios, exact for counts and labels):

- sma_crossover_long_flat: AAPL, long while SMA20 > SMA50 else flat, all of equity, next open,
  1 bp commission + 2 bps slippage (AAPL's bars only: the single-symbol path);
- sma_crossover_long_short_stop: the same signals long/short on all three symbols' bars (only AAPL
  traded), a 5 % stop-loss and a 2 %/year borrow fee on shorts;
- monthly_equal_weight: AAPL, IBM and MSFT to 1/3 of equity each on each month's first bar, with a
  2 % drift threshold, whole units, $0.005/share commission with a $1 minimum (the leverage cap scales
  some orders);
- risk_sized_sma: the three symbols long/flat on their own SMA crossover, each sized so that its 4 %
  stop-loss loses 1 % of equity, a 12 % take-profit, positions closed at the last bar.

Two guards: the golden file catches a silent change of the rules (any pinned number moves), and
the plain-loop oracle of tests/unit/test_portfolio.py (`reference_simulate`) checks that each run —
and so each pinned number — follows the documented rules. The file also pins fingerprints of the
input bars and decisions, so a failure says whether the inputs or the engine changed.

Regenerate the golden file after an INTENDED change of the rules (and say why in the commit):

    QUANTO_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_backtest_golden.py

That run checks every strategy against the reference loop before it writes the file; without the
variable the tests only compare and never write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quanto.backtest.portfolio import PortfolioResult, simulate
from quanto.config.models import BacktestConfig
from quanto.data.sample import load_sample_bars
from tests.unit.test_portfolio import assert_matches_reference, reference_simulate

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "backtest_regression.json"
UPDATE = os.environ.get("QUANTO_UPDATE_GOLDEN") == "1"
SYMBOLS = ["AAPL", "IBM", "MSFT"]
START, END = dt.date(2005, 1, 1), dt.date(2013, 1, 1)  # sessions START <= date < END
PPY = 252.0
REL = 1e-9  # money, returns and ratios
ABS = 1e-12  # for values that are (nearly) zero
# Statistics of `PortfolioResult.metrics` that are pinned.
METRICS = (
    "periods",
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_duration",
    "calmar",
    "trades",
    "win_rate",
    "profit_factor",
    "exposure",
    "turnover",
)
FILL_FIELDS = ("ts", "symbol", "side", "reason", "qty", "price", "commission", "slippage")


# --------------------------------------------------------------------------------------------------
# The strategies
# --------------------------------------------------------------------------------------------------


def sma_cross(bars: pd.DataFrame, fast: int = 20, slow: int = 50) -> pd.Series:
    """+1 where the symbol's SMA(fast) of closes is above its SMA(slow), −1 below, 0 while either is
    undefined or they are equal (aligned with `bars`)."""
    close = bars.groupby("symbol", sort=False)["close"]
    diff = (
        close.transform(lambda c: c.rolling(fast).mean()) - close.transform(lambda c: c.rolling(slow).mean())
    ).to_numpy()
    return pd.Series(np.sign(np.nan_to_num(diff, nan=0.0)), index=bars.index)


def signals(bars: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    """A signal decision on every one of `bars` (the way a strategy built on its own bars passes them)."""
    return bars[["symbol", "ts"]].assign(signal=values.to_numpy(float)).reset_index(drop=True)


def sma_crossover_long_flat(bars: pd.DataFrame):
    aapl = bars[bars["symbol"] == "AAPL"].reset_index(drop=True)
    cfg = BacktestConfig(
        mode="long_flat", fill="next_open", initial_capital=100_000.0, fraction=1.0,
        commission_bps=1.0, slippage_bps=2.0,
    )  # fmt: skip
    return aapl, signals(aapl, sma_cross(aapl).clip(lower=0.0)), cfg


def sma_crossover_long_short_stop(bars: pd.DataFrame):
    aapl = bars[bars["symbol"] == "AAPL"].reset_index(drop=True)
    cfg = BacktestConfig(
        mode="long_short", fill="next_open", initial_capital=100_000.0, fraction=1.0,
        commission_bps=1.0, slippage_bps=2.0, stop_loss=0.05, borrow_rate=0.02,
    )  # fmt: skip
    return bars, signals(aapl, sma_cross(aapl)), cfg


def monthly_equal_weight(bars: pd.DataFrame):
    local = bars["ts"].dt.tz_convert("America/New_York")
    month = local.dt.year * 12 + local.dt.month
    first = (bars.groupby(["symbol", month]).cumcount() == 0).to_numpy()
    last = (bars["ts"] == bars["ts"].max()).to_numpy()
    weight = np.where(first, 1.0 / 3.0, np.nan)  # NaN: no decision (hold)
    keep = first | last  # a (NaN) row on the last bar: the window runs to the end
    decisions = bars.loc[keep, ["symbol", "ts"]].assign(target_weight=weight[keep]).reset_index(drop=True)
    cfg = BacktestConfig(
        mode="long_flat", fill="next_open", initial_capital=100_000.0, commission_bps=0.0,
        commission_per_share=0.005, commission_min=1.0, slippage_bps=2.0, drift_threshold=0.02,
        fractional_units=False,
    )  # fmt: skip
    return bars, decisions, cfg


def risk_sized_sma(bars: pd.DataFrame):
    cfg = BacktestConfig(
        mode="long_flat", fill="next_open", initial_capital=100_000.0, sizing="risk",
        risk_per_trade=0.01, stop_loss=0.04, take_profit=0.12, commission_bps=1.0, slippage_bps=2.0,
        close_at_end=True,
    )  # fmt: skip
    return bars, signals(bars, sma_cross(bars).clip(lower=0.0)), cfg


STRATEGIES: dict[str, Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame, BacktestConfig]]] = {
    "sma_crossover_long_flat": sma_crossover_long_flat,
    "sma_crossover_long_short_stop": sma_crossover_long_short_stop,
    "monthly_equal_weight": monthly_equal_weight,
    "risk_sized_sma": risk_sized_sma,
}


# --------------------------------------------------------------------------------------------------
# Summaries: what the golden file pins
# --------------------------------------------------------------------------------------------------


def sha256(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def iso(ts) -> str:
    return pd.Timestamp(ts).isoformat()


def number(x) -> float | int | None:
    """A JSON number (None for NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return int(x) if isinstance(x, (int, np.integer)) else float(x)


def data_summary(bars: pd.DataFrame) -> dict:
    columns = ("open", "high", "low", "close")
    return {
        "source": "quanto.data.sample.load_sample_bars",
        "symbols": SYMBOLS,
        "start": START.isoformat(),
        "end": END.isoformat(),
        "adjustment": "all",
        "rows": len(bars),
        "rows_per_symbol": {s: int(n) for s, n in bars["symbol"].value_counts().sort_index().items()},
        "first_ts": iso(bars["ts"].min()),
        "last_ts": iso(bars["ts"].max()),
        "sha256": sha256(
            f"{s}|{iso(t)}|" + "|".join(repr(float(v)) for v in row)
            for s, t, *row in bars[["symbol", "ts", *columns]].itertuples(index=False)
        ),
    }


def decisions_summary(decisions: pd.DataFrame) -> dict:
    kind = decisions.columns[2]
    return {
        "kind": kind,
        "rows": len(decisions),
        "sha256": sha256(f"{s}|{iso(t)}|{float(v)!r}" for s, t, v in decisions.itertuples(index=False)),
    }


def fill_rows(fills: list[dict]) -> dict:
    """Fingerprint of the fills: a hash of the events (when, what, which side, why: exact), the first
    three and last two fills in full, and column totals."""
    pick = fills[:3] + fills[-2:] if len(fills) > 5 else fills
    return {
        "events_sha256": sha256(f"{iso(f['ts'])}|{f['symbol']}|{f['side']}|{f['reason']}" for f in fills),
        "rows": [
            {
                k: (iso(f[k]) if k == "ts" else f[k] if isinstance(f[k], str) else float(f[k]))
                for k in FILL_FIELDS
            }
            for f in pick
        ],
        "total_qty": float(sum(f["qty"] for f in fills)),
        "total_notional": float(sum(f["qty"] * f["price"] for f in fills)),
    }


def engine_summary(result: PortfolioResult, decisions: pd.DataFrame, cfg: BacktestConfig) -> dict:
    equity, fills, trades = result.equity, result.fills, result.trades
    metrics = result.metrics(PPY)
    commission = float(fills["commission"].sum())
    slippage = float(fills["slippage"].sum())
    return {
        "config": cfg.model_dump(mode="json", exclude_unset=True),
        "decisions": decisions_summary(decisions),
        "stats": {
            "final_equity": float(equity["equity"].iloc[-1]),
            "final_cash": float(equity["cash"].iloc[-1]),
            **{k: number(metrics[k]) for k in METRICS},
            "closed_trades": int((~trades["open"]).sum()),
            "fills": len(fills),
            "scaled_orders": len(result.scaled_orders),
            "fill_reasons": {k: int(v) for k, v in fills["reason"].value_counts().sort_index().items()},
            "total_commission": commission,
            "total_slippage": slippage,
            # Commission + slippage of every fill, plus the borrow fees of shorts (all in trades.costs).
            "total_costs": float(trades["costs"].sum()),
            "total_pnl": float(trades["pnl"].sum()),
        },
        "fills": fill_rows(fills.to_dict("records")),
    }


def reference_summary(ref: dict) -> dict:
    """What the plain loop says for the numbers both produce."""
    fills, trades, curve = ref["fills"], ref["trades"], ref["equity"]
    return {
        "final_equity": float(curve[-1]["equity"]),
        "final_cash": float(curve[-1]["cash"]),
        "fills": len(fills),
        "scaled_orders": len(ref["scaled"]),
        "closed_trades": sum(not t["open"] for t in trades),
        "trades": len(trades),
        "total_commission": float(sum(f["commission"] for f in fills)),
        "total_slippage": float(sum(f["slippage"] for f in fills)),
        "total_costs": float(sum(t["costs"] for t in trades)),
        "total_pnl": float(sum(t["pnl"] for t in trades)),
    }


def assert_close(got, want, where: str = "") -> None:
    """`got` equals the golden `want`: numbers within REL (ABS near zero), the rest exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (
            f"{where}: keys {sorted(got)} != {sorted(want)}"
        )
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=REL, abs=ABS), f"{where}: {got!r} != golden {want!r}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != golden {want!r}"


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    bars: pd.DataFrame
    decisions: pd.DataFrame
    cfg: BacktestConfig
    result: PortfolioResult


@pytest.fixture(scope="module")
def sample_bars() -> pd.DataFrame:
    return load_sample_bars(SYMBOLS, START, END, "all")


@pytest.fixture(scope="module")
def runs(sample_bars) -> dict[str, Run]:
    out = {}
    for name, build in STRATEGIES.items():
        bars, decisions, cfg = build(sample_bars)
        out[name] = Run(bars, decisions, cfg, simulate(bars, decisions, cfg, periods_per_year=PPY))
    return out


@pytest.fixture(scope="module")
def golden(sample_bars, runs) -> dict:
    if UPDATE:
        for run in runs.values():  # never pin a number the oracle disagrees with
            assert_matches_reference(run.bars, run.decisions, run.cfg, PPY)
        observed = {
            "about": (
                "Golden statistics of tests/unit/test_backtest_golden.py (the strategies are described "
                "there). Regenerate only after an intended change of the engine's rules: "
                "QUANTO_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_backtest_golden.py"
            ),
            "periods_per_year": PPY,
            "tolerance": {"rel": REL, "abs": ABS},
            "data": data_summary(sample_bars),
            "strategies": {
                name: engine_summary(run.result, run.decisions, run.cfg) for name, run in runs.items()
            },
        }
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(observed, indent=2) + "\n")
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; create it with QUANTO_UPDATE_GOLDEN=1 (see the module docstring)")
    return json.loads(GOLDEN.read_text())


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_the_golden_file_pins_exactly_these_strategies(golden):
    assert sorted(golden["strategies"]) == sorted(STRATEGIES)


def test_the_input_bars_are_the_pinned_sample(golden, sample_bars):
    assert_close(data_summary(sample_bars), golden["data"], "data")


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_strategy_is_the_pinned_one(name, golden, runs):
    run, want = runs[name], golden["strategies"][name]
    assert_close(run.cfg.model_dump(mode="json", exclude_unset=True), want["config"], f"{name}.config")
    assert_close(decisions_summary(run.decisions), want["decisions"], f"{name}.decisions")


@pytest.mark.parametrize("name", STRATEGIES)
def test_engine_statistics_match_the_golden_file(name, golden, runs):
    run = runs[name]
    got = engine_summary(run.result, run.decisions, run.cfg)
    assert_close(got["stats"], golden["strategies"][name]["stats"], f"{name}.stats")
    assert_close(got["fills"], golden["strategies"][name]["fills"], f"{name}.fills")


@pytest.mark.parametrize("name", STRATEGIES)
def test_engine_matches_the_reference_loop(name, runs):
    run = runs[name]
    assert_matches_reference(run.bars, run.decisions, run.cfg, PPY)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_reference_loop_reproduces_the_pinned_values(name, golden, runs):
    # Independent of the engine: the oracle's own numbers against the golden file.
    run = runs[name]
    ref = reference_simulate(run.bars, run.decisions, run.cfg, PPY)
    want = golden["strategies"][name]
    got = reference_summary(ref)
    assert_close(got, {k: want["stats"][k] for k in got}, f"{name}.reference")
    assert_close(fill_rows(ref["fills"]), want["fills"], f"{name}.reference.fills")


def test_the_strategies_exercise_the_rules_they_are_meant_to(golden):
    s = golden["strategies"]
    assert s["sma_crossover_long_flat"]["stats"]["fill_reasons"].keys() == {"signal"}
    assert s["sma_crossover_long_short_stop"]["stats"]["fill_reasons"].get("stop_loss", 0) > 0
    shorts = s["sma_crossover_long_short_stop"]["stats"]
    assert shorts["total_costs"] > shorts["total_commission"] + shorts["total_slippage"]  # borrow fees
    rebalance = s["monthly_equal_weight"]["stats"]
    assert rebalance["fill_reasons"].keys() == {"rebalance"} and rebalance["scaled_orders"] > 0
    risk = s["risk_sized_sma"]["stats"]["fill_reasons"]
    assert {"stop_loss", "take_profit", "close_at_end"} <= risk.keys()
