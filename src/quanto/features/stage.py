"""The features stage: silver bars → gold feature table keyed by feature set and registry versions."""

from __future__ import annotations

import pandas as pd

from quanto.config.models import FeaturesConfig, PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import sha256_json


def run_features(req: StageRequest, ctx: StageContext) -> StageResult:
    """Compute the job's features per symbol from validated bars."""
    from quanto.features.registry import REGISTRY, compute_features, expand_names

    cfg = PipelineConfig.model_validate(req.config)
    names = expand_names(cfg.features.names)
    versions = {n: REGISTRY[n].version for n in names}
    inputs = req.inputs["validate"].files("bars")

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_frame(inputs)
        table = add_panel_features(compute_features(bars, names), bars, cfg.features)
        set_id = sha256_json(names)[:8]
        ref = ctx.lake.write_frame(f"gold/features/set-{set_id}@{key[:12]}", table, role="features")
        ctx.progress(1, 1, f"{len(names)} features")
        return Materialized(
            [ref], counters={"rows": len(table), "features": table.shape[1] - 2}, summary={"names": names}
        )

    panel = cfg.features.model_dump(mode="json", exclude={"names"})
    return materialize(
        "features", ctx, inputs, {"names": names, "versions": versions, "panel": panel}, compute
    )


def add_panel_features(table: pd.DataFrame, bars: pd.DataFrame, spec: FeaturesConfig) -> pd.DataFrame:
    """Cross-sectional ranks/z-scores (and sector z-scores) of the chosen features, and rolling
    corr/beta to the benchmark symbol; every value at ts uses rows at or before ts only."""
    from quanto.features.cross_sectional import (
        benchmark_relative,
        cross_sectional_rank,
        cross_sectional_zscore,
        sector_relative,
    )

    if spec.cross_sectional:
        table = cross_sectional_rank(table, spec.cross_sectional)
        table = cross_sectional_zscore(table, spec.cross_sectional)
        if spec.sectors:
            table = sector_relative(table, spec.cross_sectional, spec.sectors)
    if spec.benchmark:
        rel = benchmark_relative(bars, spec.benchmark, spec.benchmark_windows)
        table = table.merge(rel, on=["symbol", "ts"], how="left", validate="one_to_one")
    return table
