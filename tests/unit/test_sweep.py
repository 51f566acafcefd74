"""Parameter sweeps: the job file, one backtest per grid point, the leaderboard and its statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from quanto.backtest.stage import simulate_predictions
from quanto.backtest.sweep import run_sweep
from quanto.config.sweep import SweepJob
from quanto.lake.storage import Lake

N_BARS = 300


def job(grid: dict, **sweep) -> SweepJob:
    return SweepJob.model_validate(
        {
            "name": "sweep-test",
            "universe": {
                "vendor": "sample",
                "symbols": ["AAA", "BBB"],
                "start": "2020-01-01",
                "end": "2021-06-01",
            },
            "sweep": {"grid": grid, **sweep},
        }
    )


def market(seed: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily bars of two symbols and noisy regression predictions of their next return."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2020-01-02", periods=N_BARS, freq="B", tz="UTC")
    bars, preds = [], []
    for symbol, price in (("AAA", 50.0), ("BBB", 120.0)):
        ret = rng.normal(0.0003, 0.015, N_BARS)
        close = price * np.exp(np.cumsum(ret))
        open_ = np.r_[price, close[:-1]] * np.exp(rng.normal(0, 0.002, N_BARS))
        bars.append(pd.DataFrame({"symbol": symbol, "ts": ts, "open": open_, "high": np.maximum(open_, close) * 1.01,
                                  "low": np.minimum(open_, close) * 0.99, "close": close, "volume": 1e6}))  # fmt: skip
        preds.append(pd.DataFrame({"symbol": symbol, "ts": ts, "prediction": np.r_[ret[1:], 0.0] * 0.3 + rng.normal(0, 0.01, N_BARS)}))  # fmt: skip
    return pd.concat(bars, ignore_index=True), pd.concat(preds, ignore_index=True)


def test_points_are_the_sorted_grid_and_each_makes_a_valid_job() -> None:
    j = job({"backtest.mode": ["long_flat", "long_short"], "backtest.entry_threshold": [0.0, 0.002]})
    assert j.points() == [
        {"backtest.entry_threshold": 0.0, "backtest.mode": "long_flat"},
        {"backtest.entry_threshold": 0.0, "backtest.mode": "long_short"},
        {"backtest.entry_threshold": 0.002, "backtest.mode": "long_flat"},
        {"backtest.entry_threshold": 0.002, "backtest.mode": "long_short"},
    ]
    assert j.point_job(j.points()[3]).backtest.mode == "long_short"
    assert j.workflow_id().startswith("sweep-sweep-test-")
    assert j.pipeline().model_dump() == j.point_job({}).model_dump()


@pytest.mark.parametrize(
    "grid, sweep, message",
    [
        ({"model.kind": ["xgboost"]}, {}, "only backtest parameters are swept"),
        ({"backtest.mode": []}, {}, "give at least one value"),
        (
            {"backtest.mode": ["long_flat", "sideways"]},
            {},
            r"sweep point 1 \{'backtest.mode': 'sideways'\}: backtest.mode",
        ),
        ({"backtest.no_such_field": [1]}, {}, "sweep point 0"),
        ({"backtest.mode": ["long_flat"]}, {"pbo_splits": 5}, "pbo_splits must be even"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_key_or_point(grid, sweep, message) -> None:
    with pytest.raises(ValidationError, match=message):
        job(grid, **sweep)


def test_every_point_is_a_backtest_and_the_board_ranks_them(tmp_path) -> None:
    lake = Lake(tmp_path)
    bars, preds = market()
    bar_refs = [lake.write_frame("silver/t", bars, role="bars")]
    pred_refs = [lake.write_frame("gold/p", preds, role="predictions")]
    j = job(
        {"backtest.mode": ["long_flat", "long_short"], "backtest.entry_threshold": [0.0, 0.004]}, pbo_splits=4
    )
    summary = run_sweep(j, lake, bar_refs, pred_refs)

    assert summary["points"] == 4 and summary["metric"] == "sharpe"
    by_index = {row["index"]: row for row in summary["leaderboard"]}
    for i, point in enumerate(j.points()):  # the engine itself is the oracle for each point
        result, ppy = simulate_predictions(bars, preds, j.point_job(point))
        assert by_index[i]["params"] == point
        assert by_index[i]["sharpe"] == pytest.approx(result.metrics(ppy)["sharpe"], rel=1e-12)
    sharpes = [row["sharpe"] for row in summary["leaderboard"]]
    assert sharpes == sorted(sharpes, reverse=True) and [r["rank"] for r in summary["leaderboard"]] == [
        1,
        2,
        3,
        4,
    ]
    assert summary["best"]["index"] == summary["leaderboard"][0]["index"]
    # The selection is judged with every point as a trial.
    assert summary["statistics"]["n_trials"] == 4 and summary["statistics"]["dsr"] is not None
    assert summary["statistics"]["dsr"] <= summary["statistics"]["psr"]
    assert 0.0 <= summary["pbo"]["pbo"] <= 1.0
    saved = json.loads(lake.abspath(f"runs/{j.workflow_id()}/sweep.json").read_text())
    assert saved["leaderboard"] == json.loads(json.dumps(summary["leaderboard"]))


def test_a_sweep_too_short_for_cscv_says_so(tmp_path) -> None:
    lake = Lake(tmp_path)
    bars, preds = market()
    bars, preds = bars[bars["ts"] < bars["ts"].iloc[20]], preds[preds["ts"] < preds["ts"].iloc[20]]
    j = job({"backtest.entry_threshold": [0.0, 0.004]}, pbo_splits=16)
    summary = run_sweep(
        j,
        lake,
        [lake.write_frame("s", bars, role="bars")],
        [lake.write_frame("p", preds, role="predictions")],
    )
    assert summary["pbo"] is None and "pbo_splits=16" in summary["pbo_note"]
