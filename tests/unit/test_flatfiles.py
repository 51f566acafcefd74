"""Polygon flat files: keys, local and S3 sources, parsing with quarantine, parallel reads."""

from __future__ import annotations

import datetime as dt
import gzip
import warnings
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quanto.data.flatfiles import (
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    CorruptFlatFileError,
    FlatFileFetchError,
    FlatFileNotFoundError,
    FlatFileSource,
    S3Credentials,
    flat_file_key,
    parse_aggs,
    read_days,
)
from quanto.data.schemas import BAR_SCHEMA, SchemaError, polars_schema
from quanto.errors import InputError
from tests.fakes.s3 import FakeS3, FlatFiles, fake_s3, make_flat_file, make_flat_files

TICKERS = ["AAPL", "MSFT", "NVDA", "SPY"]
DAYS = [dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)]
HEADER = "ticker,volume,open,close,high,low,window_start,transactions"


def gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


@pytest.fixture(scope="module")
def s3() -> FakeS3:
    with fake_s3() as server:
        yield server


@pytest.fixture(scope="module")
def minute_files() -> FlatFiles:
    return make_flat_files(DAYS, TICKERS, "1min", seed=3, minutes=30)


@pytest.fixture
def s3_env(s3: FakeS3, monkeypatch: pytest.MonkeyPatch) -> FakeS3:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def test_flat_file_key_layout() -> None:
    day = dt.date(2024, 3, 8)
    assert flat_file_key("1min", day) == "us_stocks_sip/minute_aggs_v1/2024/03/2024-03-08.csv.gz"
    assert flat_file_key("1d", day) == "us_stocks_sip/day_aggs_v1/2024/03/2024-03-08.csv.gz"
    assert (
        flat_file_key("1d", day, "us_options_opra") == "us_options_opra/day_aggs_v1/2024/03/2024-03-08.csv.gz"
    )
    with pytest.raises(InputError, match="5min"):
        flat_file_key("5min", day)  # type: ignore[arg-type]


def test_window_start_nanoseconds_become_exact_utc_ts() -> None:
    data = gz(f"{HEADER}\nAAPL,1200,185.5,185.61,185.7,185.4,1704205800000000001,17\n")
    parsed = parse_aggs(data, "1min", source="t.csv.gz")
    bars = parsed.bars
    assert bars.schema == polars_schema(BAR_SCHEMA)
    assert bars["ts"].dt.epoch("ns").to_list() == [1704205800000000001]
    assert bars["ts"][0].isoformat() == "2024-01-02T14:30:00+00:00"  # 09:30 ET; the 1 ns is below µs
    row = bars.row(0, named=True)
    assert (row["open"], row["high"], row["low"], row["close"]) == (185.5, 185.7, 185.4, 185.61)
    assert (row["volume"], row["trades"], row["vwap"]) == (1200.0, 17, None)
    assert (row["symbol"], row["timeframe"], row["vendor"], row["imputed"]) == (
        "AAPL",
        "1min",
        "polygon",
        False,
    )
    assert (parsed.rows_in, parsed.rows_filtered, parsed.quarantine.height) == (1, 0, 0)
    assert parsed.bytes_decompressed == len(HEADER) + 1 + len(
        "AAPL,1200,185.5,185.61,185.7,185.4,1704205800000000001,17\n"
    )


def test_day_aggs_parse_to_daily_bars() -> None:
    f = make_flat_file(DAYS[0], TICKERS, "1d", seed=1)
    parsed = parse_aggs(f.data, "1d", source=f.key)
    assert_frame_equal(parsed.bars, f.bars)
    assert parsed.bars["timeframe"].unique().to_list() == ["1d"]
    # Polygon stamps day aggregates at 00:00 New York time of the session.
    assert parsed.bars["ts"].dt.convert_time_zone("America/New_York").dt.hour().unique().to_list() == [0]


def test_local_and_s3_roots_give_identical_frames(
    tmp_path: Path, s3_env: FakeS3, minute_files: FlatFiles
) -> None:
    minute_files.write_local(tmp_path)
    s3_env.upload(minute_files, root_prefix="mirror")
    local = FlatFileSource(str(tmp_path))
    remote = FlatFileSource(f"s3://{s3_env.bucket}/mirror", endpoint_url=s3_env.endpoint_url)
    got_local = dict(read_days(local, DAYS, "1min"))
    got_s3 = dict(read_days(remote, DAYS, "1min"))
    assert list(got_local) == list(got_s3) == DAYS
    for day in DAYS:
        assert_frame_equal(got_local[day].bars, got_s3[day].bars)
        assert_frame_equal(got_local[day].bars, minute_files[day].bars)
        assert got_local[day].rows_in == got_s3[day].rows_in == len(TICKERS) * 30
    assert remote.exists(minute_files[DAYS[0]].key)
    assert remote.location(minute_files[DAYS[0]].key).startswith("s3://flatfiles/mirror/us_stocks_sip/")


def test_symbols_filter_keeps_only_those_and_counts_the_rest(minute_files: FlatFiles) -> None:
    f = minute_files[DAYS[1]]
    parsed = parse_aggs(f.data, "1min", source=f.key, symbols={"MSFT", "SPY", "NOPE"})
    assert sorted(parsed.bars["symbol"].unique()) == ["MSFT", "SPY"]
    assert_frame_equal(parsed.bars, f.bars.filter(pl.col("symbol").is_in(["MSFT", "SPY"])))
    assert parsed.rows_filtered == 2 * 30
    assert parsed.rows_in == len(parsed.bars) + len(parsed.quarantine) + parsed.rows_filtered


def test_bad_rows_are_quarantined_with_line_and_reason() -> None:
    f = make_flat_file(DAYS[0], TICKERS, "1min", seed=5, minutes=20, bad_rows=6)
    parsed = parse_aggs(f.data, "1min", source=f.key)
    q = parsed.quarantine
    assert q["line"].to_list() == f.bad_lines
    assert q["source"].unique().to_list() == [f.key]
    lines = gzip.decompress(f.data).decode().split("\n")
    assert q["raw"].to_list() == [lines[n - 1] for n in f.bad_lines]  # line 1 = header
    assert q["reason"].to_list() == [
        "close: 'abc' is not a number",
        "volume: empty",
        "window_start: '2024-01-02T09:30' is not an integer (Unix ns since 1970)",
        f"has 5 fields, expected 8 ({HEADER})",
        "open: '1.2.3' is not a number",
        "transactions: '7.5' is not an integer",
    ]
    assert_frame_equal(parsed.bars, f.bars)
    assert parsed.rows_in == f.rows == len(parsed.bars) + len(q) + parsed.rows_filtered


def test_quarantine_keeps_line_numbers_when_filtering_symbols() -> None:
    f = make_flat_file(DAYS[0], TICKERS, "1min", seed=5, minutes=20, bad_rows=6)
    text = gzip.decompress(f.data).decode().split("\n")
    wanted = {text[n - 1].split(",")[0] for n in f.bad_lines[:2]}
    parsed = parse_aggs(f.data, "1min", source=f.key, symbols=wanted)
    expected_lines = [n for n in f.bad_lines if text[n - 1].split(",")[0] in wanted]
    assert parsed.quarantine["line"].to_list() == expected_lines
    assert parsed.quarantine["raw"].to_list() == [text[n - 1] for n in expected_lines]
    assert parsed.rows_in == len(parsed.bars) + len(parsed.quarantine) + parsed.rows_filtered


def test_blank_long_and_padded_lines() -> None:
    data = gz(
        f"{HEADER}\n"
        "AAPL,1,2,2,2,2,1704205800000000000,1\n"
        "\n"
        "AAPL,1,2,2,2,2,1704205860000000000,1,extra\n"
        "AAPL, 1 ,2,2,2,2,1704205920000000000,\n"
    )
    parsed = parse_aggs(data, "1min", source="x")
    assert parsed.quarantine.select("line", "reason").rows() == [
        (3, "blank line"),
        (4, f"has 9 fields, expected 8 ({HEADER})"),
    ]
    # Spaces around a number are tolerated; an empty transactions count is a null trades value.
    assert parsed.bars.select("volume", "trades").rows() == [(1.0, 1), (1.0, None)]
    assert parsed.rows_in == 4


def test_truncated_gzip_raises_corrupt_error_naming_the_key(tmp_path: Path) -> None:
    files = make_flat_files(DAYS, TICKERS, "1min", minutes=10, truncate=[DAYS[1]])
    files.write_local(tmp_path)
    source = FlatFileSource(str(tmp_path))
    seen: list[dt.date] = []
    days = read_days(source, DAYS, "1min", on_file=lambda day, _: seen.append(day))
    assert next(days)[0] == DAYS[0]
    with pytest.raises(CorruptFlatFileError, match="truncated") as err:
        next(days)
    assert files[DAYS[1]].key in str(err.value)
    assert not isinstance(err.value, InputError)  # retryable: a new download usually fixes it
    assert seen == [DAYS[0]]


def test_damaged_gzip_checksum_is_corrupt() -> None:
    data = bytearray(gz(f"{HEADER}\nAAPL,1,2,2,2,2,1704205800000000000,1\n"))
    data[-8] ^= 0xFF  # the CRC in the gzip trailer
    with pytest.raises(CorruptFlatFileError, match="k.csv.gz"):
        parse_aggs(bytes(data), "1min", source="k.csv.gz")
    with pytest.raises(CorruptFlatFileError, match="not gzip"):
        parse_aggs(b"ticker,volume\n", "1min", source="k.csv.gz")


def test_missing_column_is_a_schema_error() -> None:
    data = gz("ticker,volume,open,close,high,low,window_start\nAAPL,1,2,2,2,2,1704205800000000000\n")
    with pytest.raises(SchemaError, match=r"x.csv.gz: flat file lacks column\(s\) \['transactions'\]"):
        parse_aggs(data, "1min", source="x.csv.gz")


def test_missing_key_names_root_and_key(tmp_path: Path, s3_env: FakeS3) -> None:
    key = flat_file_key("1min", dt.date(2024, 1, 6))
    for source in (
        FlatFileSource(str(tmp_path)),
        FlatFileSource(f"s3://{s3_env.bucket}", endpoint_url=s3_env.endpoint_url),
    ):
        assert not source.exists(key)
        with pytest.raises(FlatFileNotFoundError) as err:
            source.read_bytes(key)
        assert isinstance(err.value, FileNotFoundError)
        assert source.root in str(err.value) and key in str(err.value)


def test_available_days_skips_weekends_and_holidays(tmp_path: Path, s3_env: FakeS3) -> None:
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cal = xcals.get_calendar("XNYS", start="2024-01-01", end="2024-03-01")
    sessions = [d.date() for d in cal.sessions_in_range("2024-01-10", "2024-02-06")]
    assert dt.date(2024, 1, 15) not in sessions  # Martin Luther King Jr. Day
    files = make_flat_files(sessions, ["AAPL"], "1d", prefix="avail")
    files.write_local(tmp_path)
    s3_env.upload(files)
    for source in (
        FlatFileSource(str(tmp_path), prefix="avail"),
        FlatFileSource("s3://flatfiles", endpoint_url=s3_env.endpoint_url, prefix="avail"),
    ):
        # [start, end): across a weekend, the holiday and a month boundary.
        got = source.available_days("1d", dt.date(2024, 1, 12), dt.date(2024, 2, 2))
        assert got == [d for d in sessions if dt.date(2024, 1, 12) <= d < dt.date(2024, 2, 2)]
        assert got[:2] == [dt.date(2024, 1, 12), dt.date(2024, 1, 16)]
        assert got[-1] == dt.date(2024, 2, 1)
        assert source.available_days("1min", dt.date(2024, 1, 12), dt.date(2024, 2, 2)) == []


def test_read_days_yields_in_order_and_calls_on_file(tmp_path: Path, minute_files: FlatFiles) -> None:
    minute_files.write_local(tmp_path)
    calls: list[dt.date] = []
    order = list(reversed(DAYS))
    got = [
        day
        for day, parsed in read_days(
            FlatFileSource(str(tmp_path)), order, "1min", workers=3, on_file=lambda d, _: calls.append(d)
        )
    ]
    assert got == calls == order


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACCESS_KEY_ENV, raising=False)
    monkeypatch.setenv(SECRET_KEY_ENV, "s3cr3t-value")
    with pytest.raises(InputError, match=ACCESS_KEY_ENV) as err:
        FlatFileSource("s3://flatfiles")
    assert SECRET_KEY_ENV not in str(err.value) and "s3cr3t-value" not in str(err.value)


def test_refused_credentials_are_input_errors_without_secrets(s3: FakeS3) -> None:
    creds = S3Credentials.from_env({ACCESS_KEY_ENV: "AKIDWRONG", SECRET_KEY_ENV: "very-secret-value"})
    source = FlatFileSource("s3://flatfiles", endpoint_url=s3.endpoint_url, credentials=creds)
    assert "very-secret-value" not in repr(source) + repr(creds)
    with s3.enforce_auth(), pytest.raises(InputError) as err:
        source.read_bytes(flat_file_key("1min", DAYS[0]))
    message = str(err.value)
    assert ACCESS_KEY_ENV in message and SECRET_KEY_ENV in message and "InvalidAccessKeyId" in message
    assert "very-secret-value" not in message and "AKIDWRONG" not in message


def test_unreachable_endpoint_is_retryable() -> None:
    creds = S3Credentials.from_env({ACCESS_KEY_ENV: "a", SECRET_KEY_ENV: "b"})
    source = FlatFileSource(
        "s3://flatfiles",
        endpoint_url="http://127.0.0.1:9",
        credentials=creds,
        max_attempts=1,
        connect_timeout_s=1,
    )
    with pytest.raises(FlatFileFetchError, match="127.0.0.1:9"):
        source.read_bytes(flat_file_key("1min", DAYS[0]))


def test_missing_bucket_is_input_error(s3_env: FakeS3) -> None:
    source = FlatFileSource("s3://no-such-bucket", endpoint_url=s3_env.endpoint_url)
    with pytest.raises(InputError, match="no-such-bucket"):
        source.available_days("1min", DAYS[0], DAYS[-1])


def test_read_days_closed_early_stops_cleanly(tmp_path: Path, minute_files: FlatFiles) -> None:
    minute_files.write_local(tmp_path)
    days = read_days(FlatFileSource(str(tmp_path)), DAYS, "1min", workers=1)
    day, parsed = next(days)
    assert day == DAYS[0] and len(parsed.bars) == len(TICKERS) * 30
    days.close()
    with pytest.raises(StopIteration):
        next(days)
