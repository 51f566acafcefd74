"""Users' own CSV / Parquet bar files: column mapping, time zones, DST, ts_is=close, quarantine."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from quanto.data.files import CorruptGzipError, FileImportSpec, ImportedFile, gunzip, import_files
from quanto.data.schemas import BAR_SCHEMA, polars_schema
from quanto.errors import InputError

UTC = dt.UTC
MAPPING = {"ts": "time", "open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}


def spec(path: Path | str, **kw: Any) -> FileImportSpec:
    base: dict[str, Any] = {
        "paths": [str(path)],
        "columns": MAPPING,
        "symbol": "ABC",
        "timezone": "America/New_York",
        "timeframe": "1min",
    }
    return FileImportSpec(**(base | kw))


def one(spec_: FileImportSpec) -> ImportedFile:
    [imported] = import_files(spec_)
    assert imported.rows_in == len(imported.bars) + len(imported.quarantine)  # conservation
    assert imported.bars.schema == polars_schema(BAR_SCHEMA)
    return imported


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_mapped_csv_with_symbol_column_naive_new_york_to_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bars.csv",
        "sym,time,o,h,l,c,v,n,avg\n"
        "AAPL,2024-01-02 09:30:00,10,11,9,10.5,1000,12,10.2\n"
        "AAPL,2024-07-01 09:30,20,21,19,20.5,2000,,\n",
    )
    columns = MAPPING | {"symbol": "sym", "trades": "n", "vwap": "avg"}
    got = one(spec(path, columns=columns, symbol=None, vendor="mybroker"))
    assert got.bars["ts"].to_list() == [utc(2024, 1, 2, 14, 30), utc(2024, 7, 1, 13, 30)]  # EST, then EDT
    assert got.bars.select("symbol", "open", "close", "volume", "vwap", "trades", "vendor").rows() == [
        ("AAPL", 10.0, 10.5, 1000.0, 10.2, 12, "mybroker"),
        ("AAPL", 20.0, 20.5, 2000.0, None, None, "mybroker"),
    ]
    assert got.bars["imputed"].to_list() == [False, False]
    assert got.path == str(path)


def test_dst_gap_and_overlap_are_quarantined_not_guessed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dst.csv",
        "time,o,h,l,c,v\n"
        "2024-03-10 01:59,1,1,1,1,1\n"
        "2024-03-10 02:30,1,1,1,1,1\n"  # spring forward: 02:00-02:59 does not exist
        "2024-03-10 03:00,1,1,1,1,1\n"
        "2024-11-03 00:59,1,1,1,1,1\n"
        "2024-11-03 01:30,1,1,1,1,1\n"  # fall back: 01:00-01:59 happens twice
        "2024-11-03 02:00,1,1,1,1,1\n",
    )
    got = one(spec(path))
    assert got.bars["ts"].to_list() == [
        utc(2024, 3, 10, 6, 59),
        utc(2024, 3, 10, 7, 0),
        utc(2024, 11, 3, 4, 59),
        utc(2024, 11, 3, 7, 0),
    ]
    assert got.quarantine.select("line", "raw", "reason").rows() == [
        (
            3,
            "2024-03-10 02:30,1,1,1,1,1",
            "time: '2024-03-10 02:30' does not exist in America/New_York (skipped by a daylight-saving change)",
        ),
        (
            6,
            "2024-11-03 01:30,1,1,1,1,1",
            "time: '2024-11-03 01:30' is ambiguous in America/New_York (occurs twice when daylight saving ends)",
        ),
    ]


def test_aware_timestamps_are_converted_whatever_the_timezone(tmp_path: Path) -> None:
    path = write(tmp_path, "aware.csv", "time,o,h,l,c,v\n2024-11-03T01:30:00-04:00,1,1,1,1,1\n")
    assert one(spec(path, timezone="Asia/Tokyo")).bars["ts"].to_list() == [utc(2024, 11, 3, 5, 30)]


@pytest.mark.parametrize(("timeframe", "minutes"), [("1min", 1), ("5min", 5), ("15min", 15), ("1h", 60)])
def test_ts_is_close_shifts_to_the_open(tmp_path: Path, timeframe: str, minutes: int) -> None:
    path = write(tmp_path, "close.csv", "time,o,h,l,c,v\n2024-01-02 10:00,1,1,1,1,1\n")
    got = one(spec(path, timeframe=timeframe, ts_is="close"))
    assert got.bars["ts"].to_list() == [utc(2024, 1, 2, 15, 0) - dt.timedelta(minutes=minutes)]
    assert got.bars["timeframe"].to_list() == [timeframe]


def test_missing_mapped_column_names_file_column_and_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "nohigh.csv", "time,o,l,c,v\n2024-01-02 10:00,1,1,1,1\n")
    with pytest.raises(InputError) as err:
        import_files(spec(path))
    assert str(err.value) == (
        f"{path}: column 'h' (mapped to high) not found; the file has columns ['time', 'o', 'l', 'c', 'v']"
    )


def test_yahoo_daily_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "SPY.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2024-01-02,472.16,473.67,470.49,472.65,466.64,123623700\n"
        "2024-01-03,470.43,471.19,468.17,468.79,462.83,103585900\n"
        "2024-01-04,null,null,null,null,null,null\n"
        "2024-07-01,545.63,545.88,542.52,545.34,541.01,40297800\n",
    )
    yahoo = {"ts": "Date", "open": "Open", "high": "High", "low": "Low", "close": "Close", "volume": "Volume"}
    got = one(spec(path, columns=yahoo, symbol="SPY", timeframe="1d"))
    # A date alone is midnight in the file's time zone.
    assert got.bars["ts"].to_list() == [utc(2024, 1, 2, 5), utc(2024, 1, 3, 5), utc(2024, 7, 1, 4)]
    assert got.bars.select("symbol", "open", "high", "low", "close", "volume").row(0) == (
        "SPY",
        472.16,
        473.67,
        470.49,
        472.65,
        123623700.0,
    )
    assert got.quarantine.select("line", "reason").rows() == [
        (
            4,
            "Open: 'null' is not a number; High: 'null' is not a number; Low: 'null' is not a number; "
            "Close: 'null' is not a number; Volume: 'null' is not a number",
        )
    ]


def test_bad_numbers_and_timestamps_are_quarantined_with_exact_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.csv",
        "time,o,h,l,c,v,note\n"
        '2024-01-02 09:30,1,2,0.5,1.5,100,"multi\nline note"\n'
        "2024-01-02 09:31,1,2,0.5,abc,100,\n"
        "01/02/2024 09:32,1,2,0.5,1.5,100,\n"  # not ISO: not guessed (day/month order is unknowable)
        "2024-01-02 09:33,1,2,0.5,1.5,,\n",
    )
    got = one(spec(path))
    assert len(got.bars) == 1
    assert got.quarantine.select("line", "raw", "reason").rows() == [
        (4, "2024-01-02 09:31,1,2,0.5,abc,100,", "c: 'abc' is not a number"),
        (
            5,
            "01/02/2024 09:32,1,2,0.5,1.5,100,",
            "time: '01/02/2024 09:32' is not an ISO 8601 timestamp (or set ts_format)",
        ),
        (6, "2024-01-02 09:33,1,2,0.5,1.5,,", "v: empty"),
    ]
    assert got.quarantine["source"].unique().to_list() == [str(path)]


def test_ts_format_and_unix_epochs(tmp_path: Path) -> None:
    path = write(
        tmp_path, "us.csv", "time,o,h,l,c,v\n01/02/2024 09:30,1,1,1,1,1\n13/02/2024 09:30,1,1,1,1,1\n"
    )
    got = one(spec(path, ts_format="%m/%d/%Y %H:%M"))
    assert got.bars["ts"].to_list() == [utc(2024, 1, 2, 14, 30)]
    assert got.quarantine["reason"].to_list() == [
        "time: '13/02/2024 09:30' is not a timestamp in format '%m/%d/%Y %H:%M'"
    ]
    epoch = write(tmp_path, "epoch.csv", "time,o,h,l,c,v\n1704205800,1,1,1,1,1\n")
    assert one(spec(epoch, ts_format="unix_s")).bars["ts"].to_list() == [utc(2024, 1, 2, 14, 30)]


def test_parquet_input_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "bars.parquet"
    pl.DataFrame(
        {
            "time": [
                dt.datetime(2024, 1, 2, 9, 30),
                dt.datetime(2024, 1, 2, 9, 31),
                dt.datetime(2024, 3, 10, 2, 30),
            ],
            "o": [1.0, 2.0, 3.0],
            "h": [1.5, 2.5, 3.5],
            "l": [0.5, 1.5, 2.5],
            "c": [1.2, None, 3.2],
            "v": [100, 200, 300],
            "n": [3.0, 4.0, 5.0],
        }
    ).write_parquet(path)
    got = one(spec(path, columns=MAPPING | {"trades": "n"}))
    assert got.bars.select("ts", "close", "volume", "trades").rows() == [
        (utc(2024, 1, 2, 14, 30), 1.2, 100.0, 3)
    ]
    assert got.quarantine.select("line", "reason").rows() == [
        (2, "c: null"),
        (
            3,
            "time: '2024-03-10 02:30:00' does not exist in America/New_York (skipped by a daylight-saving change)",
        ),
    ]
    assert got.quarantine["raw"][0] == (
        '{"time": "2024-01-02 09:31:00", "o": 2.0, "h": 2.5, "l": 1.5, "c": null, "v": 200, "n": 4.0}'
    )


def test_parquet_with_aware_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "aware.parquet"
    ts = pl.Series([dt.datetime(2024, 1, 2, 9, 30)]).dt.replace_time_zone("America/New_York")
    pl.DataFrame({"time": ts, "o": [1.0], "h": [1.0], "l": [1.0], "c": [1.0], "v": [1.0]}).write_parquet(path)
    assert one(spec(path, timezone="UTC")).bars["ts"].to_list() == [utc(2024, 1, 2, 14, 30)]


def test_globs_gzip_and_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "b.csv", "time,o,h,l,c,v\n2024-01-02 09:31,1,1,1,1,1\n")
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"time,o,h,l,c,v\n2024-01-02 09:30,1,1,1,1,1\n"))
    got = import_files(spec(tmp_path / "**" / "*.csv*"))
    assert [Path(f.path).name for f in got] == ["a.csv.gz", "b.csv"]
    assert [f.bars["ts"][0] for f in got] == [utc(2024, 1, 2, 14, 30), utc(2024, 1, 2, 14, 31)]
    relative = import_files(spec("sub/*.csv"), base_dir=tmp_path)
    assert [Path(f.path).name for f in relative] == ["b.csv"]


def test_no_match_names_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no file matches '.*nothing-\*\.csv'"):
        import_files(spec(tmp_path / "nothing-*.csv"))


def test_separator_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_bytes(b"\xef\xbb\xbftime;o;h;l;c;v\n2024-01-02 09:30;1;1;1;1;1\n")
    assert len(one(spec(path, csv_separator=";")).bars) == 1


def test_spec_validation() -> None:
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        spec("x.csv", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="exactly one of"):
        spec("x.csv", columns=MAPPING | {"symbol": "sym"})
    with pytest.raises(ValidationError, match="exactly one of"):
        spec("x.csv", symbol=None)
    with pytest.raises(ValidationError, match=r"must map \['volume'\]"):
        spec("x.csv", columns={k: v for k, v in MAPPING.items() if k != "volume"})
    with pytest.raises(ValidationError, match="unknown canonical column"):
        spec("x.csv", columns=MAPPING | {"adj_close": "Adj Close"})
    with pytest.raises(ValidationError, match="intraday"):
        spec("x.csv", timeframe="1d", ts_is="close")
    with pytest.raises(ValidationError, match="extra"):
        FileImportSpec.model_validate(spec("x.csv").model_dump() | {"sep": ";"})


def test_padded_symbols_are_stripped_and_empty_ones_quarantined(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pad.csv",
        "sym,time,o,h,l,c,v\n AAPL ,2024-01-02 09:30,1,1,1,1,1\n,2024-01-02 09:31,1,1,1,1,1\n",
    )
    got = one(spec(path, columns=MAPPING | {"symbol": "sym"}, symbol=None))
    assert got.bars["symbol"].to_list() == ["AAPL"]
    assert got.quarantine.select("line", "reason").rows() == [(3, "sym: empty")]


def test_gunzip_members_truncation_and_trailing_garbage() -> None:
    a, b = gzip.compress(b"time,o\n", mtime=0), gzip.compress(b"1,2\n", mtime=0)
    assert gunzip(a + b) == b"time,o\n1,2\n"
    with pytest.raises(CorruptGzipError, match="truncated"):
        gunzip(a[:-6])
    with pytest.raises(CorruptGzipError, match="damaged"):
        gunzip(a + b"\x1f\x8bgarbage")
    with pytest.raises(CorruptGzipError, match="not gzip"):
        gunzip(b"time,o\n")


def test_corrupt_gzip_user_file_is_input_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress(b"time,o,h,l,c,v\n" + b"2024-01-02 09:30,1,1,1,1,1\n" * 1000)[:-20])
    with pytest.raises(InputError, match=r"cut\.csv\.gz: gzip stream is truncated"):
        import_files(spec(path))
