"""The features stage: silver bars → gold feature table keyed by feature set and registry versions."""

from __future__ import annotations

import pandas as pd

from quanto.config.models import FeaturesConfig, PipelineConfig, WalkForwardConfig
from quanto.contracts import StageRequest, StageResult
from quanto.features.panel_sources import SOURCE_ROLES, add_source_features
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import sha256_json


def run_features(req: StageRequest, ctx: StageContext) -> StageResult:
    """Compute the job's features per symbol from validated bars."""
    from quanto.features.registry import REGISTRY, compute_features, expand_names
    from quanto.features.store import FeatureStore

    cfg = PipelineConfig.model_validate(req.config)
    names = expand_names(cfg.features.names)
    versions = {n: REGISTRY[n].version for n in names}
    inputs = req.inputs["validate"].files("bars")
    # Validated quotes/depth/fundamentals when the job asks for microstructure or fundamental features.
    sources = [f for role in SOURCE_ROLES for f in req.inputs["validate"].files(role)]

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_frame(inputs)
        coverage = None
        if cfg.features.incremental:
            u = cfg.universe
            scope = {
                "vendor": u.vendor,
                "source": u.source,
                "timeframe": u.timeframe,
                "adjustment": u.adjustment,
            }
            per_symbol, run = FeatureStore(ctx.lake, [REGISTRY[n] for n in names], scope).compute(bars)
            coverage = run.as_dict()
            ctx.progress(0, 1, f"reused {run.rows_reused} rows, computed {run.rows_computed}")
        else:
            per_symbol = compute_features(bars, names)
        table = add_panel_features(per_symbol, bars, cfg.features, cfg.walk_forward)
        table = add_source_features(table, bars, ctx.lake, sources, cfg)
        set_id = sha256_json(names)[:8]
        ref = ctx.lake.write_frame(f"gold/features/set-{set_id}@{key[:12]}", table, role="features")
        ctx.progress(1, 1, f"{len(names)} features")
        return Materialized(
            [ref],
            counters={"rows": len(table), "features": table.shape[1] - 2},
            summary={"names": names, "coverage": coverage},
        )

    panel = cfg.features.model_dump(mode="json", exclude={"names"})
    if cfg.features.pca is not None:  # the default fit window is walk_forward's: key on the bars used
        panel["pca"]["fit_bars"] = cfg.features.pca.fit_bars or cfg.walk_forward.train_bars
    if cfg.features.fundamentals:  # daily bars close at the calendar's session close
        panel["calendar"] = cfg.validation.sessions.calendar
    return materialize(
        "features", ctx, inputs + sources, {"names": names, "versions": versions, "panel": panel}, compute
    )


def add_panel_features(
    table: pd.DataFrame,
    bars: pd.DataFrame,
    spec: FeaturesConfig,
    walk_forward: WalkForwardConfig | None = None,
) -> pd.DataFrame:
    """Cross-sectional ranks/z-scores (and sector z-scores) of the chosen features, rolling
    corr/beta to the benchmark symbol, and PCA factors; every value at ts uses rows at or before ts
    only, except PCA values inside the fit window (the first `spec.pca.fit_bars` bars, default
    `walk_forward.train_bars`), which no walk-forward fold tests on."""
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
    if spec.pca:
        from quanto.errors import InputError
        from quanto.features.pca import fit_end_for, pca_factors

        fit_bars = spec.pca.fit_bars or (walk_forward.train_bars if walk_forward else None)
        if fit_bars is None:
            raise InputError("features.pca without fit_bars needs the walk_forward config (its train_bars)")
        factors = pca_factors(bars, spec.pca.n_components, fit_end_for(bars, fit_bars))
        table = table.merge(factors, on=["symbol", "ts"], how="left", validate="one_to_one")
    return table
