"""The validate stage: bronze bars → silver (accepted + imputed) + quarantine + flags + audit + quality.

Order: bar rules (schema, duplicates, OHLC, prices, volume; then spikes and stale prices on the rows
that passed) → sessions (expected bars from the exchange calendar: gaps, unexpected bars, zero volume
in regular hours) → repair (short gaps filled by carrying the last close forward, one audit row per
imputed value). Every input row ends in exactly one place; the stage checks
rows_in = accepted + quarantined + duplicates_dropped, and rows_out = accepted + imputed.
"""

from __future__ import annotations

import polars as pl

from quanto.config.models import PipelineConfig, ValidationConfig
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.data.schemas import BAR_COLUMNS, BAR_SCHEMA, QUARANTINE_SCHEMA
from quanto.errors import InputError
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import Lake
from quanto.validation.checks import ValidationOutcome


def rule_policies(rules: ValidationConfig) -> dict[str, str]:
    """Rule id → policy for every configured rule."""
    out = {name: getattr(rules.bars, name).policy for name in type(rules.bars).model_fields}
    out.update({name: getattr(rules.sessions, name).policy for name in ("gap", "unexpected_bar")})
    if out["gap"] == "quarantine":
        out["gap"] = "warn"  # a missing bar has no row to quarantine: the sessions check flags it
    return {**out, "duplicate_exact": "drop"}


def validate_and_repair(bars: pl.DataFrame, timeframe: str, rules: ValidationConfig, source: str):
    """Run bar rules, session checks and repair on one timeframe's bars.

    Returns (outcome with accepted = real rows kept, repaired bars = accepted + imputed, audit, gaps).
    """
    from quanto.validation.bars import validate_bars
    from quanto.validation.sessions import check_sessions, repair_gaps

    outcome = validate_bars(bars, rules.bars, source=source)
    sessions = check_sessions(outcome.accepted, timeframe, rules.sessions, rules.bars.zero_volume_rth)
    quarantined = pl.concat([outcome.quarantined, sessions.quarantined], how="vertical_relaxed")
    flags = pl.concat([outcome.flags, sessions.flags], how="vertical_relaxed")
    kept = sessions.bars
    if rules.sessions.enabled and rules.sessions.repair:
        repaired, audit = repair_gaps(
            kept,
            sessions.gaps,
            timeframe,
            calendar=rules.sessions.calendar,
            extended_hours=rules.sessions.extended_hours,
        )
    else:
        repaired, audit = kept, None
    imputed = repaired.height - kept.height
    merged = ValidationOutcome(
        accepted=kept,
        quarantined=quarantined,
        flags=flags,
        duplicates_dropped=outcome.duplicates_dropped,
        extra_counters={
            **outcome.extra_counters,
            "imputed": imputed,
            "gaps": sessions.gaps.height,
            "gaps_review": int((sessions.gaps["action"] == "review").sum()) if sessions.gaps.height else 0,
        },
    )
    if merged.counters["rows_in"] != bars.height:  # conservation is an invariant, never a warning
        raise AssertionError(f"{source}: row conservation broken: {bars.height} in, {merged.counters}")
    return merged, repaired, audit, sessions.gaps


def per_rule(quality: list[dict]) -> list[dict]:
    """Quality rows summed over symbols (the per-symbol table stays in Parquet and PostgreSQL)."""
    out: dict[str, dict] = {}
    for row in quality:
        agg = out.setdefault(row["rule"], {**row, "count": 0, "symbols": set()})
        agg["count"] += row["count"]
        agg["symbols"].add(row["symbol"])
    return [
        {**{k: v for k, v in a.items() if k != "symbols"},
         "symbol": next(iter(a["symbols"])) if len(a["symbols"]) == 1 else f"{len(a['symbols'])} symbols"}
        for a in sorted(out.values(), key=lambda a: (-a["count"], a["rule"]))
    ]  # fmt: skip


def _bars_table(df: pl.DataFrame):
    return df.select(BAR_COLUMNS).to_arrow().cast(BAR_SCHEMA)


def write_outputs(
    lake: Lake, key: str, merged: ValidationOutcome, repaired: pl.DataFrame, audit, quality
) -> list[FileRef]:
    """Silver bars per (vendor, timeframe, symbol, year), and the quarantine/flags/audit/quality files."""
    outputs: list[FileRef] = []
    with_year = repaired.with_columns(pl.col("ts").dt.year().alias("__year"))
    for (vendor, timeframe, symbol, year), part in with_year.group_by(
        ["vendor", "timeframe", "symbol", "__year"], maintain_order=True
    ):
        folder = f"silver/bars/vendor={vendor}/timeframe={timeframe}/symbol={symbol}/year={year}"
        outputs.append(lake.write_table(folder, _bars_table(part.sort("ts")), role="bars"))
    side = f"key={key[:16]}"
    if merged.quarantined.height:
        q = merged.quarantined.select([*BAR_COLUMNS, "rule", "reason"]).to_arrow().cast(QUARANTINE_SCHEMA)
        outputs.append(lake.write_table(f"quarantine/bars/{side}", q, role="quarantine"))
    if merged.flags.height:
        outputs.append(lake.write_table(f"quality/flags/{side}", merged.flags.to_arrow(), role="flags"))
    if audit is not None and audit.height:
        outputs.append(
            lake.write_table(f"quality/imputation_audit/{side}", audit.to_arrow(), role="imputation_audit")
        )
    if quality:
        outputs.append(
            lake.write_table(f"quality/report/{side}", pl.DataFrame(quality).to_arrow(), role="quality")
        )
    return outputs


def run_validate(req: StageRequest, ctx: StageContext) -> StageResult:
    """Validate and repair the ingested bars; fails (non-retryable) when too many rows are quarantined."""
    cfg = PipelineConfig.model_validate(req.config)
    rules = cfg.validation
    inputs = req.inputs["ingest"].files("bars")

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_polars(inputs)
        merged, repaired, audit, gaps = validate_and_repair(
            bars, cfg.universe.timeframe, rules, "bronze bars"
        )
        counters = merged.counters
        share = counters["quarantined"] / max(counters["rows_in"], 1)
        if share > rules.max_quarantine_share:
            raise InputError(
                f"validation: {counters['quarantined']} of {counters['rows_in']} rows quarantined ({share:.2%}) "
                f"exceeds validation.max_quarantine_share={rules.max_quarantine_share}"
            )
        quality = [{"dataset": "bars", **row} for row in merged.quality(rule_policies(rules))]
        if merged.duplicates_dropped:
            quality.append(
                {
                    "dataset": "bars",
                    "symbol": "*",
                    "rule": "duplicate_exact",
                    "policy": "drop",
                    "count": merged.duplicates_dropped,
                    "example": "",
                }  # fmt: skip
            )
        outputs = write_outputs(ctx.lake, key, merged, repaired, audit, quality)
        if ctx.record:
            from quanto.store.records import replace_imputation_audit, replace_quality

            with ctx.db() as conn:
                replace_quality(conn, key, ctx.workflow_id, quality)
                if audit is not None:
                    replace_imputation_audit(conn, key, ctx.run_id, "bars", audit)
        totals = {k: counters[k] for k in ("rows_in", "accepted", "quarantined", "duplicates_dropped")}
        summary = {
            "totals": {**totals, "imputed": counters["imputed"], "flagged": counters["flagged"]},
            "by_rule": per_rule(quality),
            "gaps_review": gaps.filter(pl.col("action") == "review").head(20).to_dicts()
            if gaps.height
            else [],
        }
        return Materialized(outputs, counters=counters, summary=summary)

    return materialize("validate", ctx, inputs, rules.model_dump(mode="json"), compute)
