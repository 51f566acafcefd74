"""Bar validation: schema, UTC timestamps, ordering, duplicates, OHLC sanity and volume.

Every row ends in exactly one place — accepted, quarantined (with rule id and reason) or dropped as an
exact duplicate — and the counts are checked: rows_in = accepted + quarantined + duplicates_dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from quanto.data.schemas import BAR_COLUMNS, BAR_SCHEMA, conform_bars
from quanto.errors import InputError

KEY = ["symbol", "timeframe", "ts"]
EXAMPLES_PER_RULE = 3


class SchemaMismatch(InputError):
    """Input bars whose columns or types do not match the canonical schema."""


@dataclass
class ValidationOutcome:
    """The split of one batch of bars and what the rules found."""

    accepted: pd.DataFrame
    quarantined: pd.DataFrame  # canonical columns + rule + reason
    duplicates_dropped: int
    out_of_order: int
    quality: list[dict] = field(default_factory=list)  # {symbol, rule, count, example}

    @property
    def counters(self) -> dict[str, int]:
        """Row counts of the outcome."""
        return {
            "rows_in": len(self.accepted) + len(self.quarantined) + self.duplicates_dropped,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "duplicates_dropped": self.duplicates_dropped,
            "out_of_order": self.out_of_order,
        }


def check_schema(df: pd.DataFrame, source: str = "bars") -> None:
    """Raise SchemaMismatch naming the column, expected type and found type."""
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaMismatch(f"{source}: missing column(s) {missing}; expected {BAR_COLUMNS}")
    extra = [c for c in df.columns if c not in BAR_COLUMNS]
    if extra:
        raise SchemaMismatch(f"{source}: unexpected column(s) {extra}")
    for f in BAR_SCHEMA:
        col = df[f.name]
        if pa.types.is_timestamp(f.type):
            ok = isinstance(col.dtype, pd.DatetimeTZDtype)
            if ok and str(col.dt.tz) != "UTC":
                raise SchemaMismatch(f"{source}: column 'ts' must be UTC, found timezone {col.dt.tz}")
        elif pa.types.is_floating(f.type) or pa.types.is_integer(f.type):
            ok = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        elif pa.types.is_boolean(f.type):
            ok = pd.api.types.is_bool_dtype(col)
        else:
            ok = pd.api.types.is_string_dtype(col) or col.dtype == object
        if not ok:
            raise SchemaMismatch(f"{source}: column '{f.name}' expected {f.type}, found {col.dtype}")


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _rule_masks(df: pd.DataFrame) -> list[tuple[str, np.ndarray, pd.Series]]:
    """(rule id, failing mask, reason per row) for the row-level rules, in priority order."""
    o, h, lo, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    prices = np.column_stack([o, h, lo, c])
    rules: list[tuple[str, np.ndarray, pd.Series]] = []

    bad_ts = df["ts"].isna().to_numpy()
    rules.append(("ts_missing", bad_ts, pd.Series("timestamp is missing", index=df.index)))

    nonfinite = ~np.isfinite(prices).all(axis=1)
    rules.append(("price_not_finite", nonfinite, pd.Series("a price is NaN or infinite", index=df.index)))

    nonpos = (prices <= 0).any(axis=1) & ~nonfinite
    reason = "prices must be > 0: open=" + df["open"].map(_fmt) + " high=" + df["high"].map(_fmt)
    reason += " low=" + df["low"].map(_fmt) + " close=" + df["close"].map(_fmt)
    rules.append(("price_positive", nonpos, reason))

    hi_bad = h < np.maximum(o, c)
    rules.append(
        (
            "ohlc_high",
            hi_bad,
            "high "
            + df["high"].map(_fmt)
            + " < max(open, close) "
            + pd.Series(np.maximum(o, c), index=df.index).map(_fmt),
        )
    )
    lo_bad = lo > np.minimum(o, c)
    rules.append(
        (
            "ohlc_low",
            lo_bad,
            "low "
            + df["low"].map(_fmt)
            + " > min(open, close) "
            + pd.Series(np.minimum(o, c), index=df.index).map(_fmt),
        )
    )
    vol_bad = ~np.isfinite(v) | (v < 0)
    rules.append(("volume_nonnegative", vol_bad, "volume must be >= 0, got " + df["volume"].map(_fmt)))
    return rules


def validate_bars(df: pd.DataFrame, source: str = "bars") -> ValidationOutcome:
    """Split canonical bars into accepted, quarantined and exact duplicates (see module docstring)."""
    check_schema(df, source)
    rows_in = len(df)
    df = conform_bars(df)

    # Exact duplicates carry no information: drop and count them (keep the first copy).
    exact = df.duplicated(keep="first")
    duplicates_dropped = int(exact.sum())
    df = df[~exact]

    # Conflicting duplicates (same key, different values): no way to know which is right → quarantine all.
    conflict = df.duplicated(KEY, keep=False).to_numpy()
    rule = np.full(len(df), None, dtype=object)
    reason = np.full(len(df), None, dtype=object)
    rule[conflict] = "duplicate_conflict"
    reason[conflict] = "several rows share (symbol, timeframe, ts) with different values"
    for rule_id, mask, why in _rule_masks(df):
        take = mask & (rule == None)  # noqa: E711 — first failing rule wins
        rule[take] = rule_id
        reason[take] = why.to_numpy()[take]
    bad = rule != None  # noqa: E711

    quarantined = df[bad].copy()
    quarantined["rule"] = rule[bad].astype(str)
    quarantined["reason"] = reason[bad].astype(str)
    accepted = df[~bad]

    # Strictly increasing per (symbol, timeframe): count rows that arrived out of order, then sort.
    ts_i8 = accepted["ts"].astype("int64")
    prev_same = accepted["symbol"].eq(accepted["symbol"].shift()) & accepted["timeframe"].eq(
        accepted["timeframe"].shift()
    )
    out_of_order = int((prev_same & (ts_i8.diff() <= 0)).sum())
    accepted = accepted.sort_values(KEY, kind="stable").reset_index(drop=True)

    outcome = ValidationOutcome(
        accepted=accepted,
        quarantined=quarantined.reset_index(drop=True),
        duplicates_dropped=duplicates_dropped,
        out_of_order=out_of_order,
    )
    outcome.quality = quality_rows(outcome)
    counted = outcome.counters["rows_in"]
    if counted != rows_in:  # conservation is a hard invariant, never a warning
        raise AssertionError(f"{source}: row conservation broken: {rows_in} in, {counted} accounted for")
    return outcome


def quality_rows(outcome: ValidationOutcome) -> list[dict]:
    """Counts per (symbol, rule) with a few example reasons; duplicates and ordering included."""
    rows: list[dict] = []
    q = outcome.quarantined
    if len(q):
        for (symbol, rule), grp in q.groupby(["symbol", "rule"], sort=True):
            examples = [f"{ts:%Y-%m-%d %H:%M} {r}" for ts, r in zip(grp["ts"], grp["reason"], strict=True)]
            rows.append(
                {
                    "symbol": symbol,
                    "rule": rule,
                    "count": len(grp),
                    "example": "; ".join(examples[:EXAMPLES_PER_RULE]),
                }
            )
    if outcome.duplicates_dropped:
        rows.append(
            {"symbol": "*", "rule": "duplicate_exact", "count": outcome.duplicates_dropped, "example": ""}
        )
    if outcome.out_of_order:
        rows.append(
            {"symbol": "*", "rule": "out_of_order", "count": outcome.out_of_order, "example": "sorted"}
        )
    return rows
