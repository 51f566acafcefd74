"""Parameter sweeps: one backtest per grid point over the same out-of-sample predictions, then a
leaderboard and the honest statistics of choosing the best point.

`run_point` is what SweepWorkflow's `sweep.point` activity runs (one per point, fanned out);
`finalize_sweep` aligns every point's returns, ranks the points, and measures the selection:
the probability of backtest overfitting (CSCV over the points' return matrix) and the deflated Sharpe
ratio of the winner with the number of points as the trial count. `run_sweep` runs both in a loop,
in one process.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from quanto.config.sweep import SweepJob
from quanto.contracts import FileRef
from quanto.lake.storage import Lake


def sweep_folder(job: SweepJob) -> str:
    """Lake folder of a sweep's outputs: runs/<sweep business key>/."""
    return f"runs/{job.workflow_id()}"


def run_point(
    job: SweepJob,
    index: int,
    point: dict[str, Any],
    lake: Lake,
    bars: list[FileRef],
    predictions: list[FileRef],
) -> dict[str, Any]:
    """Backtest one grid point; writes its per-bar returns under the sweep folder and returns
    {index, params, metrics, returns: FileRef as a dict}. Reruns of the same point reuse the file."""
    from quanto.backtest.stage import simulate_predictions

    cfg = job.point_job(point)
    result, ppy = simulate_predictions(lake.read_frame(bars), lake.read_frame(predictions), cfg)
    periods = result.equity.loc[result.period_rows(), ["ts", "returns"]].reset_index(drop=True)
    ref = lake.write_frame(f"{sweep_folder(job)}/points/point-{index:04d}", periods, role="sweep_returns")
    return {
        "index": index,
        "params": point,
        "metrics": result.metrics(ppy),
        "returns": ref.model_dump(),
        "periods_per_year": ppy,
    }


def finalize_sweep(job: SweepJob, points: list[dict[str, Any]], lake: Lake) -> dict[str, Any]:
    """Leaderboard (best first by `sweep.metric`; undefined values last), the PBO of picking the best
    point (CSCV over the T x N matrix of the points' returns, bars where a point has none count 0), and
    the winner's PSR/DSR with N trials. Writes runs/<sweep>/leaderboard and sweep.json."""
    from quanto.backtest.overfitting import pbo_cscv
    from quanto.evaluation.statistics import sharpe_statistics

    if not points:
        raise ValueError("a sweep needs at least one point")
    metric = job.sweep.metric
    ordered = sorted(points, key=lambda p: p["index"])
    series = [
        lake.read_frame([FileRef(**p["returns"])]).set_index("ts")["returns"].rename(p["index"])
        for p in ordered
    ]
    matrix = pd.concat(series, axis=1).sort_index().fillna(0.0)

    def rank_key(p: dict[str, Any]) -> tuple[bool, float, int]:
        value = p["metrics"].get(metric)
        return (value is None, -(value if value is not None else 0.0), p["index"])

    board = sorted(ordered, key=rank_key)
    best = board[0]
    ppy = float(best["periods_per_year"])
    per_period = matrix.mean() / matrix.std(ddof=1).replace(0.0, np.nan)
    variance = float(np.nanvar(per_period.to_numpy(), ddof=1)) if len(ordered) > 1 else None
    summary: dict[str, Any] = {
        "metric": metric,
        "points": len(ordered),
        "bars": int(len(matrix)),
        "best": {"index": best["index"], "params": best["params"], "metrics": best["metrics"]},
        "leaderboard": [
            {
                "rank": r + 1,
                "index": p["index"],
                "params": p["params"],
                **{k: p["metrics"].get(k) for k in LEADERBOARD_METRICS},
            }
            for r, p in enumerate(board)
        ],
        "statistics": sharpe_statistics(
            matrix[best["index"]].to_numpy(),
            len(ordered),
            None if variance is None or np.isnan(variance) else variance,
            ppy,
        ),
        "pbo": None,
    }
    n_splits = job.sweep.pbo_splits
    if len(ordered) >= 2 and len(matrix) >= 2 * n_splits:
        pbo = pbo_cscv(matrix.to_numpy(), n_splits=n_splits)
        summary["pbo"] = {
            k: pbo[k]
            for k in ("pbo", "prob_oos_loss", "degradation_slope", "degradation_intercept")
            if k in pbo
        }
    else:
        summary["pbo_note"] = (
            f"PBO needs at least 2 points and {2 * n_splits} bars (sweep.pbo_splits={n_splits}); "
            f"this sweep has {len(ordered)} points and {len(matrix)} bars"
        )
    folder = sweep_folder(job)
    board_frame = pd.DataFrame(
        [{**row, "params": json.dumps(row["params"], sort_keys=True)} for row in summary["leaderboard"]]
    )
    lake.write_frame(f"{folder}/leaderboard", board_frame, role="sweep_leaderboard")
    lake.write_json(f"{folder}/sweep.json", summary)
    return summary


# The leaderboard's columns, besides rank, index and params.
LEADERBOARD_METRICS = (
    "sharpe",
    "sortino",
    "calmar",
    "total_return",
    "annual_return",
    "max_drawdown",
    "trades",
)


def run_sweep(job: SweepJob, lake: Lake, bars: list[FileRef], predictions: list[FileRef]) -> dict[str, Any]:
    """Every point in this process, then `finalize_sweep` (notebooks, tests)."""
    points = [run_point(job, i, p, lake, bars, predictions) for i, p in enumerate(job.points())]
    return finalize_sweep(job, points, lake)
