"""Polygon flat files: daily gzip CSVs of minute and day aggregates on S3-compatible storage.

Layout (endpoint https://files.polygon.io, bucket `flatfiles`)::

    us_stocks_sip/minute_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz
    us_stocks_sip/day_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz

with columns `ticker,volume,open,close,high,low,window_start,transactions`; window_start is the bar's
open in Unix nanoseconds (day aggregates: 00:00 America/New_York of the session). A day without a file
was not a trading day.

`FlatFileSource` reads from a local mirror (same key layout below a folder) or from S3 (credentials
from POLYGON_S3_ACCESS_KEY_ID / POLYGON_S3_SECRET_ACCESS_KEY, a key pair separate from the REST API
key). `parse_aggs` turns one file into canonical bars plus the rows it could not parse; `read_days`
does many days in parallel threads (zlib and polars release the GIL) and yields them in order.

Errors: a missing key is `FlatFileNotFoundError` (a FileNotFoundError); a damaged download is
`CorruptFlatFileError` and any other S3 failure `FlatFileFetchError` (both retryable); refused
credentials, a missing bucket or an unexpected header are InputError (retrying cannot fix them).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, SecretStr

from quanto.data.files import (
    ColumnRule,
    CorruptGzipError,
    TextTable,
    is_gzip,
    parse_columns,
    parse_text_table,
)
from quanto.data.schemas import BAR_SCHEMA, SchemaError, conform
from quanto.errors import InputError

VENDOR = "polygon"
POLYGON_S3_ENDPOINT = "https://files.polygon.io"
ACCESS_KEY_ENV = "POLYGON_S3_ACCESS_KEY_ID"
SECRET_KEY_ENV = "POLYGON_S3_SECRET_ACCESS_KEY"
DEFAULT_PREFIX = "us_stocks_sip"
FILE_COLUMNS = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
DATASETS = {"1min": "minute_aggs_v1", "1d": "day_aggs_v1"}
# The fast typed read of clean files; any file it cannot read cleanly is re-read as text.
FILE_DTYPES = {
    "ticker": pl.String,
    **dict.fromkeys(("volume", "open", "close", "high", "low"), pl.Float64),
    "window_start": pl.Int64,
    "transactions": pl.Int64,
}
# Canonical column <- flat-file column. Transactions may be empty (trades is nullable); nothing else may.
RULES = [
    ColumnRule("symbol", "ticker", "text"),
    *(ColumnRule(c, c, "number") for c in ("open", "high", "low", "close", "volume")),
    ColumnRule("ts", "window_start", "epoch_ns"),
    ColumnRule("trades", "transactions", "integer", required=False),
]
REQUIRED = [r.name for r in RULES if r.required]

FlatTimeframe = Literal["1min", "1d"]

# S3 error codes, by what the caller can do about them.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})


class FlatFileNotFoundError(FileNotFoundError):
    """No file at this key: the day was not a trading day, or is not published yet."""

    def __init__(self, root: str, key: str) -> None:
        super().__init__(f"{root}: no flat file at key {key!r}")
        self.root, self.key = root, key


class CorruptFlatFileError(Exception):
    """A flat file whose gzip is truncated or damaged; downloading it again usually fixes it (retryable)."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: corrupt flat file ({detail}); downloading it again usually fixes this")
        self.source, self.detail = source, detail


class FlatFileFetchError(Exception):
    """A transient S3 failure (network, throttling, server error); retryable."""


def flat_file_key(timeframe: FlatTimeframe, day: dt.date, prefix: str = DEFAULT_PREFIX) -> str:
    """The object key of one day's file, e.g. us_stocks_sip/minute_aggs_v1/2024/01/2024-01-02.csv.gz."""
    return f"{prefix}/{_dataset(timeframe)}/{day:%Y}/{day:%m}/{day:%Y-%m-%d}.csv.gz"


def _dataset(timeframe: str) -> str:
    if timeframe not in DATASETS:
        raise InputError(f"timeframe: flat files have {list(DATASETS)}, not {timeframe!r}")
    return DATASETS[timeframe]


class S3Credentials(BaseModel):
    """Polygon's flat-file key pair. Held as SecretStr: repr, logs and errors never show the values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    access_key_id: SecretStr
    secret_access_key: SecretStr

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Credentials:
        """Read POLYGON_S3_ACCESS_KEY_ID and POLYGON_S3_SECRET_ACCESS_KEY; InputError names the unset ones."""
        env = os.environ if environ is None else environ
        missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not env.get(name)]
        if missing:
            raise InputError(
                f"flat files on S3 need {' and '.join(missing)} in the environment (Polygon dashboard → "
                f"Flat Files: an access key id and secret separate from the REST API key)"
            )
        return cls(
            access_key_id=SecretStr(env[ACCESS_KEY_ENV]), secret_access_key=SecretStr(env[SECRET_KEY_ENV])
        )


class FlatFileSource:
    """Where flat files are read from: a local folder, or `s3://bucket[/prefix]` at `endpoint_url`.

    Keys are relative to the root (`flat_file_key` builds them); `prefix` is the data set folder
    (us_stocks_sip). For S3, credentials default to `S3Credentials.from_env()`. The boto3 client is
    shared by threads (boto3 clients are thread-safe); `max_connections` should cover read_days' workers.
    """

    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str = POLYGON_S3_ENDPOINT,
        credentials: S3Credentials | None = None,
        prefix: str = DEFAULT_PREFIX,
        region: str = "us-east-1",
        max_connections: int = 10,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        self.root = root
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client: Any = None
        if root.startswith("s3://"):
            bucket, _, base = root.removeprefix("s3://").partition("/")
            if not bucket:
                raise InputError(f"flat files root {root!r}: expected s3://bucket[/prefix]")
            self.bucket, self._base = bucket, base.strip("/")
            creds = credentials if credentials is not None else S3Credentials.from_env()
            from botocore.exceptions import BotoCoreError, ClientError

            self._boto_errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
            self._client = _s3_client(
                endpoint_url, creds, region, max_connections, connect_timeout_s, read_timeout_s, max_attempts
            )
        else:
            self._folder = Path(root.removeprefix("file://")).expanduser()

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.is_s3 else ""
        return f"FlatFileSource({self.root!r}{where}, prefix={self.prefix!r})"

    @property
    def is_s3(self) -> bool:
        """True when the root is an S3 bucket."""
        return self._client is not None

    def key(self, timeframe: FlatTimeframe, day: dt.date) -> str:
        """This source's key of one day's file."""
        return flat_file_key(timeframe, day, self.prefix)

    def location(self, key: str) -> str:
        """A readable name of `key` under this root (used in errors and quarantine rows)."""
        return f"s3://{self._object(key)}" if self.is_s3 else str(self._folder / key)

    def _object(self, key: str) -> str:
        return f"{self.bucket}/{self._s3_key(key)}"

    def _s3_key(self, key: str) -> str:
        return f"{self._base}/{key}" if self._base else key

    def exists(self, key: str) -> bool:
        """Whether a file exists at `key`."""
        if not self.is_s3:
            return (self._folder / key).is_file()
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._s3_key(key))
        except self._boto_errors as e:
            if _error_code(e) in _MISSING_CODES:
                return False
            raise self._translate(e, key) from e
        return True

    def read_bytes(self, key: str) -> bytes:
        """The file's bytes (gzip). FlatFileNotFoundError when there is none."""
        if not self.is_s3:
            try:
                return (self._folder / key).read_bytes()
            except FileNotFoundError as e:
                raise FlatFileNotFoundError(self.root, key) from e
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._s3_key(key))
            return resp["Body"].read()
        except self._boto_errors as e:
            raise self._translate(e, key) from e

    def available_days(self, timeframe: FlatTimeframe, start: dt.date, end: dt.date) -> list[dt.date]:
        """Days in [start, end) that have a file, sorted. Non-trading days simply have none."""
        dataset = _dataset(timeframe)
        days: list[dt.date] = []
        for year, month in _months(start, end):
            folder = f"{self.prefix}/{dataset}/{year:04d}/{month:02d}/"
            for name in self._list_names(folder):
                day = _day_of(name)
                if day is not None and start <= day < end:
                    days.append(day)
        return sorted(set(days))

    def _list_names(self, folder: str) -> list[str]:
        """File names directly inside `folder` (a key prefix ending in '/')."""
        if not self.is_s3:
            path = self._folder / folder
            return [p.name for p in path.iterdir() if p.is_file()] if path.is_dir() else []
        names = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._s3_key(folder)
            )
            for page in pages:
                names += [obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", [])]
        except self._boto_errors as e:
            raise self._translate(e, folder) from e
        return names

    def _translate(self, err: Exception, key: str) -> Exception:
        """The project's error for a botocore error (never with credentials in the message): missing,
        refused (InputError), or anything else as retryable FlatFileFetchError."""
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        code = _error_code(err)
        if code in _MISSING_CODES:
            return FlatFileNotFoundError(self.root, key)
        if code in _AUTH_CODES or isinstance(err, NoCredentialsError | PartialCredentialsError):
            return InputError(
                f"{self.endpoint_url} refused the flat-file credentials ({code or type(err).__name__}) "
                f"reading {self.location(key)}: check {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}, and that "
                f"your plan includes flat files"
            )
        if code in _NO_BUCKET_CODES:
            return InputError(
                f"{self.endpoint_url}: bucket {self.bucket!r} does not exist (root {self.root!r})"
            )
        return FlatFileFetchError(f"reading {self.location(key)} from {self.endpoint_url} failed: {err}")


def _s3_client(
    endpoint_url: str,
    creds: S3Credentials,
    region: str,
    max_connections: int,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_attempts: int,
) -> Any:
    import boto3  # deferred: costs ~0.3 s and local roots never need it
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=creds.access_key_id.get_secret_value(),
        aws_secret_access_key=creds.secret_access_key.get_secret_value(),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},  # files.polygon.io serves the bucket as a path
            max_pool_connections=max_connections,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        ),
    )


def _error_code(err: Exception) -> str | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "") or None
    return None


def _months(start: dt.date, end: dt.date) -> Iterator[tuple[int, int]]:
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month) and dt.date(year, month, 1) < end:
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _day_of(name: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(name.removesuffix(".csv.gz")) if name.endswith(".csv.gz") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ParsedFile:
    """One flat file parsed. Conservation: rows_in == len(bars) + len(quarantine) + rows_filtered."""

    bars: pl.DataFrame  # BAR_SCHEMA, file order (ticker, then window_start)
    quarantine: pl.DataFrame  # PARSE_QUARANTINE_SCHEMA: source, line (1-based, header = 1), raw, reason
    rows_in: int  # data rows in the CSV
    rows_filtered: int  # rows of tickers outside `symbols`
    bytes_decompressed: int  # CSV size (for a clean file, from the gzip trailer: exact below 4 GiB)


def parse_aggs(
    data: bytes, timeframe: FlatTimeframe, *, source: str, symbols: set[str] | None = None
) -> ParsedFile:
    """Canonical bars (vendor polygon, vwap null, trades = transactions) of one gzip flat file.

    Rows that do not parse go to quarantine with their line and a reason naming the field and value.
    With `symbols`, only those tickers are kept (the rest are counted in rows_filtered, and not checked).
    Raises CorruptFlatFileError when the gzip is damaged, SchemaError when a column is missing.
    """
    _dataset(timeframe)
    if not is_gzip(data):
        raise CorruptFlatFileError(source, f"not gzip data (starts with {data[:8]!r})")
    try:
        table = TextTable.read(data, source, dtypes=FILE_DTYPES, required=REQUIRED)
    except CorruptGzipError as e:
        raise CorruptFlatFileError(source, str(e)) from e
    missing = [c for c in FILE_COLUMNS if c not in table.columns]
    if missing:
        raise SchemaError(f"{source}: flat file lacks column(s) {missing}; its header is {table.columns}")
    if symbols is not None:
        table = table.filter(table.frame["ticker"].is_in(sorted(symbols)))
    frame = table.frame
    fields = parse_columns(frame, RULES)
    good, quarantine = parse_text_table(table, fields, source)
    bars = conform(
        good.select(
            "symbol",
            "ts",
            timeframe=pl.lit(timeframe),
            open="open",
            high="high",
            low="low",
            close="close",
            volume="volume",
            vwap=pl.lit(None, dtype=pl.Float64),
            trades="trades",
            vendor=pl.lit(VENDOR),
            imputed=pl.lit(False),
        ),
        BAR_SCHEMA,
        source,
    )
    return ParsedFile(bars, quarantine, table.records, table.records - frame.height, table.text_bytes)


def read_days(
    source: FlatFileSource,
    days: list[dt.date],
    timeframe: FlatTimeframe,
    *,
    symbols: set[str] | None = None,
    workers: int = 2,
    on_file: Callable[[dt.date, ParsedFile], None] | None = None,
) -> Iterator[tuple[dt.date, ParsedFile]]:
    """Download and parse `days` with `workers` threads; yield (day, ParsedFile) in the order of `days`.

    At most `workers` files are in flight (memory stays bounded: one day of minute aggregates is a few
    hundred MB once parsed). `on_file`, when given, is called with each result just before it is yielded
    (in order, on the caller's thread). The first failing day raises its error when its turn comes;
    closing the iterator early cancels the days not started.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")

    def load(day: dt.date) -> ParsedFile:
        key = source.key(timeframe, day)
        return parse_aggs(source.read_bytes(key), timeframe, source=source.location(key), symbols=symbols)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flatfiles")
    try:
        pending: deque[tuple[dt.date, Future[ParsedFile]]] = deque()
        todo = iter(days)
        for day in todo:
            pending.append((day, pool.submit(load, day)))
            if len(pending) >= workers:
                break
        while pending:
            day, future = pending.popleft()
            parsed = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            if on_file is not None:
                on_file(day, parsed)
            yield day, parsed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
