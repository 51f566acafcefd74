"""Activities of SweepWorkflow (quanto-compute): list the grid points, backtest one point, rank them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio import activity

from quanto.activities.pipeline import bad_input_is_final
from quanto.contracts import SweepFinalizeRequest, SweepPointRequest


def _job(config: dict[str, Any]):
    from quanto.config.sweep import SweepJob

    return SweepJob.model_validate(config)


def _lake(config: dict[str, Any]):
    from quanto.lake.storage import Lake

    return Lake(Path(config.get("lake_root", ".quanto/lake")))


@activity.defn(name="sweep.plan")
def plan(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every grid point of the sweep, in their deterministic order."""
    with bad_input_is_final():
        return _job(config).points()


@activity.defn(name="sweep.point")
def point(req: SweepPointRequest) -> dict[str, Any]:
    """Backtest one grid point over the job's bars and out-of-sample predictions."""
    from quanto.backtest.sweep import run_point
    from quanto.lake.materialize import hydrate

    lake = _lake(req.config)
    with bad_input_is_final():
        bars = hydrate(lake, req.bars_from).files("bars")
        predictions = hydrate(lake, req.predictions_from).files("predictions")
        return run_point(_job(req.config), req.index, req.point, lake, bars, predictions)


@activity.defn(name="sweep.finalize")
def finalize(req: SweepFinalizeRequest) -> dict[str, Any]:
    """The leaderboard and the honest statistics of picking the best point."""
    from quanto.backtest.sweep import finalize_sweep

    with bad_input_is_final():
        return finalize_sweep(_job(req.config), req.points, _lake(req.config))


SWEEP_ACTIVITIES = [plan, point, finalize]
