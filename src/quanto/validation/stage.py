"""The validate stage: bronze bars → silver (accepted + imputed) + quarantine + flags + audit + quality.

Order: bar rules (schema, duplicates, OHLC, prices, volume; then spikes and stale prices on the rows
that passed) → sessions (expected bars from the exchange calendar: gaps, unexpected bars, zero volume
in regular hours) → repair (short gaps filled by carrying the last close forward, one audit row per
imputed value). Every input row ends in exactly one place; the stage checks
rows_in = accepted + quarantined + duplicates_dropped, and rows_out = accepted + imputed.

Quotes, depth and fundamentals, when the features asked the ingest stage for them, go through their
own rules (validation.quotes, validation.fundamentals) into silver files with the same role; their
quarantined rows keep rule and reason (`validate_source`). Bars are validated exactly as without them.
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


# Datasets besides bars that the ingest stage hands over when the features ask for them (role = dataset).
SOURCE_DATASETS = ("quotes", "depth", "fundamentals")
_TOTALS = ("rows_in", "accepted", "quarantined", "duplicates_dropped", "flagged")


def validate_source(
    lake: Lake, key: str, kind: str, refs: list[FileRef], rules: ValidationConfig
) -> tuple[list[FileRef], list[dict], dict[str, int]]:
    """Validate one dataset besides bars (quotes, depth or fundamentals) with its rules, symbol by symbol
    for quotes and depth (they can be large), and write silver files with role = the dataset (quotes,
    depth: per vendor, symbol and year; fundamentals: per vendor), quarantined rows with rule and reason
    (role quarantine_<kind>) and warnings (role flags_<kind>).

    Returns (files, quality rows, totals: rows_in = accepted + quarantined + duplicates_dropped).
    Raises InputError when the dataset's quarantined share exceeds validation.max_quarantine_share.
    """
    from quanto.data.ingest import depth_levels, files_by_symbol
    from quanto.validation import fundamentals, quotes

    if kind == "fundamentals":
        frames = [lake.read_polars(refs)]
        policies = fundamentals.rule_policies(rules.fundamentals)
    else:  # the ingest stage writes them per symbol (and year): read one symbol's files at a time
        groups = files_by_symbol(refs)
        frames = (lake.read_polars(groups[s]) for s in sorted(groups, key=lambda s: s or ""))
        policies = quotes.rule_policies(rules.quotes)
    source = f"bronze {kind}"
    outputs: list[FileRef] = []
    quality: list[dict] = []
    rejected, flags = [], []
    totals = dict.fromkeys(_TOTALS, 0)
    for frame in frames:
        if kind == "quotes":
            outcome = quotes.validate_quotes(frame, rules.quotes, source)
        elif kind == "depth":
            outcome = quotes.validate_depth(frame, rules.quotes, depth_levels(frame.columns), source)
        else:
            outcome = fundamentals.validate_fundamentals(frame, rules.fundamentals, source)
        totals = {k: totals[k] + outcome.counters[k] for k in _TOTALS}
        quality += [{"dataset": kind, **row} for row in outcome.quality(policies)]
        rejected.append(outcome.quarantined)
        flags.append(outcome.flags)
        if kind == "fundamentals":
            for (vendor,), part in outcome.accepted.group_by(["vendor"], maintain_order=True):
                outputs.append(lake.write_table(f"silver/{kind}/vendor={vendor}", part.to_arrow(), role=kind))
        else:
            by = ["vendor", "symbol", pl.col("ts").dt.year()]
            for (vendor, symbol, year), part in outcome.accepted.group_by(by, maintain_order=True):
                folder = f"silver/{kind}/vendor={vendor}/symbol={symbol}/year={year}"
                outputs.append(lake.write_table(folder, part.to_arrow(), role=kind))
    share = totals["quarantined"] / max(totals["rows_in"], 1)
    if share > rules.max_quarantine_share:
        raise InputError(
            f"validation: {totals['quarantined']} of {totals['rows_in']} {kind} rows quarantined ({share:.2%}) "
            f"exceeds validation.max_quarantine_share={rules.max_quarantine_share}"
        )
    if totals["duplicates_dropped"]:
        quality.append({"dataset": kind, "symbol": "*", "rule": "duplicate_exact", "policy": "drop",
                        "count": totals["duplicates_dropped"], "example": ""})  # fmt: skip
    side = f"key={key[:16]}"
    for folder, role, parts in (
        (f"quarantine/{kind}/{side}", f"quarantine_{kind}", rejected),
        (f"quality/{kind}_flags/{side}", f"flags_{kind}", flags),
    ):
        rows = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
        if rows.height:
            outputs.append(lake.write_table(folder, rows.to_arrow(), role=role))
    return outputs, quality, totals


def run_validate(req: StageRequest, ctx: StageContext) -> StageResult:
    """Validate and repair the ingested bars; fails (non-retryable) when too many rows are quarantined."""
    cfg = PipelineConfig.model_validate(req.config)
    rules = cfg.validation
    inputs = req.inputs["ingest"].files("bars")
    sources = {kind: refs for kind in SOURCE_DATASETS if (refs := req.inputs["ingest"].files(kind))}

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
        checked = {kind: validate_source(ctx.lake, key, kind, refs, rules) for kind, refs in sources.items()}
        every = quality + [row for _, rows, _ in checked.values() for row in rows]
        outputs = write_outputs(ctx.lake, key, merged, repaired, audit, every)
        outputs += [f for files, _, _ in checked.values() for f in files]
        if ctx.record:
            from quanto.store.records import replace_imputation_audit, replace_quality

            with ctx.db() as conn:
                replace_quality(conn, key, ctx.workflow_id, every)
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
        for kind, (_, rows, kind_totals) in checked.items():
            counters.update({f"{kind}_{k}": v for k, v in kind_totals.items()})
            summary.setdefault("datasets", {})[kind] = {"totals": kind_totals, "by_rule": per_rule(rows)}
        return Materialized(outputs, counters=counters, summary=summary)

    every_input = inputs + [f for refs in sources.values() for f in refs]
    return materialize("validate", ctx, every_input, rules.model_dump(mode="json"), compute)
