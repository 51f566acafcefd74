"""Canonical schemas shared by every vendor (DESIGN.md section 5)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("timeframe", pa.string(), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64(), nullable=True),
        pa.field("trades", pa.int64(), nullable=True),
        pa.field("vendor", pa.string(), nullable=False),
        pa.field("imputed", pa.bool_(), nullable=False),
    ]
)
BAR_COLUMNS = BAR_SCHEMA.names
PRICE_COLUMNS = ("open", "high", "low", "close")

# Rows the validation stage rejects carry these two extra columns in the quarantine dataset.
QUARANTINE_SCHEMA = BAR_SCHEMA.append(pa.field("rule", pa.string())).append(pa.field("reason", pa.string()))


def empty_bars() -> pd.DataFrame:
    """An empty frame with the canonical bar columns and dtypes."""
    return BAR_SCHEMA.empty_table().to_pandas()


def conform_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Return `df` with exactly the canonical columns, order and dtypes (ts as UTC nanoseconds).

    Raises KeyError naming the missing columns.
    """
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"bars are missing canonical columns {missing}")
    out = df[BAR_COLUMNS].copy()
    ts = pd.to_datetime(out["ts"], utc=True)
    out["ts"] = ts.astype("datetime64[ns, UTC]")
    for c in (*PRICE_COLUMNS, "volume", "vwap"):
        out[c] = out[c].astype("float64")
    out["trades"] = out["trades"].astype("Int64")
    out["imputed"] = out["imputed"].astype(bool)
    for c in ("symbol", "timeframe", "vendor"):
        out[c] = out[c].astype(str)
    return out.reset_index(drop=True)


def bars_to_table(df: pd.DataFrame) -> pa.Table:
    """Canonical frame to an Arrow table with the exact BAR_SCHEMA."""
    return pa.Table.from_pandas(conform_bars(df), schema=BAR_SCHEMA, preserve_index=False)
