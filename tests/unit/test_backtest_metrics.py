"""Backtest metrics: golden values derived by hand, independent oracles (scipy, numpy, pandas resample),
and accounting properties of the drawdown and tail-risk statistics."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from quanto.backtest.metrics import (
    compounded_statistics,
    monthly_returns,
    performance_metrics,
    quarterly_returns,
    rolling_sharpe,
    rolling_volatility,
)

# --------------------------------------------------------------------------------------------------
# Returns, drawdown episodes, Calmar
# --------------------------------------------------------------------------------------------------


def test_existing_keys_are_kept_and_new_ones_added():
    m = performance_metrics([0.01, -0.02, 0.03], None, 252)
    old = ("periods", "total_return", "annual_return", "annual_volatility", "sharpe", "sortino")
    old += ("max_drawdown", "max_drawdown_duration", "win_rate", "profit_factor", "trades", "exposure")
    new = ("cagr", "annual_mean_return", "calmar", "max_drawdown_decline_bars", "max_drawdown_recovery_bars")
    new += ("var_95", "cvar_99_parametric", "alpha", "beta", "correlation", "expectancy", "sqn", "turnover")
    assert set(old) | set(new) <= set(m)
    assert list(m)[: len(old)] == list(old)  # display order of the report's table is unchanged


def test_calmar_cagr_and_an_unrecovered_drawdown_by_hand():
    r = [0.1, -0.2, 0.05, 0.1]
    m = performance_metrics(r, None, periods_per_year=4)
    # growth 1 → 1.1 → 0.88 → 0.924 → 1.0164: one year of four periods, so CAGR = total return.
    assert m["cagr"] == m["annual_return"] == pytest.approx(0.0164)
    assert m["annual_mean_return"] == pytest.approx(0.0125 * 4)  # mean 0.05 / 4 periods × 4
    assert m["max_drawdown"] == pytest.approx(-0.2)  # 0.88 / 1.1 − 1
    assert m["calmar"] == pytest.approx(0.0164 / 0.2)
    assert m["max_drawdown_decline_bars"] == 1  # peak at bar 1 (1.1), trough at bar 2 (0.88)
    assert m["max_drawdown_recovery_bars"] is None  # 1.0164 < 1.1: not recovered yet


def test_drawdown_recovery_counts_bars_from_trough_back_to_the_peak():
    # growth 1 → 1.1 → 0.55 → 0.825 → 1.155 → 1.2705: trough at bar 2, back above 1.1 at bar 4.
    m = performance_metrics([0.1, -0.5, 0.5, 0.4, 0.1], None, periods_per_year=252)
    assert m["max_drawdown"] == pytest.approx(-0.5)
    assert m["max_drawdown_decline_bars"] == 1
    assert m["max_drawdown_recovery_bars"] == 2
    assert m["max_drawdown_duration"] == 2  # bars 2 and 3 end below the peak


def test_deepest_drawdown_is_not_always_the_longest():
    # growth 1, .99, .9801, .970299 (3 bars under), 1.0188 (new high), 0.7132 (−30 % in one bar).
    m = performance_metrics([-0.01, -0.01, -0.01, 0.05, -0.3], None, periods_per_year=252)
    assert m["max_drawdown_duration"] == 3  # the long shallow one
    assert m["max_drawdown"] == pytest.approx(-0.3)  # the short deep one
    assert m["max_drawdown_decline_bars"] == 1
    assert m["max_drawdown_recovery_bars"] is None


def test_no_drawdown_leaves_episode_and_calmar_undefined():
    m = performance_metrics([0.01, 0.02, 0.0], None, 252)
    assert m["max_drawdown"] == 0.0 and m["calmar"] is None
    assert m["max_drawdown_decline_bars"] is None and m["max_drawdown_recovery_bars"] is None


def test_compounded_statistics_vectorizes_rows_like_the_single_series():
    rng = np.random.default_rng(3)
    paths = rng.normal(0.001, 0.02, size=(6, 40))
    paths[2] = 0.004  # constant: Sharpe undefined
    paths[4, 10] = -1.0  # wiped out: CAGR −100 %
    out = compounded_statistics(paths, 252, risk_free=0.02)
    for i, row in enumerate(paths):
        single = performance_metrics(row, None, 252, risk_free=0.02)
        assert out["total_return"][i] == pytest.approx(single["total_return"], abs=1e-12)
        assert out["cagr"][i] == pytest.approx(single["cagr"], abs=1e-12)
        assert out["max_drawdown"][i] == pytest.approx(single["max_drawdown"], abs=1e-12)
        if single["sharpe"] is None:
            assert np.isnan(out["sharpe"][i])
        else:
            assert out["sharpe"][i] == pytest.approx(single["sharpe"])
    assert np.isnan(out["sharpe"][2]) and out["cagr"][4] == -1.0 and out["max_drawdown"][4] == -1.0


# --------------------------------------------------------------------------------------------------
# VaR and CVaR
# --------------------------------------------------------------------------------------------------


def test_historical_var_and_cvar_by_hand():
    # 21 returns: numpy's linear quantile at p sits at position 20·p of the sorted values, so the 5 %
    # quantile is exactly the 2nd smallest (−0.03) and the 1 % one is −0.05 + 0.2·(−0.03 + 0.05) = −0.046.
    r = [-0.05, -0.03, -0.02] + [0.01] * 18
    m = performance_metrics(r, None, 252)
    assert m["var_95"] == pytest.approx(0.03)
    assert m["cvar_95"] == pytest.approx(0.04)  # mean of the returns ≤ −0.03: (0.05 + 0.03) / 2
    assert m["var_99"] == pytest.approx(0.046)
    assert m["cvar_99"] == pytest.approx(0.05)  # only −0.05 is ≤ −0.046


def test_parametric_var_and_cvar_against_scipy():
    r = np.random.default_rng(7).normal(0.0005, 0.012, 500)
    m = performance_metrics(r, None, 252)
    mu, sd = r.mean(), r.std(ddof=1)
    for level, tag in ((0.95, "95"), (0.99, "99")):
        q = stats.norm.ppf(1 - level, mu, sd)
        # CVaR as the conditional mean of the Gaussian's tail, by numerical integration.
        tail_mean = stats.norm.expect(lambda x: x, loc=mu, scale=sd, ub=q) / (1 - level)
        assert m[f"var_{tag}_parametric"] == pytest.approx(-q, rel=1e-9)
        assert m[f"cvar_{tag}_parametric"] == pytest.approx(-tail_mean, rel=1e-6)
        # The historical figures agree with numpy's quantile on the raw sample.
        assert m[f"var_{tag}"] == pytest.approx(-np.quantile(r, 1 - level))


# --------------------------------------------------------------------------------------------------
# Benchmark: alpha, beta, correlation
# --------------------------------------------------------------------------------------------------


def test_alpha_beta_by_hand():
    b = np.array([0.01, -0.02, 0.015, 0.0, -0.005])
    m = performance_metrics(0.001 + 2 * b, None, 252, benchmark_returns=b)
    assert m["beta"] == pytest.approx(2.0)
    assert m["alpha"] == pytest.approx(0.001 * 252)  # intercept 0.001 per period, annualized × 252
    assert m["correlation"] == pytest.approx(1.0)


def test_alpha_beta_against_scipy_linregress_on_excess_returns():
    rng = np.random.default_rng(11)
    b = rng.normal(0.0004, 0.01, 300)
    r = 0.0002 + 0.7 * b + rng.normal(0, 0.006, 300)
    m = performance_metrics(r, None, 252, risk_free=0.03, benchmark_returns=b)
    rf = 0.03 / 252
    fit = stats.linregress(b - rf, r - rf)
    assert m["beta"] == pytest.approx(fit.slope)
    assert m["alpha"] == pytest.approx(fit.intercept * 252)
    assert m["correlation"] == pytest.approx(stats.pearsonr(r, b).statistic)


def test_benchmark_series_align_on_their_index():
    r = pd.Series([0.01, 0.02, -0.01, 0.03, 0.0], index=range(5))
    b = pd.Series([0.5, 0.005, 0.01, -0.02, 0.5], index=range(2, 7))  # overlaps on 2, 3, 4
    m = performance_metrics(r, None, 252, benchmark_returns=b)
    on_common = performance_metrics(r.loc[2:4].to_numpy(), None, 252, benchmark_returns=b.loc[2:4].to_numpy())
    assert m["beta"] == pytest.approx(on_common["beta"]) and m["alpha"] == pytest.approx(on_common["alpha"])
    with pytest.raises(ValueError, match="benchmark_returns has 2 values but returns has 3"):
        performance_metrics([0.1, 0.2, 0.3], None, 252, benchmark_returns=[0.1, 0.2])
    flat = performance_metrics([0.1, 0.2, 0.3], None, 252, benchmark_returns=[0.01] * 3)
    assert flat["beta"] is None and flat["alpha"] is None and flat["correlation"] is None


# --------------------------------------------------------------------------------------------------
# Trades, exposure, turnover
# --------------------------------------------------------------------------------------------------


def _engine_trades(**extra) -> pd.DataFrame:
    """A trade log with every column the portfolio engine writes; the last trade is still open."""
    ts = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    frame = pd.DataFrame(
        {
            "symbol": ["A", "B", "A", "B", "A"],
            "side": ["long", "short", "long", "long", "long"],
            "entry_ts": ts,
            "entry_price": [10.0, 20.0, 11.0, 19.0, 12.0],
            "exit_ts": ts + pd.Timedelta(days=3),
            "exit_price": [11.0, 21.0, 13.0, 18.0, 12.5],
            "qty": [100.0, 50.0, 100.0, 25.0, 60.0],
            "pnl": [100.0, -50.0, 200.0, -25.0, 30.0],
            "costs": [1.0, 1.0, 1.0, 1.0, 0.5],
            "return": [0.1, -0.05, 0.2, -0.025, 0.03],
            "bars_held": [3, 5, 10, 2, 4],
            "exit_reason": ["signal", "stop_loss", "take_profit", "signal", "end"],
            "open": [False, False, False, False, True],
        }
    )
    return frame.assign(**extra)


def test_trade_statistics_by_hand():
    m = performance_metrics([0.01, 0.02], _engine_trades(), 252)
    assert m["trades"] == 5 and m["closed_trades"] == 4  # the open trade counts only in `trades`
    assert m["win_rate"] == pytest.approx(0.5)
    assert m["profit_factor"] == pytest.approx(300 / 75)  # (100 + 200) / (50 + 25)
    assert m["expectancy"] == pytest.approx(225 / 4)  # (100 − 50 + 200 − 25) / 4
    assert m["average_win"] == pytest.approx(150.0) and m["average_loss"] == pytest.approx(-37.5)
    assert m["expectancy_r"] is None  # no risk column
    # SQN over the closed trades' returns: sqrt(4) × mean / sample std.
    closed = [0.1, -0.05, 0.2, -0.025]
    assert m["sqn"] == pytest.approx(2 * statistics.mean(closed) / statistics.stdev(closed))
    assert m["average_bars_held"] == pytest.approx(5.0)  # (3 + 5 + 10 + 2) / 4


def test_r_multiples_when_trades_carry_their_risk():
    trades = _engine_trades(risk=[50.0, 50.0, 100.0, 25.0, 60.0])
    m = performance_metrics([0.01], trades, 252)
    # R = pnl / risk = 2, −1, 2, −1: mean 0.5, sample std sqrt((4 × 1.5²) / 3) = sqrt(3).
    assert m["expectancy_r"] == pytest.approx(0.5)
    assert m["sqn"] == pytest.approx(2 * 0.5 / math.sqrt(3))


def test_sqn_caps_the_trade_count_at_100():
    returns = [0.02, -0.01] * 75  # 150 closed trades
    trades = pd.DataFrame({"pnl": returns, "return": returns, "open": False})
    m = performance_metrics([0.01], trades, 252)
    assert m["sqn"] == pytest.approx(math.sqrt(100) * statistics.mean(returns) / statistics.stdev(returns))


def test_the_current_engines_trade_subset_still_works():
    trades = pd.DataFrame({"pnl": [5.0, -2.0], "open": [False, False], "return": [0.05, -0.02]})
    m = performance_metrics([0.01, 0.0], trades, 252)
    assert m["average_bars_held"] is None and m["expectancy_r"] is None
    assert m["sqn"] == pytest.approx(math.sqrt(2) * 0.015 / statistics.stdev([0.05, -0.02]))
    with pytest.raises(KeyError, match="pnl"):
        performance_metrics([0.01], pd.DataFrame({"open": [False]}), 252)


def test_exposure_reads_qty_and_turnover_by_hand():
    positions = pd.DataFrame({"qty": [0.0, 10.0, -5.0, 0.0]})
    fills = pd.DataFrame({"qty": [10.0, -10.0], "price": [5.0, 6.0]})
    equity = [100.0, 100.0, 120.0, 120.0, 110.0]
    m = performance_metrics(
        [0.0, 0.2, 0.0, -1 / 12], None, 4, positions=positions, fills=fills, equity=equity
    )
    assert m["exposure"] == pytest.approx(0.5)
    # |10 × 5| + |−10 × 6| = 110 traded over mean equity 110, in 4 periods of a 4-period year.
    assert m["turnover"] == pytest.approx(1.0)
    assert performance_metrics([0.0], None, 4, fills=fills)["turnover"] is None  # no equity to scale by
    with pytest.raises(KeyError, match="positions need a position or qty column"):
        performance_metrics([0.0], None, 4, positions=pd.DataFrame({"weight": [0.5]}))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=1, max_size=60))
def test_drawdown_and_tail_properties(r):
    m = performance_metrics(r, None, 252)
    json.dumps(m, allow_nan=False)
    assert -1.0 <= m["max_drawdown"] <= 0.0
    growth = np.r_[1.0, np.cumprod(1.0 + np.asarray(r))]
    if m["max_drawdown_recovery_bars"] is not None:
        trough = int(np.argmin(growth / np.maximum.accumulate(growth)))
        back = trough + m["max_drawdown_recovery_bars"]
        assert growth[back] >= np.max(growth[: trough + 1]) * (1 - 1e-12)  # back at the old peak
    if m["calmar"] is not None:
        assert np.sign(m["calmar"]) == np.sign(m["cagr"])
    assert m["var_99"] >= m["var_95"] - 1e-15  # a deeper quantile is a larger loss
    assert m["cvar_95"] >= m["var_95"] - 1e-15 and m["cvar_99"] >= m["var_99"] - 1e-15
    if m["var_95_parametric"] is not None:
        assert m["cvar_95_parametric"] >= m["var_95_parametric"] - 1e-15


def test_every_value_is_json_safe_on_degenerate_input():
    for args in (([], None), ([0.0, 0.0], pd.DataFrame({"pnl": [], "open": []})), ([0.5, -1.0], None)):
        json.dumps(performance_metrics(*args, 252, benchmark_returns=np.zeros(len(args[0]))), allow_nan=False)


# --------------------------------------------------------------------------------------------------
# Calendar tables
# --------------------------------------------------------------------------------------------------


def _calendar_series() -> pd.Series:
    ts = pd.to_datetime(["2023-01-03", "2023-01-04", "2023-02-01", "2023-04-03", "2024-03-01"], utc=True)
    return pd.Series([0.1, 0.1, -0.1, 0.05, 0.02], index=ts)


def test_monthly_returns_by_hand():
    table = monthly_returns(_calendar_series())
    assert list(table.columns) == [*range(1, 13), "year"]
    assert list(table.index) == [2023, 2024]
    assert table.loc[2023, 1] == pytest.approx(0.21)  # 1.1 × 1.1 − 1
    assert table.loc[2023, 2] == pytest.approx(-0.1)
    assert table.loc[2023, 4] == pytest.approx(0.05)
    assert np.isnan(table.loc[2023, 3]) and np.isnan(table.loc[2024, 1])  # no periods in those months
    assert table.loc[2023, "year"] == pytest.approx(1.21 * 0.9 * 1.05 - 1)  # 0.14345
    assert table.loc[2024, 3] == pytest.approx(0.02) and table.loc[2024, "year"] == pytest.approx(0.02)


def test_quarterly_returns_by_hand():
    table = quarterly_returns(_calendar_series())
    assert list(table.columns) == [1, 2, 3, 4, "year"]
    assert table.loc[2023, 1] == pytest.approx(1.21 * 0.9 - 1)  # January and February: 0.089
    assert table.loc[2023, 2] == pytest.approx(0.05)
    assert np.isnan(table.loc[2023, 3])
    assert table.loc[2023, "year"] == pytest.approx(1.21 * 0.9 * 1.05 - 1)


def test_monthly_returns_match_pandas_resample():
    ts = pd.bdate_range("2021-01-01", "2023-06-30", tz="UTC")
    r = pd.Series(np.random.default_rng(5).normal(0.0003, 0.01, len(ts)), index=ts)
    table = monthly_returns(r)
    resampled = (1 + r).resample("ME").prod() - 1
    for stamp, value in resampled.items():
        assert table.loc[stamp.year, stamp.month] == pytest.approx(value)
    yearly = (1 + r).resample("YE").prod() - 1
    assert table["year"].to_numpy() == pytest.approx(yearly.to_numpy())


def test_calendar_tables_need_a_time_index():
    with pytest.raises(TypeError, match="returns must be a pandas Series indexed by ts"):
        monthly_returns(pd.Series([0.1, 0.2]))
    with pytest.raises(ValueError, match="returns must be finite"):
        quarterly_returns(pd.Series([0.1, np.nan], index=pd.date_range("2024-01-01", periods=2, tz="UTC")))


# --------------------------------------------------------------------------------------------------
# Rolling statistics
# --------------------------------------------------------------------------------------------------


def test_rolling_sharpe_and_volatility_match_a_plain_loop():
    r = pd.Series(np.random.default_rng(2).normal(0.001, 0.01, 60))
    r.iloc[20:30] = 0.002  # a constant stretch: the deviation is exactly 0 there
    window, ppy, rf = 10, 252, 0.05
    sharpe = rolling_sharpe(r, window, ppy, risk_free=rf)
    vol = rolling_volatility(r, window, ppy)
    assert sharpe.index.equals(r.index) and vol.index.equals(r.index)
    assert sharpe.iloc[: window - 1].isna().all() and vol.iloc[: window - 1].isna().all()
    for end in range(window, len(r) + 1):
        w = r.iloc[end - window : end].to_numpy()
        single = performance_metrics(w, None, ppy, risk_free=rf)
        if single["sharpe"] is None:
            assert np.isnan(sharpe.iloc[end - 1]) and vol.iloc[end - 1] == 0.0
        else:
            assert sharpe.iloc[end - 1] == pytest.approx(single["sharpe"], rel=1e-9)
            assert vol.iloc[end - 1] == pytest.approx(single["annual_volatility"], rel=1e-9)
    assert np.isnan(sharpe.iloc[29])  # the window 20..29 is constant


def test_rolling_rejects_a_bad_window():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="window must be an integer >= 2"):
            rolling_sharpe([0.1, 0.2, 0.3], bad, 252)
