"""The incremental feature store: per-symbol feature rows kept in the gold layer, extended rather than
recomputed when the bars grow.

Layout (lake-relative): `gold/features/store/set-<id>/scope-<id>/chunks/part-<sha16>.parquet` hold
computed rows (`symbol, ts, _bars_hash`, one column per feature); `coverage.json` beside them says,
per symbol, which (chunk, first ts, last ts) segments are valid. The set id hashes the feature names,
their versions, the source of the modules that define them and TA-Lib's version, so a code change
never reuses stale values; the scope separates bar sources (vendor, timeframe, adjustment), so two
universes never overwrite each other's rows.

Only bounded features (value at t from the last `lookback` bars: `engine.is_bounded`) are stored.
A run keeps, per symbol, the longest prefix of stored rows whose timestamps and input-bar hashes
equal its own bars (a restated bar ends the prefix there), computes the rest from `lookback` bars
before it (`engine.compute_panel`), writes one new chunk and moves the coverage forward.
History-dependent features (EMA, Wilder smoothing, cumulative sums) are computed from each symbol's
first bar on every run, which is what their values depend on. Values
equal a full recompute's up to floating-point rounding of running sums (`engine.same_values`,
rtol 1e-7: about float32 precision; rolling moments such as kurtosis carry that much).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import structlog

from quanto.features.engine import Panel, compute_panel, is_bounded, symbol_slices
from quanto.features.spec import FeatureSpec
from quanto.lake.storage import Lake, sha256_json

log = structlog.get_logger("quanto.features.store")

STORE_ROOT = "gold/features/store"
HASH_COLUMN = "_bars_hash"
# Past this many chunks the next run rewrites its rows as one chunk, so reads stay a few files.
MAX_CHUNKS = 32


@functools.cache
def _source_digest(module: str) -> str:
    """Hash of a module's source file (the code behind a feature)."""
    import importlib

    path = inspect.getsourcefile(importlib.import_module(module))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else module


def _fn_module(spec: FeatureSpec) -> str:
    fn = spec.fn
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__module__", None) or "unknown"


def feature_set_id(specs: list[FeatureSpec]) -> str:
    """Identity of a feature set's values: names, versions, defining code and TA-Lib's version."""
    import talib

    modules = sorted({_fn_module(s) for s in specs})
    return sha256_json(
        {
            "features": [[s.name, s.version, s.params] for s in specs],
            "code": {m: _source_digest(m) for m in modules},
            "talib": talib.__ta_version__,
        }
    )[:16]


def bar_hashes(panel: Panel) -> np.ndarray:
    """A uint64 hash per panel row of its ts and input columns (pandas' stable row hash)."""
    frame = pd.DataFrame({"ts": panel.ts.asi8, **panel.columns})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


@dataclass
class StoreRun:
    """What one store run did, for logs and the stage manifest."""

    set_id: str
    scope: str
    symbols: int
    symbols_reused: int  # every row came from the store
    symbols_extended: int  # a stored prefix plus new rows
    symbols_computed: int  # nothing usable was stored
    rows_reused: int  # rows of stored (bounded) features read back
    rows_computed: int  # rows of stored features computed (with their warm-up)
    stored_features: int  # bounded features, kept in the store
    history_features: int  # history-dependent features, recomputed from the first bar every run
    chunk: str | None
    compacted: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for manifests."""
        return dict(self.__dict__)


class FeatureStore:
    """Incremental computation of one feature set over one bar source (see the module docstring)."""

    def __init__(
        self, lake: Lake, specs: list[FeatureSpec], scope: dict[str, Any], threads: int | None = None
    ):
        self.lake = lake
        self.specs = specs
        # Only bounded features are stored: a history-dependent one is recomputed from the first bar
        # on every run anyway (TA-Lib's recursions cost little next to reading their values back).
        self.stored = [s for s in specs if is_bounded(s)]
        self.history = [s for s in specs if not is_bounded(s)]
        self.set_id = feature_set_id(self.stored)
        self.scope_id = sha256_json(scope)[:12]
        self.root = f"{STORE_ROOT}/set-{self.set_id}/scope-{self.scope_id}"
        self.threads = threads

    # --- coverage -----------------------------------------------------------------------------

    @property
    def _coverage_path(self) -> Path:
        return self.lake.abspath(f"{self.root}/coverage.json")

    def coverage(self) -> dict[str, list[dict[str, Any]]]:
        """symbol -> its valid segments [{"chunk", "first", "last"}] (ts as epoch nanoseconds)."""
        path = self._coverage_path
        if not path.is_file():
            return {}
        return json.loads(path.read_text())["symbols"]

    def _read_stored(self, coverage: dict[str, list[dict[str, Any]]], symbols: list[str]) -> pl.DataFrame:
        """The stored rows of `symbols` that their segments declare valid, in (symbol, ts) order, ts as
        epoch nanoseconds."""
        names = [s.name for s in self.stored]
        by_chunk: dict[str, list[dict[str, Any]]] = {}
        for sym in symbols:
            for seg in coverage.get(sym, []):
                by_chunk.setdefault(seg["chunk"], []).append(
                    {"symbol": sym, "first": seg["first"], "last": seg["last"]}
                )
        frames = []
        for chunk, segs in by_chunk.items():
            rows = pl.read_parquet(self.lake.abspath(chunk), columns=["symbol", "ts", HASH_COLUMN, *names])
            rows = rows.with_columns(pl.col("ts").dt.epoch("ns"))
            bounds = pl.DataFrame(segs, schema={"symbol": pl.String, "first": pl.Int64, "last": pl.Int64})
            rows = rows.join(bounds, on="symbol", how="inner", maintain_order="left")
            frames.append(
                rows.filter(pl.col("ts").is_between(pl.col("first"), pl.col("last"))).drop("first", "last")
            )
        if not frames:
            schema = {
                "symbol": pl.String,
                "ts": pl.Int64,
                HASH_COLUMN: pl.UInt64,
                **dict.fromkeys(names, pl.Float64),
            }
            return pl.DataFrame(schema=schema)
        # Each chunk is written in (symbol, ts) order; rows from several chunks interleave.
        return frames[0] if len(frames) == 1 else pl.concat(frames).sort(["symbol", "ts"])

    # --- the run ------------------------------------------------------------------------------

    def compute(self, bars: pd.DataFrame | pl.DataFrame) -> tuple[pd.DataFrame, StoreRun]:
        """The feature table of `bars` (as `registry.compute_features` returns it), reusing and
        extending the store. Returns the table and what was reused and computed."""
        from quanto.features.registry import feature_frame

        panel = Panel.of(bars, [c for s in self.specs for c in s.inputs])
        hashes = bar_hashes(panel)
        coverage = self.coverage()
        symbols = [str(panel.symbol[sl.start]) for sl in panel.slices]
        lengths = np.array([sl.stop - sl.start for sl in panel.slices], dtype=np.int64)
        stored_names = [s.name for s in self.stored]
        stored = self._read_stored(coverage, symbols) if self.stored else None
        emit, src, dst = self._stored_prefix(panel, hashes, symbols, stored)

        columns: dict[str, np.ndarray] = {}
        if self.history:  # from the first bar every time: their values depend on all of it
            _, full = compute_panel(
                panel, self.history, bounded=[False] * len(self.history), threads=self.threads
            )
            columns.update(zip([s.name for s in self.history], full, strict=True))
        rows = np.empty(0, dtype=np.int64)
        if self.stored:
            rows, computed = compute_panel(
                panel, self.stored, emit_from=emit, bounded=[True] * len(self.stored), threads=self.threads
            )
            for name, new in zip(stored_names, computed, strict=True):
                col = np.empty(len(panel))
                col[dst] = stored[name].to_numpy()[src]
                col[rows] = new
                columns[name] = col
        table = feature_frame(panel, np.arange(len(panel)), self.specs, [columns[s.name] for s in self.specs])

        chunk, compacted = None, False
        if len(rows):
            n_chunks = len({seg["chunk"] for segs in coverage.values() for seg in segs}) + 1
            compacted = n_chunks > MAX_CHUNKS
            write_rows = np.arange(len(panel)) if compacted else rows
            chunk = self._write_chunk(
                panel, hashes, write_rows, [columns[n][write_rows] for n in stored_names]
            )
            for i, (sym, sl) in enumerate(zip(symbols, panel.slices, strict=True)):
                k = 0 if compacted else int(emit[i])
                if k == lengths[i]:
                    continue  # nothing new for this symbol: its coverage stands
                cut = int(panel.ts.asi8[sl.start + k])
                kept = [
                    {**seg, "last": min(seg["last"], int(panel.ts.asi8[sl.start + k - 1]))}
                    for seg in coverage.get(sym, [])
                    if k > 0 and seg["first"] < cut
                ]
                coverage[sym] = [
                    *kept,
                    {"chunk": chunk, "first": cut, "last": int(panel.ts.asi8[sl.stop - 1])},
                ]
            self.lake.write_json(
                f"{self.root}/coverage.json",
                {"set_id": self.set_id, "features": stored_names, "symbols": coverage},
            )
        run = StoreRun(
            set_id=self.set_id,
            scope=self.scope_id,
            symbols=len(symbols),
            symbols_reused=int((emit == lengths).sum()),
            symbols_extended=int(((emit > 0) & (emit < lengths)).sum()),
            symbols_computed=int((emit == 0).sum()),
            rows_reused=int(emit.sum()),
            rows_computed=len(rows),
            stored_features=len(self.stored),
            history_features=len(self.history),
            chunk=chunk,
            compacted=compacted,
        )
        log.info("feature coverage", **run.as_dict())
        return table, run

    def _stored_prefix(
        self, panel: Panel, hashes: np.ndarray, symbols: list[str], stored: pl.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per symbol, how many leading rows the store holds for exactly these bars (same ts, same
        input hash); plus the stored row positions to copy (src) and where they go (dst)."""
        emit = np.zeros(len(panel.slices), dtype=np.int64)
        if stored is None or stored.height == 0:
            return emit, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        st_sym = stored["symbol"].to_numpy()
        st_ts = stored["ts"].to_numpy()
        st_hash = stored[HASH_COLUMN].to_numpy()
        st_slices = {str(st_sym[sl.start]): sl for sl in symbol_slices(st_sym)}
        src, dst = [], []
        for i, (sym, sl) in enumerate(zip(symbols, panel.slices, strict=True)):
            ssl = st_slices.get(sym)
            if ssl is None:
                continue
            m = min(ssl.stop - ssl.start, sl.stop - sl.start)
            same = (st_ts[ssl.start : ssl.start + m] == panel.ts.asi8[sl.start : sl.start + m]) & (
                st_hash[ssl.start : ssl.start + m] == hashes[sl.start : sl.start + m]
            )
            k = m if same.all() else int(np.argmin(same))
            emit[i] = k
            src.append(np.arange(ssl.start, ssl.start + k))
            dst.append(np.arange(sl.start, sl.start + k))
        return emit, np.concatenate(src), np.concatenate(dst)

    def _write_chunk(
        self, panel: Panel, hashes: np.ndarray, rows: np.ndarray, values: list[np.ndarray]
    ) -> str:
        columns = {
            "symbol": pa.array(panel.symbol[rows], pa.string()),
            "ts": pa.array(panel.ts[rows]),
            HASH_COLUMN: pa.array(hashes[rows], pa.uint64()),
            **{s.name: pa.array(values[j], pa.float64()) for j, s in enumerate(self.stored)},
        }
        return self.lake.write_table(f"{self.root}/chunks", pa.table(columns), role="feature_chunk").path
