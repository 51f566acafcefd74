"""Quote and order-book (depth) validation on the shared rule runner.

Order of work: schema check (SchemaError, always fatal) → exact duplicate rows dropped and counted →
rules via `run_checks` → accepted and quarantined rows sorted by (symbol, ts).

Rules (ids = `QuoteRules` field names; reasons name the level and the values):
- `size_nonnegative`: a size is negative, NaN or infinite, or missing where its side has a price;
- `crossed`: bid > ask at some level;
- `levels_ordered` (depth only): bids non-increasing and asks non-decreasing with the level, and each
  side contiguous: a side whose price is null at a level is absent there, and may not reappear deeper
  (so a level with both prices null is allowed only after the last present level);
- `locked`: bid == ask at some level while no level is crossed (a crossed row is reported as crossed).
A quarantined row names the first failing rule in the order price_finite, size_nonnegative, crossed,
levels_ordered.

`price_finite` (a price that is NaN or infinite) is a built-in rule, quarantined by default: such a
price cannot be compared, so crossed/locked/levels_ordered ignore it rather than guess. Its policy
comes from `rules.price_finite` if `QuoteRules` ever grows that field. A null price is not an error:
it means the side is absent (one-sided quote, thin book). pandas input cannot tell NaN from null, so
its NaN prices count as absent.
"""

from __future__ import annotations

import pandas as pd
import polars as pl

from quanto.config.models import QuoteRules
from quanto.data.schemas import QUOTE_SCHEMA, conform, depth_columns, depth_schema
from quanto.validation.checks import Check, ValidationOutcome, run_checks

SORT_KEY = ["symbol", "ts"]

# (label for reasons, bid_px, bid_sz, ask_px, ask_sz) of one book level.
Level = tuple[str, str, str, str, str]


def rule_policies(rules: QuoteRules) -> dict[str, str]:
    """Rule id → policy, for `ValidationOutcome.quality`: the QuoteRules fields, the built-in
    `price_finite` and `duplicate_exact` (always dropped)."""
    return {
        **{name: getattr(rules, name).policy for name in type(rules).model_fields},
        "price_finite": _policy(rules, "price_finite", "quarantine"),
        "duplicate_exact": "drop",
    }


def validate_quotes(
    df: pl.DataFrame | pd.DataFrame, rules: QuoteRules, source: str = "quotes"
) -> ValidationOutcome:
    """Validate top-of-book quotes (QUOTE_SCHEMA) against `rules` (see the module docstring).

    Accepts polars or pandas; returns polars frames. `levels_ordered` does not apply to one level.
    Raises SchemaError on a schema mismatch and ValidationFailed when a `fail` rule finds rows.
    """
    frame = conform(df, QUOTE_SCHEMA, source)
    return _validate_book(frame, rules, [("", "bid_px", "bid_sz", "ask_px", "ask_sz")], source)


def validate_depth(
    df: pl.DataFrame | pd.DataFrame, rules: QuoteRules, levels: int, source: str = "depth"
) -> ValidationOutcome:
    """Validate order-book snapshots with `levels` levels (depth_schema(levels)) against `rules`.

    Accepts polars or pandas; returns polars frames. Reasons name the level, e.g.
    "level 2: bid 10.05 > ask 10.04". Raises SchemaError on a schema mismatch (including a different
    number of levels) and ValidationFailed when a `fail` rule finds rows.
    """
    frame = conform(df, depth_schema(levels), source)
    book = [(f"level {i}: ", *depth_columns(i)) for i in range(1, levels + 1)]
    return _validate_book(frame, rules, book, source)


def _first(cases: list[tuple[pl.Expr, pl.Expr]]) -> tuple[pl.Expr, pl.Expr]:
    """(any case true, the message of the first true case) over (mask, message) pairs."""
    failing = pl.any_horizontal([m.fill_null(False) for m, _ in cases])
    reason = pl.lit(None, pl.String)
    for mask, msg in reversed(cases):
        reason = pl.when(mask.fill_null(False)).then(msg).otherwise(reason)
    return failing, reason


def _finite(col: str) -> pl.Expr:
    # Null (absent) and NaN/inf (caught by price_finite) prices take part in no comparison.
    return pl.col(col).is_finite().fill_null(False)


def _policy(rules: QuoteRules, rule: str, default: str) -> str:
    """The configured policy of `rule`, or `default` for built-in rules QuoteRules does not list."""
    configured = getattr(rules, rule, None)
    return configured.policy if configured is not None else default


def _checks(book: list[Level], rules: QuoteRules) -> list[Check]:
    price_bad, size_bad, crossed, locked, ordered = [], [], [], [], []
    for label, bid, bid_sz, ask, ask_sz in book:
        for side, px, sz in (("bid", bid, bid_sz), ("ask", ask, ask_sz)):
            price_bad.append(
                (
                    pl.col(px).is_not_null() & ~pl.col(px).is_finite(),
                    pl.format(f"{label}{side} price {{}}", pl.col(px)),
                )
            )
            size_bad += [
                (
                    pl.col(sz).is_not_null() & (~pl.col(sz).is_finite() | (pl.col(sz) < 0)),
                    pl.format(f"{label}{side} size {{}} must be finite and >= 0", pl.col(sz)),
                ),
                (
                    pl.col(px).is_not_null() & pl.col(sz).is_null(),
                    pl.format(f"{label}{side} size missing for price {{}}", pl.col(px)),
                ),
            ]
        both = _finite(bid) & _finite(ask)
        crossed.append(
            (both & (pl.col(bid) > pl.col(ask)), pl.format(f"{label}bid {{}} > ask {{}}", bid, ask))
        )
        locked.append(
            (both & (pl.col(bid) == pl.col(ask)), pl.format(f"{label}bid {{}} == ask {{}}", bid, ask))
        )
    for (_, prev_bid, _, prev_ask, _), (label, bid, _, ask, _) in zip(book, book[1:], strict=False):
        prev_level = prev_bid.rsplit("_", 1)[1]
        for side, px, prev, worse in (("bid", bid, prev_bid, pl.Expr.gt), ("ask", ask, prev_ask, pl.Expr.lt)):
            op = ">" if side == "bid" else "<"
            ordered += [
                (
                    _finite(px) & _finite(prev) & worse(pl.col(px), pl.col(prev)),
                    pl.format(f"{label}{side} {{}} {op} level {prev_level} {side} {{}}", px, prev),
                ),
                (
                    pl.col(px).is_not_null() & pl.col(prev).is_null(),
                    pl.format(f"{label}{side} {{}} after empty {side} at level {prev_level}", px),
                ),
            ]
    any_crossed, crossed_why = _first(crossed)
    any_locked, locked_why = _first(locked)
    checks = [
        Check("price_finite", _policy(rules, "price_finite", "quarantine"), *_first(price_bad)),
        Check("size_nonnegative", rules.size_nonnegative.policy, *_first(size_bad)),
        Check("crossed", rules.crossed.policy, any_crossed, crossed_why),
    ]
    if ordered:  # one level (quotes): nothing to order
        checks.append(Check("levels_ordered", rules.levels_ordered.policy, *_first(ordered)))
    checks.append(Check("locked", rules.locked.policy, any_locked & ~any_crossed, locked_why))
    return checks


def _validate_book(
    frame: pl.DataFrame, rules: QuoteRules, book: list[Level], source: str
) -> ValidationOutcome:
    rows_in = frame.height
    # Exact duplicates carry no information: keep the first copy, count the rest.
    frame = frame.unique(maintain_order=True, keep="first").rechunk()  # one chunk: see checks.run_checks
    outcome = run_checks(frame, _checks(book, rules), source)
    outcome.accepted = outcome.accepted.sort(SORT_KEY, maintain_order=True)
    outcome.quarantined = outcome.quarantined.sort(SORT_KEY, maintain_order=True)
    outcome.duplicates_dropped = rows_in - frame.height
    if outcome.counters["rows_in"] != rows_in:  # conservation is an invariant, never a warning
        raise AssertionError(f"{source}: row conservation broken: {rows_in} in, {outcome.counters}")
    return outcome
