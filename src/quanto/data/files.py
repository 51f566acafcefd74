"""Users' own bar files (CSV or Parquet) → canonical bars, plus the text-to-typed parsing shared with
the Polygon flat-file reader (`quanto.data.flatfiles`).

Nothing is guessed and nothing is lost: every data row of a file ends up either in `bars` or in
`quarantine` (source, line, raw, reason), so rows_in == len(bars) + len(quarantine). A reason names the
file's column and the value, e.g. "Close: 'abc' is not a number".

Timestamps:
- `ts_format=None` accepts ISO 8601 only ("2024-01-02", "2024-01-02 09:30", "2024-01-02T09:30:00-05:00"):
  auto-detecting other layouts would read 01/02/2024 as 1 February. Otherwise a strptime format, or
  "unix_s" / "unix_ms" / "unix_us" / "unix_ns" for epoch numbers.
- Naive timestamps are local time in `timezone`; aware ones (an offset in the text, or a zoned Parquet
  column) are converted. A date alone means midnight in `timezone`.
- Daylight saving: a naive local time that does not exist (the spring-forward gap) or exists twice
  (fall-back) is quarantined with a reason rather than shifted or guessed; data stamped in local time
  around those hours is ambiguous by nature, and a wrong guess would misplace a bar by an hour.
- `ts_is="close"`: the file stamps bars with their close; ts becomes the open, ts - timeframe
  (computed in UTC, so a bar that spans a DST change stays its true length).
"""

from __future__ import annotations

import glob
import json
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from quanto.config.ingest import FileImportSpec
from quanto.data.schemas import BAR_SCHEMA, conform
from quanto.errors import InputError

# Rows that could not be parsed at all (before any validation rule could look at them).
PARSE_QUARANTINE_SCHEMA = pl.Schema(
    {"source": pl.String, "line": pl.Int64, "raw": pl.String, "reason": pl.String}
)

TIMEFRAME_DURATIONS = {"1min": "1m", "5min": "5m", "15min": "15m", "1h": "1h", "1d": "1d"}  # polars durations
EPOCH_FORMATS = {"unix_s": "s", "unix_ms": "ms", "unix_us": "us", "unix_ns": "ns"}
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_EXTRA = "__quanto_extra_fields__"  # catches fields beyond the header's count
_ISO_RE = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_LIMIT = 1 << 20  # a header line longer than 1 MB is not a bar file
_MAX_RATIO = 64  # a trailer claiming more than this expansion is not trusted to presize the output

# Per-row problem codes of one field (0 = fine).
OK, EMPTY, INVALID, NONEXISTENT, AMBIGUOUS = 0, 1, 2, 3, 4


# --- text → typed columns, with a reason for every row that does not parse ---


class CorruptGzipError(ValueError):
    """Gzip data that is truncated or damaged (the message says which)."""


def is_gzip(data: bytes) -> bool:
    """Whether `data` starts with the gzip magic bytes."""
    return data[:2] == _GZIP_MAGIC


def gunzip(data: bytes) -> bytes:
    """Decompress gzip data (all members), checking each member's CRC and length.

    Raises CorruptGzipError saying what is wrong (not gzip, truncated, bad checksum).
    """
    if not is_gzip(data):
        raise CorruptGzipError(f"not gzip data (starts with {data[:8]!r})")
    # The trailer's ISIZE presizes the output (saves ~15% over a growing buffer). wbits=31: zlib parses
    # the gzip header and checks CRC and length in C, with the GIL released.
    size = gzip_size(data)
    try:
        out = zlib.decompress(data, wbits=31, bufsize=size if 0 < size <= _MAX_RATIO * len(data) else 1 << 20)
    except zlib.error as e:
        raise _zlib_problem(e) from e
    if len(out) & 0xFFFFFFFF == size:
        return out
    return _gunzip_members(data)


def gzip_size(data: bytes) -> int:
    """Decompressed size from the gzip trailer (ISIZE: the last member's size mod 2**32)."""
    return int.from_bytes(data[-4:], "little")


def _zlib_problem(err: zlib.error) -> CorruptGzipError:
    if "incomplete or truncated" in str(err):
        return CorruptGzipError("gzip stream is truncated (the download ended early)")
    return CorruptGzipError(f"gzip stream is damaged: {err}")


def _gunzip_members(data: bytes) -> bytes:
    """gunzip for several concatenated members (or trailing bytes after the first, an error)."""
    parts = []
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            parts.append(d.decompress(data))
        except zlib.error as e:
            raise _zlib_problem(e) from e
        if not d.eof:
            raise CorruptGzipError("gzip stream is truncated (the download ended early)")
        data = d.unused_data.lstrip(b"\x00")
    return b"".join(parts)


def _first_line(data: bytes) -> bytes:
    """The first line of plain or gzip data (decompressing only what it takes)."""
    if is_gzip(data):
        try:
            data = zlib.decompressobj(wbits=31).decompress(data, _HEADER_LIMIT)
        except zlib.error as e:
            raise _zlib_problem(e) from e
    return data.split(b"\n", 1)[0]


@dataclass(frozen=True)
class FieldResult:
    """One parsed column: typed values (null where empty or unparseable) and a problem code per row."""

    column: str  # canonical output column
    name: str  # the file's column, named in reasons
    raw: pl.Series  # the values as read
    value: pl.Series
    code: pl.Series  # UInt8: OK, EMPTY, INVALID, NONEXISTENT, AMBIGUOUS
    expected: str  # completes "'x' is not ..."
    timezone: str | None = None

    def reason(self, i: int) -> str | None:
        """Why row i of this field is unusable, or None."""
        code = self.code[i]
        if code == OK:
            return None
        if code == EMPTY:
            return f"{self.name}: {'empty' if self.raw.dtype == pl.String else 'null'}"
        value = self.raw[i]
        shown = repr(value if isinstance(value, str) else str(value))  # typed (Parquet) values as text
        if code == NONEXISTENT:
            return f"{self.name}: {shown} does not exist in {self.timezone} (skipped by a daylight-saving change)"
        if code == AMBIGUOUS:
            return f"{self.name}: {shown} is ambiguous in {self.timezone} (occurs twice when daylight saving ends)"
        return f"{self.name}: {shown} is not {self.expected}"


@dataclass(frozen=True)
class ColumnRule:
    """How to parse one column: into `column` (canonical) from the file's column `name`."""

    column: str
    name: str
    kind: Literal["text", "number", "integer", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"]
    required: bool = True


_OPTIONAL_KINDS = {"symbol": "text", "vwap": "number", "trades": "integer"}
_EXPECTED = {"text": "text", "number": "a number", "integer": "an integer"}
_EPOCH_FACTORS = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}


def _whole_floats(values: pl.Expr) -> pl.Expr:
    """Int64 of floats that are whole numbers (exact in float64), else null."""
    whole = values.is_finite() & (values == values.floor()) & (values.abs() < 2.0**53)
    return pl.when(whole).then(values).cast(pl.Int64)


def _value_expr(rule: ColumnRule, dtype: pl.DataType, *, stripped: bool = False) -> pl.Expr:
    """The typed value of a column, null where missing or unparseable."""
    col = pl.col(rule.name)
    if rule.kind == "text":
        text = col.cast(pl.String)
        text = text.str.strip_chars() if stripped else text
        return pl.when(text != "").then(text)
    if stripped and dtype == pl.String:
        col = col.str.strip_chars()
    if rule.kind == "number":
        return col.cast(pl.Float64, strict=False)
    if rule.kind == "integer":
        if dtype.is_float():
            return _whole_floats(col)
        ints = col.cast(pl.Int64, strict=False)
        # "12.0" (pandas exports) is an integer too; "7.5" is not.
        return ints.fill_null(_whole_floats(col.cast(pl.Float64, strict=False))) if stripped else ints
    ints = col.cast(pl.Int64, strict=False)
    return (ints * _EPOCH_FACTORS[rule.kind]).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")


def _expected(rule: ColumnRule) -> str:
    if rule.kind in _EXPECTED:
        return _EXPECTED[rule.kind]
    return f"an integer (Unix {rule.kind.removeprefix('epoch_')} since 1970)"


def _codes(raw: pl.Series, value: pl.Series, required: bool) -> pl.Series:
    """Problem code per row: EMPTY (when required) where the raw value is missing or blank, INVALID
    where it is there but did not parse."""
    if not value.null_count():  # the common case: nothing to explain
        return pl.Series(raw.name, np.zeros(len(raw), dtype=np.uint8))
    empty = raw.is_null()
    if raw.dtype == pl.String:
        empty = empty | (raw.str.strip_chars() == "")
    code = pl.when(empty).then(pl.lit(EMPTY if required else OK)).when(value.is_null()).then(pl.lit(INVALID))
    return pl.select(code.otherwise(pl.lit(OK)).cast(pl.UInt8)).to_series().alias(raw.name)


def _needs_retry(rule: ColumnRule, raw: pl.Series, value: pl.Series) -> bool:
    if rule.kind != "text":
        return bool((value.is_null() & raw.is_not_null()).any())
    if raw.dtype != pl.String:
        return False
    # Checking the ends is far cheaper than stripping every value of a clean column.
    padded = pl.any_horizontal(f(ch) for ch in (" ", "\t") for f in (raw.str.starts_with, raw.str.ends_with))
    return bool(pl.select(padded.any()).item())


def parse_columns(frame: pl.DataFrame, rules: list[ColumnRule]) -> list[FieldResult]:
    """Parse the columns `rules` name, all in one polars pass (columns run in parallel).

    Values that fail are tried once more with surrounding spaces removed (and, for integers, as whole
    floats like "12.0"), so the common clean file pays for one cast per column only.
    """
    schema = frame.schema
    values = frame.select(_value_expr(r, schema[r.name]).alias(r.column) for r in rules)
    failed = [r for r in rules if _needs_retry(r, frame[r.name], values[r.column])]
    if failed:
        retry = frame.select(_value_expr(r, schema[r.name], stripped=True).alias(r.column) for r in failed)
        values = values.with_columns(retry)
    return [
        FieldResult(
            r.column,
            r.name,
            frame[r.name],
            values[r.column],
            _codes(frame[r.name], values[r.column], r.required),
            _expected(r),
        )
        for r in rules
    ]


def _localize(naive: pl.Series, timezone: str) -> tuple[pl.Series, pl.Series]:
    """Naive local times → UTC, null where the local time is in a DST gap or overlap; and the codes."""
    local = naive.dt.replace_time_zone(timezone, ambiguous="null", non_existent="null")
    earliest = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    code = pl.select(
        pl.when(naive.is_null() | local.is_not_null())
        .then(pl.lit(OK))
        .when(earliest.is_not_null())
        .then(pl.lit(AMBIGUOUS))
        .otherwise(pl.lit(NONEXISTENT))
        .cast(pl.UInt8)
    ).to_series()
    return local.dt.convert_time_zone("UTC"), code


def parse_timestamp(raw: pl.Series, column: str, *, timezone: str, ts_format: str | None) -> FieldResult:
    """UTC timestamps (ns) from text, dates or datetimes; see the module docstring for the rules."""
    if ts_format in EPOCH_FORMATS:
        kind = f"epoch_{EPOCH_FORMATS[ts_format]}"
        return parse_columns(raw.to_frame(), [ColumnRule(column, raw.name, kind)])[0]  # type: ignore[arg-type]
    expected = (
        f"a timestamp in format {ts_format!r}" if ts_format else "an ISO 8601 timestamp (or set ts_format)"
    )
    if raw.dtype == pl.String:
        text = raw.str.strip_chars()
        if ts_format:
            parsed = text.str.strptime(pl.Datetime("ns"), ts_format, strict=False)
        else:
            # Only ISO text reaches polars' format inference, which would otherwise guess day/month order.
            iso = pl.select(pl.when(text.str.contains(_ISO_RE)).then(text)).to_series()
            parsed = iso.str.to_datetime(time_unit="ns", strict=False) if iso.null_count() < len(iso) else iso
    elif raw.dtype == pl.Date or isinstance(raw.dtype, pl.Datetime):
        parsed = raw.cast(
            pl.Datetime("ns", raw.dtype.time_zone if isinstance(raw.dtype, pl.Datetime) else None)
        )
    else:
        raise InputError(
            f"column {raw.name!r} holds {raw.dtype} values; set ts_format to unix_s, unix_ms, unix_us or "
            f"unix_ns for epoch numbers"
        )
    if parsed.dtype == pl.String or parsed.dtype == pl.Null:  # nothing parsed at all
        parsed = pl.Series(raw.name, [None] * len(raw), dtype=pl.Datetime("ns", "UTC"))
    base = _codes(raw, parsed, True)
    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is None:
        parsed, dst = _localize(parsed, timezone)
        base = pl.select(pl.when(base == OK).then(dst).otherwise(base)).to_series()
    else:
        parsed = parsed.dt.convert_time_zone("UTC")
    return FieldResult(column, raw.name, raw, parsed.cast(pl.Datetime("ns", "UTC")), base, expected, timezone)


@dataclass(frozen=True)
class TextTable:
    """A CSV read by polars, every field a string unless read typed, plus where each row sits in the file."""

    frame: pl.DataFrame  # the header's columns and _EXTRA (fields beyond the header)
    columns: list[str]  # the header
    data: bytes  # the file as given: plain, or gzip when the typed fast path read it
    separator: str
    records: int  # data rows in the whole file
    text_bytes: int  # decompressed size
    record_index: np.ndarray | None = None  # after filter(): each row's 0-based record in the file

    @classmethod
    def read(
        cls,
        data: bytes,
        source: str,
        separator: str = ",",
        *,
        dtypes: Mapping[str, pl.DataType] | None = None,
        required: Iterable[str] = (),
    ) -> TextTable:
        """Parse CSV bytes, plain or gzip, with polars (multi-threaded).

        With `dtypes`, polars first reads those columns typed, straight from the gzip if it is one (its
        inflate is faster than zlib's and checks the CRC too): the fast path for clean files. When
        that fails, or leaves a null in a `required` column, a blank row or a long row, the file is
        decompressed here and read as text so that every bad row can be explained.
        Raises CorruptGzipError for damaged gzip, InputError (naming `source`) for anything else.
        """
        try:
            header = _first_line(data).removeprefix(b"\xef\xbb\xbf")
            columns = pl.read_csv(header + b"\n", n_rows=0, infer_schema=False, separator=separator).columns
            if dtypes:
                typed = cls._read(data, columns, separator, dtypes)
                if typed is not None and not (
                    any(typed[c].null_count() for c in required if c in columns)
                    or typed[_EXTRA].null_count() < typed.height
                ):
                    size = gzip_size(data) if is_gzip(data) else len(data)
                    return cls(typed, columns, data, separator, typed.height, size)
            if is_gzip(data):
                data = gunzip(data)
            # A UTF-8 byte-order mark would stick to the first column name.
            data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
            frame = cls._read(data, columns, separator, {})
        except pl.exceptions.NoDataError as e:
            raise InputError(f"{source}: the file is empty (no header line)") from e
        except pl.exceptions.PolarsError as e:
            raise InputError(f"{source}: cannot read as CSV (separator {separator!r}): {e}") from e
        assert frame is not None
        return cls(frame, columns, data, separator, frame.height, len(data))

    @staticmethod
    def _read(
        data: bytes, columns: list[str], separator: str, dtypes: Mapping[str, pl.DataType]
    ) -> pl.DataFrame | None:
        """All `columns` (typed per `dtypes`, text otherwise) and _EXTRA; None when the typed read fails."""
        schema = {c: dtypes.get(c, pl.String) for c in columns} | {_EXTRA: pl.String}
        try:
            # Ragged rows: short ones get nulls, long ones spill into _EXTRA instead of failing the file.
            return pl.read_csv(
                data, schema=schema, separator=separator, missing_columns="insert", truncate_ragged_lines=True
            )
        except (pl.exceptions.ComputeError, OSError):
            if dtypes:  # a bad value or a damaged gzip: the text path finds out which
                return None
            raise

    def filter(self, keep: pl.Series) -> TextTable:
        """The rows where `keep` is true; locate() still names their lines in the file."""
        index = np.flatnonzero(keep.to_numpy())
        if self.record_index is not None:
            index = self.record_index[index]
        return replace(self, frame=self.frame.filter(keep), record_index=index)

    def locate(self, rows: np.ndarray) -> tuple[list[int | None], list[str]]:
        """1-based line numbers (header = line 1) and exact text of rows `rows` (0-based, of `frame`).

        Records are found from the newline and quote positions (a newline inside quotes does not end a
        record). When that count disagrees with polars' rows, lines are unknown (None) and raw is the
        row's fields joined by the separator.
        """
        text = gunzip(self.data) if is_gzip(self.data) else self.data
        buf = np.frombuffer(text, dtype=np.uint8)
        newlines = np.flatnonzero(buf == ord("\n"))
        ends = newlines
        if text.find(b'"') >= 0:
            quotes = np.flatnonzero(buf == ord('"'))
            ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
        if len(text) and text[-1:] != b"\n":
            ends = np.append(ends, len(text))
        starts = np.concatenate([[0], ends[:-1] + 1])
        if len(starts) - 1 == self.records:
            records = rows if self.record_index is None else self.record_index[rows]
            picked = np.asarray(records, dtype=np.int64) + 1  # record 0 is the header
            lines = (np.searchsorted(newlines, starts[picked]) + 1).tolist()
            raws = [
                text[s:e].decode("utf-8", "replace").rstrip("\r")
                for s, e in zip(starts[picked].tolist(), ends[picked].tolist(), strict=True)
            ]
            return lines, raws
        subset = self.frame[rows.tolist()].select(self.columns)
        return [None] * len(rows), [
            self.separator.join("" if v is None else v for v in row) for row in subset.iter_rows()
        ]

    def structural_problems(self) -> pl.Series:
        """Per row: True where the row is blank or has more fields than the header."""
        blank = pl.all_horizontal(pl.col(c).is_null() for c in self.frame.columns)
        return self.frame.select(blank | pl.col(_EXTRA).is_not_null()).to_series()

    def shape_reason(self, raw: str, extra: str | None) -> str | None:
        """'blank line' or a field-count reason for one row's text, or None when its shape is fine."""
        if not raw.strip(" \t\r\n" + self.separator):
            return "blank line"
        # Without quotes, separators count the fields exactly (with quotes, polars' reading decides).
        if '"' not in raw:
            n = raw.count(self.separator) + 1
            if n != len(self.columns):
                return f"has {n} fields, expected {len(self.columns)} ({self.separator.join(self.columns)})"
        elif extra is not None:
            return f"has more fields than the {len(self.columns)} of the header"
        return None


def split_rows(
    fields: list[FieldResult],
    *,
    source: str,
    locate: Callable[[np.ndarray], tuple[list[int | None], list[str]]],
    also_bad: pl.Series | None = None,
    shape_reason: Callable[[int, str], str | None] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed good rows (one column per field, canonical names) and the quarantine of the others.

    `locate(rows)` gives (line numbers, raw text) of the bad rows; `shape_reason(row, raw)`, when given,
    may replace the field reasons of a row whose shape is wrong (blank, too few or many fields).
    """
    bad = pl.select(pl.any_horizontal([f.code != OK for f in fields] or [pl.lit(False)])).to_series()
    if also_bad is not None:
        bad = bad | also_bad
    good = pl.DataFrame([f.value.alias(f.column) for f in fields])
    if not bad.any():
        return good, pl.DataFrame(schema=PARSE_QUARANTINE_SCHEMA)
    good = good.filter(~bad)
    rows = np.flatnonzero(bad.to_numpy())
    lines, raws = locate(rows)
    reasons = []
    for i, raw in zip(rows.tolist(), raws, strict=True):
        reason = shape_reason(i, raw) if shape_reason else None
        if reason is None:
            reason = "; ".join(r for f in fields if (r := f.reason(i)) is not None)
        reasons.append(reason)
    quarantine = pl.DataFrame(
        {"source": [source] * len(rows), "line": lines, "raw": raws, "reason": reasons},
        schema=PARSE_QUARANTINE_SCHEMA,
    )
    return good, quarantine


def parse_text_table(
    table: TextTable, fields: list[FieldResult], source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """split_rows for a CSV: blank and ragged rows are quarantined with a shape reason."""
    extra = table.frame[_EXTRA]
    return split_rows(
        fields,
        source=source,
        locate=table.locate,
        also_bad=table.structural_problems(),
        shape_reason=lambda i, raw: table.shape_reason(raw, extra[i]),
    )


# --- user files ---


@dataclass(frozen=True)
class ImportedFile:
    """One matched file: canonical bars, the rows that could not be parsed, and the rows read."""

    path: str
    bars: pl.DataFrame  # BAR_SCHEMA
    quarantine: pl.DataFrame  # PARSE_QUARANTINE_SCHEMA; line = CSV line (header = 1) or Parquet row (1-based)
    rows_in: int


def matched_paths(spec: FileImportSpec, base_dir: str | Path | None = None) -> list[Path]:
    """Files matched by the spec's paths/globs, sorted, each once. InputError names a pattern with no match."""
    found: dict[Path, None] = {}
    for pattern in spec.paths:
        full = Path(pattern).expanduser()
        if base_dir is not None and not full.is_absolute():
            full = Path(base_dir) / full
        hits = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not hits:
            raise InputError(f"paths: no file matches {pattern!r} (looked for {str(full)!r})")
        found.update(dict.fromkeys(hits))
    return list(found)


def _file_format(path: Path, spec: FileImportSpec) -> Literal["csv", "parquet"]:
    if spec.format != "auto":
        return spec.format
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise InputError(
        f"{path}: cannot tell the format from the suffix (expected one of {CSV_SUFFIXES + PARQUET_SUFFIXES}); "
        f"set format: csv or parquet"
    )


def _mapped_fields(
    frame: pl.DataFrame, spec: FileImportSpec, source: str, found: list[str]
) -> list[FieldResult]:
    """Parse every mapped column; InputError names a mapped column the file lacks."""
    for canonical, name in spec.columns.items():
        if name not in found:
            raise InputError(
                f"{source}: column {name!r} (mapped to {canonical}) not found; the file has columns {found}"
            )
    col = spec.columns
    try:
        ts = parse_timestamp(frame[col["ts"]], "ts", timezone=spec.timezone, ts_format=spec.ts_format)
    except InputError as e:
        raise InputError(f"{source}: {e}") from e
    rules = [ColumnRule(c, col[c], "number") for c in ("open", "high", "low", "close", "volume")]
    rules += [
        ColumnRule(c, col[c], kind, required=c == "symbol") for c, kind in _OPTIONAL_KINDS.items() if c in col
    ]
    return [ts, *parse_columns(frame, rules)]


def _to_bars(good: pl.DataFrame, spec: FileImportSpec, source: str) -> pl.DataFrame:
    ts = pl.col("ts")
    if spec.ts_is == "close":
        ts = ts.dt.offset_by(f"-{TIMEFRAME_DURATIONS[spec.timeframe]}")
    frame = good.select(
        symbol=pl.col("symbol") if "symbol" in good.columns else pl.lit(spec.symbol),
        ts=ts,
        timeframe=pl.lit(spec.timeframe),
        open="open",
        high="high",
        low="low",
        close="close",
        volume="volume",
        vwap=pl.col("vwap") if "vwap" in good.columns else pl.lit(None, dtype=pl.Float64),
        trades=pl.col("trades") if "trades" in good.columns else pl.lit(None, dtype=pl.Int64),
        vendor=pl.lit(spec.vendor),
        imputed=pl.lit(False),
    )
    return conform(frame, BAR_SCHEMA, source)


def _import_csv(path: Path, spec: FileImportSpec) -> ImportedFile:
    source = str(path)
    try:
        table = TextTable.read(path.read_bytes(), source, spec.csv_separator)
    except CorruptGzipError as e:
        raise InputError(f"{source}: {e}") from e
    fields = _mapped_fields(table.frame, spec, source, table.columns)
    good, quarantine = parse_text_table(table, fields, source)
    return ImportedFile(source, _to_bars(good, spec, source), quarantine, table.frame.height)


def _import_parquet(path: Path, spec: FileImportSpec) -> ImportedFile:
    source = str(path)
    try:
        frame = pl.read_parquet(path)
    except pl.exceptions.PolarsError as e:
        raise InputError(f"{source}: cannot read as Parquet: {e}") from e
    fields = _mapped_fields(frame, spec, source, frame.columns)
    mapped = list(dict.fromkeys(spec.columns.values()))

    def locate(rows: np.ndarray) -> tuple[list[int | None], list[str]]:
        subset = frame[rows.tolist()].select(mapped).rows(named=True)
        return (rows + 1).tolist(), [json.dumps(r, default=str) for r in subset]

    good, quarantine = split_rows(fields, source=source, locate=locate)
    return ImportedFile(source, _to_bars(good, spec, source), quarantine, frame.height)


def import_files(spec: FileImportSpec, *, base_dir: str | Path | None = None) -> list[ImportedFile]:
    """Read every file the spec matches into canonical bars (relative patterns from `base_dir`, default
    the working directory). One ImportedFile per file, in path order; rows that do not parse are in its
    quarantine. Raises InputError for a pattern without a match, a file that cannot be read, or a mapped
    column the file lacks.
    """
    out = []
    for path in matched_paths(spec, base_dir):
        fmt = _file_format(path, spec)
        out.append(_import_csv(path, spec) if fmt == "csv" else _import_parquet(path, spec))
    return out
