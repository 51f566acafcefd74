"""Fundamentals validation (long form, FUNDAMENTAL_SCHEMA) on the shared rule runner.

Order of work: schema check (SchemaError, always fatal) → exact duplicate rows dropped and counted →
rules via `run_checks` → accepted sorted by (symbol, filed_at, period_end, field), the order a
point-in-time (as-of on filed_at) join wants.

Rules (ids = `FundamentalRules` field names; a quarantined row names the first that fails):
- `period_before_filing`: period_end must be strictly before the filing date (filed_at's UTC date);
  a statement cannot be filed before its period ends.
- `duplicate_period`: rows sharing (symbol, period_end, field, filed_at) that disagree on value or
  fiscal_period — every one of them, since nothing says which is right. A restatement (same
  symbol, period_end and field with a later filed_at) is legitimate and kept. Rows that share the key
  and agree on value and fiscal_period but differ in vendor are kept too (two sources, one number).

Convention for `ts`: the runner keys flags and quality on (symbol, ts), so ts = filed_at, the moment
the number became public. `accepted` has exactly FUNDAMENTAL_SCHEMA's columns; `quarantined` has them
plus `ts` (= filed_at, so `ValidationOutcome.quality` works), `rule` and `reason`; `flags.ts` is
filed_at.
"""

from __future__ import annotations

import pandas as pd
import polars as pl

from quanto.config.models import FundamentalRules
from quanto.data.schemas import FUNDAMENTAL_SCHEMA, conform
from quanto.validation.checks import Check, ValidationOutcome, run_checks

STATEMENT_KEY = ["symbol", "period_end", "field", "filed_at"]
SORT_KEY = ["symbol", "filed_at", "period_end", "field"]
_CONFLICT, _CONFLICT_WHY = "__conflict", "__conflict_why"


def rule_policies(rules: FundamentalRules) -> dict[str, str]:
    """Rule id → policy, for `ValidationOutcome.quality` (exact duplicates are always dropped)."""
    return {
        **{name: getattr(rules, name).policy for name in type(rules).model_fields},
        "duplicate_exact": "drop",
    }


def validate_fundamentals(
    df: pl.DataFrame | pd.DataFrame, rules: FundamentalRules, source: str = "fundamentals"
) -> ValidationOutcome:
    """Validate fundamentals against `rules` (see the module docstring for rules and output columns).

    Accepts polars or pandas; returns polars frames. Raises SchemaError on a schema mismatch and
    ValidationFailed when a `fail` rule finds rows.
    """
    frame = conform(df, FUNDAMENTAL_SCHEMA, source)
    rows_in = frame.height
    # Exact duplicates carry no information: keep the first copy, count the rest.
    frame = frame.unique(maintain_order=True, keep="first").rechunk()  # one chunk: see checks.run_checks
    duplicates = rows_in - frame.height

    # The conflict and its reason are computed over the whole frame: the runner evaluates reasons
    # on failing rows only (and on a few examples under `fail`), which would truncate the group.
    disagree = (pl.col("value").n_unique().over(STATEMENT_KEY) > 1) | (
        pl.col("fiscal_period").n_unique().over(STATEMENT_KEY) > 1
    )
    variants = (
        pl.format("{} ({})", "value", "fiscal_period").unique().sort().str.join(", ").over(STATEMENT_KEY)
    )
    work = frame.with_columns(ts=pl.col("filed_at"), **{_CONFLICT: disagree}).with_columns(
        pl.when(pl.col(_CONFLICT))
        .then(
            pl.format(
                "{} rows for {} period_end {} filed {} disagree: {}",
                pl.len().over(STATEMENT_KEY),
                "field",
                "period_end",
                pl.col("filed_at").dt.strftime("%Y-%m-%d %H:%M:%S UTC"),
                variants,
            )
        )
        .otherwise(None)
        .alias(_CONFLICT_WHY)
    )
    filing_date = pl.col("filed_at").dt.date()
    checks = [
        Check(
            "period_before_filing",
            rules.period_before_filing.policy,
            pl.col("period_end") >= filing_date,
            pl.format(
                "period_end {} is not before the filing date {} (filed_at {})",
                "period_end",
                filing_date,
                pl.col("filed_at").dt.strftime("%Y-%m-%d %H:%M:%S UTC"),
            ),
        ),
        Check("duplicate_period", rules.duplicate_period.policy, pl.col(_CONFLICT), pl.col(_CONFLICT_WHY)),
    ]
    outcome = run_checks(work, checks, source)
    columns = FUNDAMENTAL_SCHEMA.names
    outcome.accepted = outcome.accepted.select(columns).sort(SORT_KEY, maintain_order=True)
    outcome.quarantined = outcome.quarantined.select(*columns, "ts", "rule", "reason").sort(
        SORT_KEY, maintain_order=True
    )
    outcome.duplicates_dropped = duplicates
    if outcome.counters["rows_in"] != rows_in:  # conservation is an invariant, never a warning
        raise AssertionError(f"{source}: row conservation broken: {rows_in} in, {outcome.counters}")
    return outcome
