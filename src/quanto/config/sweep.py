"""The sweep job file: a research job plus a grid over its backtest parameters.

Every grid point backtests the same out-of-sample predictions (the job's walk-forward), so a sweep
costs one pipeline and N backtests; the probability of backtest overfitting and the deflated Sharpe
ratio then say how much of the best point's result is selection luck.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from quanto.config.models import PipelineConfig, Strict

SweepMetric = Literal["sharpe", "sortino", "calmar", "total_return", "annual_return"]
# Only the backtest is swept: the predictions stay fixed, which is what makes a sweep cheap.
SWEEPABLE = "backtest."


class SweepConfig(Strict):
    """`grid` maps dotted backtest keys to the values to try; every combination is one point."""

    grid: dict[str, list[Any]] = Field(
        min_length=1,
        description='e.g. {"backtest.entry_threshold": [0, 0.001], "backtest.mode": [long_flat, long_short]}',
    )
    metric: SweepMetric = Field("sharpe", description="what the leaderboard ranks by (higher is better)")
    max_parallel: int = Field(8, ge=1, le=256, description="points backtested at once (one activity each)")
    pbo_splits: int = Field(
        8, ge=2, le=16, description="CSCV blocks for the probability of backtest overfitting"
    )

    @field_validator("grid")
    @classmethod
    def _backtest_keys(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not key.startswith(SWEEPABLE) or key == SWEEPABLE:
                raise ValueError(f"grid key {key!r}: only backtest parameters are swept (backtest.<field>)")
            if not values:
                raise ValueError(f"grid key {key!r}: give at least one value")
        return v

    @field_validator("pbo_splits")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"pbo_splits must be even (CSCV splits the blocks in halves), got {v}")
        return v


class SweepJob(PipelineConfig):
    """A research job (every PipelineConfig key) and its `sweep`."""

    sweep: SweepConfig

    @model_validator(mode="after")
    def _points_are_valid(self) -> SweepJob:
        self.points()  # every combination must make a valid job: fail when the file loads
        return self

    def pipeline(self) -> PipelineConfig:
        """The research job without its sweep: what produces the predictions every point trades."""
        return PipelineConfig.model_validate(self.model_dump(mode="json", exclude={"sweep"}))

    def points(self) -> list[dict[str, Any]]:
        """Every grid combination as {dotted key: value}, keys in sorted order, values in the order
        given: a deterministic numbering of the points."""
        keys = sorted(self.sweep.grid)
        points = [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(self.sweep.grid[k] for k in keys))
        ]
        for i, point in enumerate(points):
            try:
                self.point_job(point)
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
                )
                raise ValueError(f"sweep point {i} {point}: {problems}") from None
        return points

    def point_job(self, point: dict[str, Any]) -> PipelineConfig:
        """The research job with one point's backtest values."""
        data = self.model_dump(mode="json", exclude={"sweep"})
        for dotted, value in point.items():
            *path, last = dotted.split(".")
            node = data
            for part in path:  # nested sections, e.g. backtest.sizing.fraction
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[last] = value
        return PipelineConfig.model_validate(data)

    def workflow_id(self, kind: str = "sweep") -> str:
        """Business key: sweep-<name>-<hash8> (the hash covers the grid)."""
        return super().workflow_id(kind)
