"""The backtest stage on the portfolio engine, the signal rules, and the metrics by hand.

The engine itself (fills, costs, sizing, stops, accounting) is tested in test_portfolio.py.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from quanto.backtest.metrics import performance_metrics, periods_per_year_for
from quanto.backtest.portfolio import FILL_COLUMNS, simulate
from quanto.backtest.signals import signals_from_predictions, target_positions
from quanto.backtest.stage import run_backtest, run_folder
from quanto.config.models import BacktestConfig, PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.errors import InputError
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake

# --------------------------------------------------------------------------------------------------
# (a) signals from predictions
# --------------------------------------------------------------------------------------------------


def test_classification_and_regression_signals():
    cfg = BacktestConfig(mode="long_short", entry_threshold=0.1)
    probs = np.array([0.61, 0.6, 0.5, 0.4, 0.39, np.nan])
    assert target_positions(probs, cfg, "classification").tolist() == [1, 0, 0, 0, -1, 0]
    flat_cfg = BacktestConfig(mode="long_flat", entry_threshold=0.1)
    assert target_positions(probs, flat_cfg, "classification").tolist() == [1, 0, 0, 0, 0, 0]
    assert target_positions(np.array([0.3, -0.3, 0.1]), cfg, "regression").tolist() == [1, -1, 0]


def test_bad_predictions_are_rejected_with_a_clear_error():
    cfg = BacktestConfig()
    with pytest.raises(ValueError, match="probabilities"):
        target_positions(np.array([1.5]), cfg, "classification")
    with pytest.raises(ValueError, match="long_short"):
        target_positions(
            np.array([1.0]), BacktestConfig(mode="long_short", entry_threshold=-0.1), "regression"
        )
    with pytest.raises(ValueError, match="objective"):
        target_positions(np.array([1.0]), cfg, "ranking")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="prediction"):
        signals_from_predictions(
            pd.DataFrame({"symbol": ["X"], "ts": [pd.Timestamp("2024-01-01")]}), cfg, "regression"
        )


# --------------------------------------------------------------------------------------------------
# (b) the pipeline stage
# --------------------------------------------------------------------------------------------------


def _market(n_days: int = 60, symbols=("AAA", "BBB"), seed: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily bars with a range, and regression predictions over the last two thirds (some missing)."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2024-01-02", periods=n_days, freq="B", tz="UTC")
    bars, preds = [], []
    for i, sym in enumerate(symbols):
        close = 40.0 * (i + 1) * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
        open_ = close * np.exp(rng.normal(0, 0.005, n_days))
        high = np.maximum(open_, close) * 1.01
        low = np.minimum(open_, close) * 0.99
        bars.append(pd.DataFrame({"symbol": sym, "ts": days, "timeframe": "1d", "open": open_, "high": high,
                                  "low": low, "close": close, "volume": 1e6}))  # fmt: skip
        window = pd.DataFrame({"symbol": sym, "ts": days[n_days // 3 :]})
        window = window[rng.random(len(window)) > 0.1]
        preds.append(window.assign(prediction=rng.normal(0, 0.01, len(window)), fold=0))
    return pd.concat(bars, ignore_index=True), pd.concat(preds, ignore_index=True)


def _stage_request(lake: Lake, bars: pd.DataFrame, preds: pd.DataFrame, backtest: dict) -> StageRequest:
    config = PipelineConfig.model_validate(
        {
            "name": "bt",
            "universe": {
                "symbols": sorted(bars["symbol"].unique()),
                "start": "2024-01-01",
                "end": "2024-06-01",
            },
            "backtest": backtest,
        }
    ).model_dump(mode="json")
    bar_ref = lake.write_frame("silver/bars/test", bars, role="bars")
    pred_ref = lake.write_frame("gold/predictions/test", preds, role="predictions")
    return StageRequest(
        stage="backtest",
        config=config,
        inputs={
            "validate": StageResult(stage="validate", key="v", outputs=[bar_ref]),
            "walk_forward": StageResult(stage="walk_forward", key="w", outputs=[pred_ref]),
        },
    )


def test_stage_writes_the_run_files_and_the_summary_the_report_reads(tmp_path):
    lake = Lake(tmp_path)
    ctx = StageContext(lake=lake, record=False)
    bars, preds = _market()
    settings = {"mode": "long_short", "stop_loss": 0.03, "borrow_rate": 0.02, "commission_min": 1.0}
    req = _stage_request(lake, bars, preds, settings)
    result = run_backtest(req, ctx)

    cfg = PipelineConfig.model_validate(req.config)
    assert {f.role for f in result.outputs} == {"equity", "trades", "positions", "fills"}
    assert all(f.path.startswith(run_folder(cfg) + "/") for f in result.outputs)
    # What the stage wrote is the engine's answer on the predictions' signals.
    decisions = signals_from_predictions(preds, cfg.backtest, "regression")
    direct = simulate(bars, decisions, cfg.backtest, periods_per_year=252)
    pd.testing.assert_frame_equal(lake.read_frame(result.files("equity")), direct.equity, check_dtype=False)
    fills = lake.read_frame(result.files("fills"))
    assert list(fills.columns) == list(FILL_COLUMNS) and len(fills) == len(direct.fills) > 0
    assert set(fills["reason"]) >= {"signal", "stop_loss"}
    assert result.counters == {
        "bars": len(direct.equity),
        "trades": len(direct.trades),
        "fills": len(direct.fills),
        "scaled_orders": len(direct.scaled_orders),
    }
    summary = result.summary
    assert summary["periods_per_year"] == 252
    assert summary["metrics"] == direct.metrics(252)
    assert summary["benchmark_metrics"] == direct.metrics(252, benchmark=True)
    json.dumps(summary, allow_nan=False)
    assert run_backtest(req, ctx).skipped  # same inputs and settings: the stored result


def test_stage_turns_bad_input_into_an_input_error(tmp_path):
    lake = Lake(tmp_path)
    bars, preds = _market()
    orphan = preds.iloc[:1].assign(ts=pd.Timestamp("2030-01-01", tz="UTC"))
    req = _stage_request(lake, bars, pd.concat([preds, orphan], ignore_index=True), {})
    with pytest.raises(InputError, match="no bar with the same"):
        run_backtest(req, StageContext(lake=lake, record=False))


# --------------------------------------------------------------------------------------------------
# (c) metrics by hand
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
