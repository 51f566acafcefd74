"""The lake on the local filesystem: atomic, content-addressed Parquet files under one root."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quanto.contracts import FileRef

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: object) -> str:
    """Hex SHA-256 of an object's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a crash cannot leave a truncated file behind
    a manifest that names it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Lake:
    """A lake rooted at a local folder; paths in FileRefs are relative to the root."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def abspath(self, rel: str | Path) -> Path:
        """Absolute path of a lake-relative path."""
        return self.root / rel

    def relpath(self, path: Path) -> str:
        """Lake-relative POSIX path."""
        return path.resolve().relative_to(self.root).as_posix()

    def write_table(self, folder: str, table: pa.Table, role: str = "data") -> FileRef:
        """Write `table` as `folder/part-<sha16>.parquet` atomically; the name is the content hash.

        Writing identical content twice yields the same file, so reruns never duplicate data.
        """
        target_dir = self.root / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        try:
            # Fixed writer settings keep bytes (and so hashes) reproducible for identical tables.
            pq.write_table(table, tmp, compression="zstd", write_statistics=True, store_schema=True)
            _fsync_path(Path(tmp))
            digest = sha256_file(Path(tmp))
            final = target_dir / f"part-{digest[:16]}.parquet"
            os.replace(tmp, final)
            _fsync_path(target_dir)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return FileRef(path=self.relpath(final), sha256=digest, rows=table.num_rows, role=role)

    def write_frame(
        self, folder: str, df: pd.DataFrame, role: str = "data", schema: pa.Schema | None = None
    ) -> FileRef:
        """Write a pandas frame (index dropped) as one content-addressed Parquet file."""
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        table = table.replace_schema_metadata(None)
        return self.write_table(folder, table, role)

    def read_frame(self, refs: Iterable[FileRef], columns: list[str] | None = None) -> pd.DataFrame:
        """Read and concatenate the files of `refs` into one pandas frame."""
        tables = [pq.read_table(self.abspath(r.path), columns=columns) for r in refs]
        if not tables:
            raise ValueError("no files to read")
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def exists(self, refs: Iterable[FileRef]) -> bool:
        """True when every referenced file is present."""
        return all(self.abspath(r.path).is_file() for r in refs)

    def write_json(self, rel: str, obj: object) -> Path:
        """Write JSON atomically at a lake-relative path."""
        path = self.root / rel
        atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
        return path

    def write_checkpoint(self, rel: str, df: pd.DataFrame) -> Path:
        """Write a frame at a fixed lake-relative path atomically (scratch state a retry can resume from)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        try:
            df.to_parquet(tmp, index=False)
            _fsync_path(Path(tmp))
            os.replace(tmp, path)
            _fsync_path(path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def read_polars(self, refs: Iterable[FileRef]):
        """Read and concatenate the files of `refs` into one polars frame."""
        import polars as pl

        paths = [str(self.abspath(r.path)) for r in refs]
        if not paths:
            raise ValueError("no files to read")
        return pl.read_parquet(paths)
