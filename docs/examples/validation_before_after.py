"""Print the before/after example of docs/validation.md (run: .venv/bin/python docs/examples/validation_before_after.py).

Synthetic minute bars with injected faults go through the validate stage's logic: what comes in,
what is quarantined and why, what is repaired, and the audit trail of every imputed value.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from quanto.config.models import SyntheticSpec, ValidationConfig
from quanto.data.synthetic import generate_minute_bars_with_faults
from quanto.validation.stage import validate_and_repair


def table(df: pl.DataFrame) -> str:
    """A frame as a Markdown table."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    spec = SyntheticSpec(seed=21, bad_tick_rate=0.02)
    bars, faults = generate_minute_bars_with_faults(["DEMO"], dt.date(2024, 3, 5), dt.date(2024, 3, 6), spec)
    bronze = pl.from_pandas(bars)
    merged, silver, audit, gaps = validate_and_repair(bronze, "1min", ValidationConfig(), "example")
    # A 6-minute window around the first bad tick that was quarantined.
    first = merged.quarantined["ts"].min()
    lo, hi = first - dt.timedelta(minutes=2), first + dt.timedelta(minutes=3)

    def window(df: pl.DataFrame) -> pl.DataFrame:
        return df.filter(pl.col("ts").is_between(lo, hi))

    cols = ["ts", "open", "high", "low", "close", "volume"]
    print("### Before: bronze (as the vendor delivered)\n")
    print(table(window(bronze).select(cols).with_columns(pl.col(pl.Float64).round(4))))
    print("\n### Quarantined, with rule and reason\n")
    print(table(window(merged.quarantined).select("ts", "rule", "reason")))
    print("\n### After: silver (validated and repaired)\n")
    print(table(window(silver).select([*cols, "imputed"]).with_columns(pl.col(pl.Float64).round(4))))
    print("\n### Imputation audit (one row per imputed value)\n")
    print(table(window(audit).with_columns(pl.col(pl.Float64).round(4))))
    print("\n### Counts for the whole day\n")
    print(table(pl.DataFrame([merged.counters])))


if __name__ == "__main__":
    main()
