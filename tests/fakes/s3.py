"""A local S3 server and deterministic Polygon flat files, for tests and benchmarks.

Flat files (no server needed)::

    files = make_flat_files([date(2024, 1, 2), date(2024, 1, 3)], ["AAPL", "MSFT"], "1min",
                            seed=7, bad_rows=3, truncate=[date(2024, 1, 3)])
    files.write_local(tmp_path)          # <root>/us_stocks_sip/minute_aggs_v1/2024/01/2024-01-02.csv.gz ...
    files.bars                           # expected canonical bars (BAR_SCHEMA, polars) of every good row
    files[date(2024, 1, 2)].bad_lines    # 1-based CSV lines of the injected bad rows
    files[date(2024, 1, 2)].key          # the object key, as `flat_file_key` builds it

Each file holds `minutes` regular-session bars (09:30 ET on) per ticker for "1min", one bar per ticker
at 00:00 ET for "1d" (Polygon's convention), rows sorted by ticker then window_start, in Polygon's
column order `ticker,volume,open,close,high,low,window_start,transactions`. Values depend only on
(seed, day, timeframe, tickers). `bad_rows=k` replaces k rows per file with broken ones, cycling through
`BAD_ROW_KINDS`; `truncate` cuts the gzip of those days in half (a corrupt download).

S3 (moto's threaded server on 127.0.0.1, a free port, bucket `flatfiles` created)::

    with fake_s3() as s3:
        s3.upload(files)                       # or s3.put(key, data)
        monkeypatch.setenv(...)                # s3.env() gives POLYGON_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY
        FlatFileSource("s3://flatfiles", endpoint_url=s3.endpoint_url)
        with s3.enforce_auth():                # moto checks keys: unknown ones get InvalidAccessKeyId
            ...

Public names: `make_flat_file` / `make_flat_files` (→ `FlatFile` / `FlatFiles`), `aggs_frame` (the typed
rows of one day), `expected_bars` (typed rows → canonical bars, written apart from the parser),
`BAD_ROW_KINDS`, `fake_s3` (→ `FakeS3`: endpoint_url, bucket, client(), env(), put(), upload(),
enforce_auth()).

In a pytest module, wrap it in a fixture: `@pytest.fixture(scope="module") def s3(): with fake_s3() as s:
yield s`. The server's moto state is process-wide: `fake_s3` resets it on exit.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from quanto.data.flatfiles import VENDOR, flat_file_key
from quanto.data.schemas import BAR_SCHEMA, conform

BUCKET = "flatfiles"
FILE_COLUMNS = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
# Broken rows, in the order bad_rows cycles through them: (kind, field, what the row holds).
BAD_ROW_KINDS = (
    ("not_a_number", "close", "abc"),
    ("empty", "volume", ""),
    ("not_an_integer", "window_start", "2024-01-02T09:30"),
    ("short_line", None, "first 5 fields only"),
    ("not_a_number", "open", "1.2.3"),
    ("fractional", "transactions", "7.5"),
)
_ET = ZoneInfo("America/New_York")
_NS = 1_000_000_000


@dataclass(frozen=True)
class FlatFile:
    """One generated day file: its key, gzip bytes and what a correct parser must make of it."""

    day: dt.date
    timeframe: str
    key: str
    data: bytes  # gzip bytes as published (cut in half when truncated)
    bars: pl.DataFrame  # canonical bars of the good rows
    bad_lines: list[int]  # 1-based CSV lines (header = 1) of injected bad rows
    rows: int  # data rows in the CSV, bad ones included
    truncated: bool
    csv_bytes: int  # decompressed size


@dataclass
class FlatFiles:
    """Generated files of one timeframe, by day."""

    files: dict[dt.date, FlatFile] = field(default_factory=dict)

    def __getitem__(self, day: dt.date) -> FlatFile:
        return self.files[day]

    def __iter__(self) -> Iterator[FlatFile]:
        return iter(self.files.values())

    @property
    def bars(self) -> pl.DataFrame:
        """Expected canonical bars of every good row of every file that is not truncated."""
        frames = [f.bars for f in self if not f.truncated]
        return (
            pl.concat(frames) if frames else conform(pl.from_arrow(BAR_SCHEMA.empty_table()), BAR_SCHEMA, "")
        )

    def write_local(self, root: str | Path) -> Path:
        """Write every file under `root` with the bucket's key layout; returns `root`."""
        root = Path(root)
        for f in self:
            path = root / f.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f.data)
        return root


def _session_open_ns(day: dt.date, timeframe: str) -> int:
    """window_start of the day's first bar: 09:30 ET for minutes, 00:00 ET for days."""
    t = dt.time(9, 30) if timeframe == "1min" else dt.time(0, 0)
    return int(dt.datetime.combine(day, t, tzinfo=_ET).timestamp()) * _NS


def aggs_frame(
    day: dt.date,
    tickers: Sequence[str],
    timeframe: Literal["1min", "1d"],
    *,
    seed: int = 7,
    minutes: int = 390,
) -> pl.DataFrame:
    """Typed flat-file rows (FILE_COLUMNS order) of one day: a seeded random walk per ticker."""
    n_bars = minutes if timeframe == "1min" else 1
    shape = (len(tickers), n_bars)
    rng = np.random.default_rng([seed, day.toordinal(), 0 if timeframe == "1min" else 1])
    base = rng.uniform(5.0, 500.0, size=(len(tickers), 1))
    step = 0.001 if timeframe == "1min" else 0.02
    path = base * np.exp(np.cumsum(rng.normal(0.0, step, size=(shape[0], shape[1] + 1)), axis=1))
    path = np.round(path, 4)  # Polygon ships at most 4 decimals
    open_, close = path[:, :-1], path[:, 1:]
    wick = np.round(np.abs(rng.normal(0.0, step / 2, size=shape)) * open_, 4)
    high = np.maximum(open_, close) + wick
    low = np.maximum(np.minimum(open_, close) - wick, 0.0001)
    volume = rng.integers(100, 50_000, size=shape)
    transactions = rng.integers(1, 500, size=shape)
    offsets = np.arange(n_bars, dtype=np.int64) * 60 * _NS
    window_start = _session_open_ns(day, timeframe) + np.broadcast_to(offsets, shape)
    return pl.DataFrame(
        {
            "ticker": np.repeat(np.asarray(tickers, dtype=object), n_bars),
            "volume": volume.ravel(),
            "open": open_.ravel(),
            "close": close.ravel(),
            "high": np.round(high, 4).ravel(),
            "low": np.round(low, 4).ravel(),
            "window_start": window_start.ravel(),
            "transactions": transactions.ravel(),
        },
        schema={
            "ticker": pl.String,
            "volume": pl.Int64,
            "open": pl.Float64,
            "close": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "window_start": pl.Int64,
            "transactions": pl.Int64,
        },
    )


def expected_bars(rows: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Canonical bars a correct parser makes of typed flat-file rows (written independently of it)."""
    frame = rows.select(
        symbol=pl.col("ticker"),
        ts=pl.from_epoch("window_start", time_unit="ns").dt.replace_time_zone("UTC"),
        timeframe=pl.lit(timeframe),
        open="open",
        high="high",
        low="low",
        close="close",
        volume=pl.col("volume").cast(pl.Float64),
        vwap=pl.lit(None, dtype=pl.Float64),
        trades="transactions",
        vendor=pl.lit(VENDOR),
        imputed=pl.lit(False),
    )
    return conform(frame, BAR_SCHEMA, "expected")


def _break_rows(csv: str, n_rows: int, bad_rows: int, rng: np.random.Generator) -> tuple[str, list[int]]:
    """Replace `bad_rows` data rows of `csv` with broken ones (BAD_ROW_KINDS in turn)."""
    lines = csv.split("\n")
    picks = sorted(rng.choice(n_rows, size=min(bad_rows, n_rows), replace=False).tolist())
    for i, row in enumerate(picks):
        kind, column, value = BAD_ROW_KINDS[i % len(BAD_ROW_KINDS)]
        fields = lines[row + 1].split(",")
        if kind == "short_line":
            fields = fields[:5]
        else:
            fields[FILE_COLUMNS.index(column)] = value
        lines[row + 1] = ",".join(fields)
    return "\n".join(lines), [row + 2 for row in picks]


def make_flat_file(
    day: dt.date,
    tickers: Sequence[str],
    timeframe: Literal["1min", "1d"] = "1min",
    *,
    seed: int = 7,
    bad_rows: int = 0,
    truncate: bool = False,
    minutes: int = 390,
    compresslevel: int = 6,
    prefix: str = "us_stocks_sip",
) -> FlatFile:
    """One day's flat file (see the module docstring)."""
    rows = aggs_frame(day, sorted(tickers), timeframe, seed=seed, minutes=minutes)
    csv = rows.write_csv()
    bad_lines: list[int] = []
    if bad_rows:
        rng = np.random.default_rng([seed, day.toordinal(), 99])
        csv, bad_lines = _break_rows(csv, len(rows), bad_rows, rng)
    raw = csv.encode()
    data = gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    if truncate:
        data = data[: len(data) // 2]
    good = rows.filter(~pl.int_range(pl.len()).is_in([line - 2 for line in bad_lines]))
    return FlatFile(
        day=day,
        timeframe=timeframe,
        key=flat_file_key(timeframe, day, prefix),
        data=data,
        bars=expected_bars(good, timeframe),
        bad_lines=bad_lines,
        rows=len(rows),
        truncated=truncate,
        csv_bytes=len(raw),
    )


def make_flat_files(
    days: Iterable[dt.date],
    tickers: Sequence[str],
    timeframe: Literal["1min", "1d"] = "1min",
    *,
    seed: int = 7,
    bad_rows: int = 0,
    truncate: Iterable[dt.date] = (),
    minutes: int = 390,
    prefix: str = "us_stocks_sip",
) -> FlatFiles:
    """Flat files of `timeframe` for each of `days` (see the module docstring)."""
    cut = set(truncate)
    return FlatFiles(
        {
            day: make_flat_file(
                day,
                tickers,
                timeframe,
                seed=seed,
                bad_rows=bad_rows,
                truncate=day in cut,
                minutes=minutes,
                prefix=prefix,
            )
            for day in days
        }
    )


@dataclass(frozen=True)
class FakeS3:
    """A running moto S3 server with one bucket. Any key pair is accepted unless `enforce_auth` is on."""

    endpoint_url: str
    bucket: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    def client(self) -> Any:
        """A boto3 S3 client for the server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def env(self) -> dict[str, str]:
        """Environment variables FlatFileSource reads its credentials from."""
        return {
            "POLYGON_S3_ACCESS_KEY_ID": self.access_key_id,
            "POLYGON_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def put(self, key: str, data: bytes) -> None:
        """Store one object in the bucket."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def upload(self, files: FlatFiles | Iterable[FlatFile], root_prefix: str = "") -> None:
        """Store flat files under their keys (below `root_prefix`, if given)."""
        client = self.client()
        for f in files:
            key = f"{root_prefix.strip('/')}/{f.key}" if root_prefix.strip("/") else f.key
            client.put_object(Bucket=self.bucket, Key=key, Body=f.data)

    def _set_auth_count(self, count: str) -> None:
        # text/plain: werkzeug would swallow a form-encoded body, and moto reads the raw body.
        req = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            json.load(resp)

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Make moto check access keys (against its IAM, where no user exists) while inside."""
        self._set_auth_count("0")
        try:
            yield
        finally:
            self._set_auth_count("inf")


@contextmanager
def fake_s3(bucket: str = BUCKET) -> Iterator[FakeS3]:
    """Start moto's ThreadedMotoServer on 127.0.0.1 (free port), create `bucket`, stop it on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = FakeS3(endpoint_url=f"http://{host}:{port}", bucket=bucket)
    try:
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        try:  # drop the buckets: moto's state outlives the server, in this process
            reset = urllib.request.Request(f"{s3.endpoint_url}/moto-api/reset", method="POST")
            urllib.request.urlopen(reset, timeout=10).close()
        finally:
            server.stop()
