"""The labels stage: silver bars → gold labels (each with its end time t1, for purging)."""

from __future__ import annotations

from quanto.config.models import PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize


def run_labels(req: StageRequest, ctx: StageContext) -> StageResult:
    """Compute the job's label from validated bars."""
    from quanto.labels.forward import compute_labels

    cfg = PipelineConfig.model_validate(req.config)
    spec = cfg.label
    inputs = req.inputs["validate"].files("bars")

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_frame(inputs)
        labels = compute_labels(bars, spec.kind, spec.horizon, spec.threshold)
        ref = ctx.lake.write_frame(f"gold/labels/{key[:16]}", labels, role="labels")
        labelled = int(labels["label"].notna().sum())
        return Materialized([ref], counters={"rows": len(labels), "labelled": labelled})

    return materialize("labels", ctx, inputs, spec.model_dump(mode="json"), compute)
