"""The features stage: silver bars → gold feature table keyed by feature set and registry versions."""

from __future__ import annotations

from quanto.config.models import PipelineConfig
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
        table = compute_features(bars, names)
        set_id = sha256_json(names)[:8]
        ref = ctx.lake.write_frame(f"gold/features/set-{set_id}@{key[:12]}", table, role="features")
        ctx.progress(1, 1, f"{len(names)} features")
        return Materialized(
            [ref], counters={"rows": len(table), "features": len(names)}, summary={"names": names}
        )

    return materialize("features", ctx, inputs, {"names": names, "versions": versions}, compute)
