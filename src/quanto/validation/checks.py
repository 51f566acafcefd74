"""The rule runner shared by every dataset (bars, quotes, depth, fundamentals), in polars.

A dataset's rules are `Check`s: a rule id, its policy, a boolean polars expression that is true on
failing rows, and an expression for the reason (evaluated on failing rows only, so valid data pays
nothing for string formatting). `run_checks` splits a frame:
- `quarantine` rows leave the frame (first failing quarantine rule wins) with rule + reason;
- `warn` rows stay and are listed in `flags`;
- `fail` raises ValidationFailed naming the rule, the count and examples.
Rows are conserved: rows in = accepted + quarantined (+ exact duplicates, counted by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from quanto.errors import InputError

EXAMPLES_PER_RULE = 3


class ValidationFailed(InputError):
    """A rule with policy `fail` found rows; the message names the rule, count and examples."""


@dataclass(frozen=True)
class Check:
    """One rule: `failing` is true on rows that break it; `reason` says why (for those rows)."""

    rule: str
    policy: str  # warn | quarantine | fail
    failing: pl.Expr
    reason: pl.Expr


@dataclass
class ValidationOutcome:
    """The split of one dataset by its rules."""

    accepted: pl.DataFrame
    quarantined: pl.DataFrame  # the dataset's columns + rule + reason
    flags: pl.DataFrame  # symbol, ts, rule, reason — warnings on rows that were kept
    duplicates_dropped: int = 0
    extra_counters: dict[str, int] = field(default_factory=dict)

    @property
    def counters(self) -> dict[str, int]:
        """Row counts; rows_in = accepted + quarantined + duplicates_dropped always holds."""
        return {
            "rows_in": self.accepted.height + self.quarantined.height + self.duplicates_dropped,
            "accepted": self.accepted.height,
            "quarantined": self.quarantined.height,
            "duplicates_dropped": self.duplicates_dropped,
            "flagged": self.flags.height,
            **self.extra_counters,
        }

    def quality(self, policies: dict[str, str]) -> list[dict]:
        """Counts per (symbol, rule) with a few examples, for quarantined rows and flags."""
        rows: list[dict] = []
        for frame, default in ((self.quarantined, "quarantine"), (self.flags, "warn")):
            if frame.height == 0:
                continue
            grouped = (
                frame.sort("ts")
                .group_by(["symbol", "rule"], maintain_order=True)
                .agg(
                    pl.len().alias("count"),
                    pl.col("ts").head(EXAMPLES_PER_RULE),
                    pl.col("reason").head(EXAMPLES_PER_RULE),
                )
                .sort(["symbol", "rule"])
            )
            for r in grouped.iter_rows(named=True):
                example = "; ".join(
                    f"{_fmt_ts(t)} {why}" for t, why in zip(r["ts"], r["reason"], strict=True)
                )
                rows.append(
                    {
                        "symbol": r["symbol"],
                        "rule": r["rule"],
                        "policy": policies.get(r["rule"], default),
                        "count": int(r["count"]),
                        "example": example,
                    }
                )
        return rows


def _fmt_ts(ts) -> str:
    return ts.strftime("%Y-%m-%d %H:%M") if hasattr(ts, "strftime") else str(ts)


def empty_flags() -> pl.DataFrame:
    """A flags frame with no rows."""
    return pl.DataFrame(
        schema={"symbol": pl.String, "ts": pl.Datetime("ns", "UTC"), "rule": pl.String, "reason": pl.String}
    )


def run_checks(df: pl.DataFrame, checks: list[Check], source: str) -> ValidationOutcome:
    """Apply `checks` to `df` (see the module docstring). `df` must have `symbol` and `ts` columns."""
    if not checks or df.height == 0:
        return ValidationOutcome(
            df,
            df.clear().with_columns(rule=pl.lit(None, pl.String), reason=pl.lit(None, pl.String)),
            empty_flags(),
        )
    masks = df.select([c.failing.fill_null(False).alias(f"__{i}") for i, c in enumerate(checks)])
    for i, c in enumerate(checks):
        if c.policy != "fail":
            continue
        hit = masks[f"__{i}"]
        if hit.any():
            bad = df.filter(hit).head(EXAMPLES_PER_RULE).rechunk().with_columns(c.reason.alias("__why"))
            examples = "; ".join(
                f"{r['symbol']} {_fmt_ts(r['ts'])}: {r['__why']}" for r in bad.iter_rows(named=True)
            )
            raise ValidationFailed(
                f"{source}: rule {c.rule!r} (policy fail) failed on {int(hit.sum())} row(s), e.g. {examples}"
            )
    # The first quarantine rule that fails names the row's rule.
    quarantine = [(i, c) for i, c in enumerate(checks) if c.policy == "quarantine"]
    rule_expr = pl.lit(None, pl.String)
    reason_expr = pl.lit(None, pl.String)
    for i, c in reversed(quarantine):
        rule_expr = pl.when(pl.col(f"__{i}")).then(pl.lit(c.rule)).otherwise(rule_expr)
        reason_expr = pl.when(pl.col(f"__{i}")).then(c.reason).otherwise(reason_expr)
    tagged = pl.concat([df, masks], how="horizontal")
    any_q = pl.any_horizontal([pl.col(f"__{i}") for i, _ in quarantine]) if quarantine else pl.lit(False)
    tagged = tagged.with_columns(__q=any_q)
    # Reasons are computed on filtered rows; rechunk first: polars 2.1 panics in pl.format/str ops on a
    # column whose chunks include an empty one (e.g. a shift() helper column after a filter).
    bad = tagged.filter(pl.col("__q")).rechunk()
    quarantined = bad.with_columns(rule=rule_expr, reason=reason_expr).select([*df.columns, "rule", "reason"])
    kept = tagged.filter(~pl.col("__q"))
    flag_parts = [
        kept.filter(pl.col(f"__{i}"))
        .rechunk()
        .select("symbol", "ts", pl.lit(c.rule).alias("rule"), c.reason.cast(pl.String).alias("reason"))
        for i, c in enumerate(checks)
        if c.policy == "warn"
    ]
    flags = pl.concat([empty_flags(), *[f.cast(empty_flags().schema) for f in flag_parts]])
    accepted = kept.select(df.columns)
    if accepted.height + quarantined.height != df.height:  # conservation is an invariant, never a warning
        raise AssertionError(
            f"{source}: row conservation broken: {df.height} in, {accepted.height + quarantined.height} out"
        )
    return ValidationOutcome(accepted, quarantined, flags)
