"""The validate stage: bronze bars → silver (accepted) + quarantine + quality summary."""

from __future__ import annotations

from quanto.config.models import PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.data.schemas import QUARANTINE_SCHEMA, bars_to_table
from quanto.errors import InputError
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.validation.bars import validate_bars


def run_validate(req: StageRequest, ctx: StageContext) -> StageResult:
    """Validate the ingested bars; fails (non-retryable) when too many rows are quarantined."""
    cfg = PipelineConfig.model_validate(req.config)
    inputs = req.inputs["ingest"].files("bars")

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_frame(inputs)
        outcome = validate_bars(bars, source="bronze bars")
        counters = outcome.counters
        share = counters["quarantined"] / max(counters["rows_in"], 1)
        if share > cfg.validation.max_quarantine_share:
            raise InputError(
                f"validation: {counters['quarantined']} of {counters['rows_in']} rows quarantined ({share:.2%}) "
                f"exceeds validation.max_quarantine_share={cfg.validation.max_quarantine_share}"
            )
        outputs = []
        acc = outcome.accepted
        for (symbol, timeframe, vendor, year), part in acc.groupby(
            ["symbol", "timeframe", "vendor", acc["ts"].dt.year], sort=True
        ):
            folder = f"silver/bars/vendor={vendor}/timeframe={timeframe}/symbol={symbol}/year={year}"
            outputs.append(ctx.lake.write_table(folder, bars_to_table(part), role="bars"))
        if len(outcome.quarantined):
            q = outcome.quarantined
            outputs.append(
                ctx.lake.write_frame(
                    f"quarantine/bars/key={key[:16]}", q, role="quarantine", schema=QUARANTINE_SCHEMA
                )
            )
        quality = [{"dataset": "bars", **row} for row in outcome.quality]
        if ctx.record:
            from quanto.store.records import replace_quality

            with ctx.db() as conn:
                replace_quality(conn, key, ctx.workflow_id, quality)
        summary = {
            "totals": {k: counters[k] for k in ("rows_in", "accepted", "quarantined", "duplicates_dropped")},
            "by_rule": quality,
        }
        return Materialized(outputs, counters=counters, summary=summary)

    return materialize("validate", ctx, inputs, cfg.validation.model_dump(mode="json"), compute)
