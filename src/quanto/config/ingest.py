"""The ingestion job file (configs/ingest.yaml): vendor, dataset, symbols, range, routing and limits.

Base URLs are configurable so the same code talks to a vendor, a proxy or a local test server; keys are
never here: they come from environment variables (DESIGN.md section 6).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from quanto.config.models import RuntimeConfig, Strict, SyntheticSpec, known_timezone, unique_symbols

Vendor = Literal["alpaca", "polygon", "kite", "files", "sample", "synthetic"]
Dataset = Literal[
    "bars",
    "corporate_actions",
    "fundamentals",
    "tickers",
    "instruments",
    "option_bars",
    "option_chain",
]
# Which datasets each vendor can deliver historically (streams add trades, quotes and depth).
VENDOR_DATASETS: dict[str, tuple[str, ...]] = {
    "alpaca": ("bars",),
    "polygon": ("bars", "corporate_actions", "fundamentals", "tickers", "option_bars", "option_chain"),
    "kite": ("bars", "instruments"),
    "files": ("bars",),
    "sample": ("bars",),
    "synthetic": ("bars",),
}
REQUIRED_COLUMNS = ("ts", "open", "high", "low", "close", "volume")  # what a user's bar file must map
OPTIONAL_COLUMNS = ("symbol", "vwap", "trades")


class RestSettings(Strict):
    """HTTP limits of one vendor: a token bucket (rate, burst), concurrent requests and retries."""

    base_url: str | None = Field(None, description="vendor API root; None = the vendor's public URL")
    rate_per_s: float = Field(3.0, gt=0, description="sustained requests per second (token bucket)")
    burst: int = Field(10, ge=1, description="requests allowed at once before the rate applies")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at most")
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(6, ge=1, le=50, description="tries per request on 429, 5xx, timeouts")
    backoff_base_s: float = Field(0.25, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class StreamSettings(Strict):
    """Live updates over the vendor's WebSocket, written in micro-batches; gaps backfilled over REST."""

    enabled: bool = Field(False, description="after the historical range, follow the live stream")
    url: str | None = Field(None, description="WebSocket URL; None = the vendor's public URL")
    channels: list[Literal["bars", "trades", "quotes", "depth"]] = Field(default_factory=lambda: ["bars"])
    flush_rows: int = Field(50_000, ge=1, description="write a micro-batch at this many rows")
    flush_s: float = Field(60.0, gt=0, description="... or when its oldest row is this old")
    duration_s: float | None = Field(
        None, gt=0, description="stop after this long; None = at the end of today's session"
    )
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    backfill: bool = Field(True, description="fetch bars missed during an outage over REST")


class AlpacaSettings(Strict):
    """Alpaca market data v2."""

    feed: Literal["iex", "sip"] = "iex"
    adjustment: Literal["raw", "split", "dividend", "all"] = Field(
        "raw", description="raw keeps the lake unaltered; adjusted views are computed at read time"
    )
    page_limit: int = Field(10_000, ge=1, le=10_000)
    rest: RestSettings = RestSettings(rate_per_s=3.3, burst=10)  # 200 requests/minute on the free plan
    stream: StreamSettings = StreamSettings()


class FlatFileSettings(Strict):
    """Polygon flat files: S3-compatible storage (s3://bucket/prefix + endpoint) or a local folder."""

    root: str = Field("s3://flatfiles", description="s3://bucket or a local folder with the same key layout")
    endpoint_url: str | None = Field("https://files.polygon.io", description="S3 endpoint for s3:// roots")
    prefix: str = Field("us_stocks_sip", description="dataset prefix inside the bucket")
    workers: int = Field(2, ge=1, le=64, description="files downloaded and parsed at once")


class PolygonSettings(Strict):
    """Polygon REST, flat files and stream."""

    adjusted: bool = Field(False, description="False keeps raw bars; adjusted views come from splits")
    rest: RestSettings = RestSettings(rate_per_s=50.0, burst=50, concurrency=16)
    flat_files: FlatFileSettings | None = Field(
        None, description="set to let the router use flat files for large historical ranges"
    )
    stream: StreamSettings = StreamSettings()


class KiteSettings(Strict):
    """Zerodha Kite Connect (historical candles, instruments, ticker)."""

    exchange: str = Field("NSE", description="instrument list to resolve EXCHANGE:SYMBOL tokens from")
    rest: RestSettings = RestSettings(rate_per_s=3.0, burst=3)  # Kite allows 3 historical requests/s
    stream: StreamSettings = StreamSettings()


class FileImportSpec(Strict):
    """Bars from the user's own CSV or Parquet files: which files, which columns, which clock."""

    paths: list[str] = Field(min_length=1, description="files or glob patterns (`**` recurses)")
    format: Literal["csv", "parquet", "auto"] = Field("auto", description="auto: by file suffix")
    columns: dict[str, str] = Field(
        description="canonical column -> the file's column; required: ts, open, high, low, close, volume; "
        "optional: symbol, vwap, trades"
    )
    symbol: str | None = Field(
        None, description="the symbol of every row, when the file has no symbol column"
    )
    timezone: str = Field(
        description="IANA zone of naive timestamps, e.g. America/New_York; aware ones are converted"
    )
    ts_format: str | None = Field(
        None, description="strptime format, or unix_s/unix_ms/unix_us/unix_ns; None = ISO 8601 only"
    )
    timeframe: Literal["1min", "5min", "15min", "1h", "1d"]
    ts_is: Literal["open", "close"] = Field(
        "open", description="what the file's timestamp marks; canonical ts is the bar open"
    )
    vendor: str = "files"
    csv_separator: str = Field(",", min_length=1, max_length=1)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown canonical column(s) {unknown}; map {list(REQUIRED_COLUMNS)} and optionally "
                f"{list(OPTIONAL_COLUMNS)}"
            )
        missing = [c for c in REQUIRED_COLUMNS if c not in v]
        if missing:
            raise ValueError(f"columns must map {missing} to the file's column names")
        return v

    _known_timezone = field_validator("timezone")(lambda cls, v: known_timezone(v))

    @model_validator(mode="after")
    def _consistent(self) -> FileImportSpec:
        if ("symbol" in self.columns) == (self.symbol is not None):
            raise ValueError(
                "set exactly one of columns.symbol (a symbol column) and symbol (one constant symbol)"
            )
        if self.symbol is not None and not self.symbol.strip():
            raise ValueError("symbol must not be empty")
        if self.ts_is == "close" and self.timeframe == "1d":
            raise ValueError(
                "ts_is: close needs an intraday timeframe; daily files are stamped with the session date"
            )
        return self


class RoutingConfig(Strict):
    """How each partition is fetched. `auto`: flat files for large historical ranges when configured,
    REST otherwise; the live stream only follows today's session (`stream.enabled`)."""

    mode: Literal["auto", "rest", "flat_files"] = "auto"
    flat_files_min_symbol_days: int = Field(
        2_000,
        ge=1,
        description="auto: use flat files when symbols x trading days reaches this (one file holds all tickers)",
    )


class PartitionSettings(Strict):
    """Partitioning and fan-out. A partition is (symbol, period) for REST, one trading day for flat files."""

    period: Literal["day", "month", "year"] = "month"
    per_activity: int = Field(8, ge=1, le=1000, description="partitions handled by one activity")
    max_parallel: int = Field(4, ge=1, le=256, description="activities in flight at once")
    batches_per_run: int = Field(
        500,
        ge=1,
        description="activities per workflow run before it continues-as-new (keeps histories small)",
    )


class IngestConfig(Strict):
    """An ingestion job file. `end` is exclusive; None means today, so a nightly run fetches only the new
    dates (partitions already in the lake are skipped, a partial month is topped up)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lake_root: str = Field(
        default_factory=lambda: os.environ.get("QUANTO_LAKE_ROOT", ".quanto/lake"),
        description="lake folder; default $QUANTO_LAKE_ROOT or .quanto/lake",
    )
    vendor: Vendor
    dataset: Dataset = "bars"
    symbols: list[str] = Field(default_factory=list, description="canonical symbols (Kite: EXCHANGE:SYMBOL)")
    timeframe: Literal["1min", "5min", "15min", "1h", "1d"] = "1d"
    start: dt.date
    end: dt.date | None = None
    calendar: str = Field("XNYS", description="exchange_calendars code: trading days and sessions")
    empty_settle_days: int = Field(
        5, ge=0, description="an empty answer about the last N days is asked again on the next run"
    )
    alpaca: AlpacaSettings = AlpacaSettings()
    polygon: PolygonSettings = PolygonSettings()
    kite: KiteSettings = KiteSettings()
    files: FileImportSpec | None = Field(None, description="vendor files: paths, format, columns, timezone")
    synthetic: SyntheticSpec = SyntheticSpec()
    routing: RoutingConfig = RoutingConfig()
    partitions: PartitionSettings = PartitionSettings()
    runtime: RuntimeConfig = RuntimeConfig()

    _unique_symbols = field_validator("symbols")(lambda cls, v: unique_symbols(v))

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if self.dataset not in VENDOR_DATASETS[self.vendor]:
            raise ValueError(
                f"vendor {self.vendor!r} has no dataset {self.dataset!r}; it has {list(VENDOR_DATASETS[self.vendor])}"
            )
        needs_symbols = self.vendor != "files" and self.dataset not in ("tickers", "instruments")
        flat = self.vendor == "polygon" and self.polygon.flat_files is not None
        if needs_symbols and not self.symbols and not (flat and self.dataset == "bars"):
            raise ValueError(f"symbols: vendor {self.vendor!r} dataset {self.dataset!r} needs symbols")
        if self.vendor == "files" and self.files is None:
            raise ValueError("files: vendor 'files' needs a files section (paths, columns, timezone)")
        if self.vendor == "kite" and self.calendar == "XNYS":
            raise ValueError("calendar: Kite instruments trade on Indian exchanges; set calendar: XBOM")
        if self.vendor == "synthetic" and self.timeframe != "1min":
            raise ValueError("the synthetic vendor generates 1min bars; set timeframe: 1min")
        if self.routing.mode == "flat_files" and not flat:
            raise ValueError("routing.mode flat_files needs polygon.flat_files (vendor polygon)")
        return self

    def stream(self) -> StreamSettings:
        """The stream settings of the job's vendor (disabled for vendors without a stream)."""
        settings = {"alpaca": self.alpaca, "polygon": self.polygon, "kite": self.kite}.get(self.vendor)
        return settings.stream if settings is not None else StreamSettings()

    def rest(self) -> RestSettings:
        """The REST limits of the job's vendor."""
        settings = {"alpaca": self.alpaca, "polygon": self.polygon, "kite": self.kite}.get(self.vendor)
        return settings.rest if settings is not None else RestSettings()

    def resolved_end(self, today: dt.date) -> dt.date:
        """The exclusive end date: `end`, or today when unset (today's bars belong to the stream)."""
        return self.end or today

    def request_hash(self, today: dt.date) -> str:
        """SHA-256 of what the job fetches (runtime timing and lake location excluded)."""
        payload = self.model_dump(mode="json", exclude={"runtime", "lake_root", "name", "partitions"})
        payload["end"] = self.resolved_end(today).isoformat()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def workflow_id(self, today: dt.date) -> str:
        """Business key: ingest-<name>-<hash8 of dataset and range> (DESIGN.md section 4)."""
        return f"ingest-{self.name}-{self.request_hash(today)[:8]}"
