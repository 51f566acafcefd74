"""The feature engine: many symbols at once, each symbol on its own rows, in parallel over symbols.

The panel is put in (symbol, ts) order by polars and handed to the feature functions one symbol at
a time as numpy columns. Work is spread over a thread pool: TA-Lib, numpy and pandas' rolling kernels
release the GIL, so threads scale without copying the panel into worker processes.

An engine run may emit only the tail of each symbol (`emit_from`), which is what incremental
computation needs: a feature whose value at row t depends on rows t-lookback..t only ("bounded") is
computed from `lookback` rows before the first emitted row; any other feature ("unbounded": EMA,
Wilder smoothing, cumulative sums, ...) from the symbol's first row, so the emitted values equal a full
recompute's.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import polars as pl

from quanto.features.spec import FeatureSpec

KEY = ("symbol", "ts")
# Symbols per task: big enough to amortize scheduling, small enough to balance the threads.
_SYMBOLS_PER_TASK = 8
# Rows per batch of bounded features laid end to end: enough to pay pandas' per-call cost rarely,
# small enough to give every thread work. Part of the results' identity: see `_row_groups`.
_ROWS_PER_GROUP = 200_000


def default_threads() -> int:
    """Threads for feature computation: $QUANTO_FEATURE_THREADS, else the machine's cores (max 16)."""
    raw = os.environ.get("QUANTO_FEATURE_THREADS")
    if raw:
        return max(1, int(raw))
    return max(1, min(os.cpu_count() or 1, 16))


@dataclass(frozen=True)
class Panel:
    """Bars in (symbol, ts) order: the key columns and float64 input columns as numpy arrays."""

    symbol: np.ndarray
    ts: pd.DatetimeIndex
    columns: dict[str, np.ndarray]
    slices: list[slice]  # each symbol's rows

    def __len__(self) -> int:
        return len(self.symbol)

    @classmethod
    def of(cls, bars: pd.DataFrame | pl.DataFrame, inputs: Sequence[str]) -> Panel:
        """Sort `bars` by (symbol, ts) and keep `inputs`. Raises KeyError for missing columns and
        ValueError for repeated (symbol, ts) rows."""
        needed = list(dict.fromkeys([*KEY, *inputs]))
        missing = [c for c in needed if c not in bars.columns]
        if missing:
            raise KeyError(f"bars are missing columns {missing} needed by the requested features")
        frame = bars if isinstance(bars, pl.DataFrame) else pl.from_pandas(bars[needed])
        frame = frame.select(needed).sort(list(KEY), maintain_order=True)
        symbol = frame["symbol"].to_numpy()
        ts = pd.DatetimeIndex(frame["ts"].to_pandas())
        repeated = np.flatnonzero((symbol[1:] == symbol[:-1]) & (ts.asi8[1:] == ts.asi8[:-1]))
        if len(repeated):
            dupes = [{"symbol": symbol[i], "ts": ts[i]} for i in repeated[:3]]
            raise ValueError(f"bars have repeated (symbol, ts) rows, e.g. {dupes}")
        columns = {c: frame[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in needed if c not in KEY}
        return cls(symbol=symbol, ts=ts, columns=columns, slices=symbol_slices(symbol))


def symbol_slices(symbols: np.ndarray) -> list[slice]:
    """Row ranges of each symbol in an array sorted by symbol."""
    if len(symbols) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
    ends = np.r_[starts[1:], len(symbols)]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


class SymbolBars:
    """One symbol's bars as the feature functions see them: `bars["close"]` is a pandas Series built
    once per column, because dozens of features read the same few columns; anything else (a column
    list, attributes) goes to a DataFrame built on first use."""

    def __init__(self, columns: dict[str, np.ndarray], ts: pd.DatetimeIndex):
        self._arrays = columns
        self._ts = ts
        self._series: dict[str, pd.Series] = {}
        self._frame: pd.DataFrame | None = None

    def _column(self, key: str) -> pd.Series:
        col = self._series.get(key)
        if col is None:
            # A KeyError names a missing column.
            col = pd.Series(self._ts) if key == "ts" else pd.Series(self._arrays[key], copy=False)
            self._series[key] = col
        return col

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._column(key)
        return self.frame[key]

    def __contains__(self, key: str) -> bool:
        return key == "ts" or key in self._arrays

    def __len__(self) -> int:
        return len(self._ts)

    @property
    def frame(self) -> pd.DataFrame:
        """The bars as a DataFrame (ts and the input columns)."""
        if self._frame is None:
            self._frame = pd.DataFrame({"ts": self._ts, **self._arrays})
        return self._frame

    @property
    def columns(self) -> pd.Index:
        return pd.Index(["ts", *self._arrays])

    def __getattr__(self, name: str):
        return getattr(self.frame, name)


def _run_spec(spec: FeatureSpec, bars: SymbolBars) -> np.ndarray:
    result = np.asarray(spec.fn(bars), dtype=np.float64)
    if result.shape != (len(bars),):
        raise ValueError(f"feature {spec.name!r} returned shape {result.shape}, expected one value per bar")
    return result


def compute_panel(
    panel: Panel,
    specs: Sequence[FeatureSpec],
    *,
    emit_from: np.ndarray | None = None,
    bounded: Sequence[bool] | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute `specs` for every symbol of `panel`, emitting rows from `emit_from[i]` (an offset into
    symbol i's rows; default 0 = every row).

    Returns (rows, values): the emitted panel row positions (ascending) and a (len(specs), len(rows))
    float64 array; +-inf is turned into NaN (a zero denominator means undefined).

    `bounded[j]` (default: `is_bounded(specs[j])`) says spec j's value at t depends on rows
    t-lookback..t only. Such a spec runs once per batch of neighbouring symbols laid end to end: a
    value that would reach into the previous symbol lies in the first `lookback` rows of its own
    symbol, which are warm-up and set to NaN, so the result equals a per-symbol run (up to the
    rounding of running sums, which now start in an earlier symbol: `same_values`) while the
    per-call cost, pandas' above all, is paid once per batch instead of once per symbol. It also starts only `lookback` rows
    before a symbol's first emitted row. Any other spec runs per symbol from the symbol's first row.
    """
    n_sym = len(panel.slices)
    emit = np.zeros(n_sym, dtype=np.int64) if emit_from is None else np.asarray(emit_from, dtype=np.int64)
    starts = np.array([s.start for s in panel.slices], dtype=np.int64)
    stops = np.array([s.stop for s in panel.slices], dtype=np.int64)
    first = np.minimum(starts + emit, stops)  # first emitted row of each symbol
    offsets = np.r_[0, np.cumsum(stops - first)]  # symbol i's output is values[:, offsets[i]:offsets[i+1]]
    rows = (
        np.concatenate([np.arange(a, b) for a, b in zip(first, stops, strict=True)])
        if n_sym
        else np.empty(0, np.int64)
    )
    values = np.full((len(specs), len(rows)), np.nan)
    flags = [is_bounded(s) for s in specs] if bounded is None else list(bounded)
    # Batched: bounded and blind to the symbol ahead; per symbol: from `lookback` rows back when
    # bounded, else from the symbol's first row.
    batched_idx = [j for j, b in enumerate(flags) if b and is_batchable(specs[j])]
    per_symbol_bounded = [j for j, b in enumerate(flags) if b and j not in batched_idx]
    unbounded_idx = [j for j, b in enumerate(flags) if not b]
    warmup = max((specs[j].lookback for j in batched_idx), default=0)
    symbol_warmup = max((specs[j].lookback for j in per_symbol_bounded), default=0)
    active = [i for i in range(n_sym) if first[i] < stops[i]]
    workers = max(1, min(threads or default_threads(), len(active) or 1))

    def take(lo: np.ndarray, hi: np.ndarray) -> SymbolBars:
        """Rows [lo[i], hi[i]) of several symbols laid end to end (a view when they touch)."""
        if len(lo) == 1 or bool((lo[1:] == hi[:-1]).all()):
            sl = slice(int(lo[0]), int(hi[-1]))
            return SymbolBars({c: a[sl] for c, a in panel.columns.items()}, panel.ts[sl])
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        return SymbolBars({c: a[idx] for c, a in panel.columns.items()}, panel.ts[idx])

    def bounded_group(group: list[int]) -> None:
        lo = np.where(emit[group] == 0, starts[group], np.maximum(starts[group], first[group] - warmup))
        hi = stops[group]
        bars = take(lo, hi)
        local = np.r_[0, np.cumsum(hi - lo)][:-1] + (first[group] - lo)  # where each output starts
        src = np.concatenate(
            [np.arange(a, a + (b - f)) for a, f, b in zip(local, first[group], hi, strict=True)]
        )
        dst = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in group])
        for j in batched_idx:
            values[j, dst] = _run_spec(specs[j], bars)[src]

    def per_symbol(group: list[int]) -> None:
        for i in group:
            for idx, back in ((per_symbol_bounded, symbol_warmup), (unbounded_idx, None)):
                if not idx:
                    continue
                lo = starts[i] if back is None or emit[i] == 0 else max(starts[i], first[i] - back)
                bars = take(np.array([lo]), stops[i : i + 1])
                skip = int(first[i] - lo)
                for j in idx:
                    values[j, offsets[i] : offsets[i + 1]] = _run_spec(specs[j], bars)[skip:]

    tasks = []
    if batched_idx and active:  # neighbouring symbols in groups of about _ROWS_PER_GROUP rows
        tasks += [functools.partial(bounded_group, g) for g in _row_groups(active, stops - starts)]
    if per_symbol_bounded or unbounded_idx:
        step = _SYMBOLS_PER_TASK
        tasks += [functools.partial(per_symbol, active[a : a + step]) for a in range(0, len(active), step)]
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="features") as pool:
            for future in [pool.submit(task) for task in tasks]:
                future.result()  # re-raises the first failure
    # Warm-up rows of bounded specs: NaN by contract, and where a batch reached into the previous symbol.
    within = rows - np.repeat(starts, stops - first)
    for j in batched_idx:
        values[j, within < specs[j].lookback] = np.nan
    values[np.isinf(values)] = np.nan
    return rows, values


def _row_groups(active: list[int], lengths: np.ndarray) -> list[list[int]]:
    """Consecutive symbols cut into groups once they reach _ROWS_PER_GROUP rows. The cut depends on
    the data only, never on the thread count, so every machine lays out the same batches and gets the
    same floating-point results."""
    groups: list[list[int]] = [[]]
    rows = 0
    for i in active:
        if rows >= _ROWS_PER_GROUP:
            groups.append([])
            rows = 0
        groups[-1].append(i)
        rows += int(lengths[i])
    return groups


# --- boundedness ----------------------------------------------------------------------------------

_PROBE_BARS = 600
_PROBE_CUTS = (37, 150, 311)
_probe_cache: dict[tuple[str, int], bool] = {}
_probe_lock = threading.Lock()


def _probe_columns() -> dict[str, np.ndarray]:
    """Seeded random-walk bars with every canonical input column, some vendor vwap gaps and a few
    zero-volume bars, the cases where a feature's memory could hide."""
    rng = np.random.default_rng(20261121)
    n = _PROBE_BARS
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.015, n)))
    open_ = np.r_[50.0, close[:-1]] * np.exp(rng.normal(0.0, 0.004, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.006, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.006, n)))
    volume = np.round(rng.lognormal(10.0, 0.6, n))
    volume[rng.random(n) < 0.02] = 0.0
    vwap = (high + low + close) / 3.0
    vwap[rng.random(n) < 0.1] = np.nan
    trades = np.round(volume / 50.0)
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "vwap": vwap,
        "trades": trades,
    }


def same_values(a: np.ndarray, b: np.ndarray, rtol: float = 1e-7) -> np.ndarray:
    """Elementwise: equal up to rounding, NaN (and +-inf, which the engine turns into NaN) matching.

    The default rtol, 1e-7 (about float32 precision), is what rolling moments computed from running
    sums (pandas' kurtosis, TA-Lib's sums) keep when their sums start at another row. The absolute tolerance scales with the column's largest magnitude, because features built on
    running sums (a regression slope, a z-score) lose relative precision where they cross zero.
    """
    a = np.where(np.isinf(a), np.nan, np.asarray(a, dtype=np.float64))
    b = np.where(np.isinf(b), np.nan, np.asarray(b, dtype=np.float64))
    finite = np.abs(b[np.isfinite(b)])
    scale = float(finite.max()) if finite.size else 0.0
    return np.isclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)


def is_batchable(spec: FeatureSpec) -> bool:
    """Whether `spec` may run over symbols laid end to end (`compute_panel`): only features declared
    `bounded=True`, whose value is computed from its own window alone. A probed feature runs per
    symbol even when bounded: running sums and pandas' online rolling moments keep a residue of the
    symbol ahead (up to 1e-7 relative after a 1000x price jump), so batching would make a symbol's
    values depend on its neighbours in the universe."""
    return spec.bounded is True


def is_bounded(spec: FeatureSpec) -> bool:
    """Whether `spec`'s value at row t depends on rows t-lookback..t only.

    A declared `spec.bounded` is taken as is (the test suite checks declarations); otherwise the
    feature is probed once per process: computed on seeded bars and on the same bars cut at several
    starting rows, it is bounded when every value from `lookback` rows after each cut matches the
    uncut run (`same_values`, rtol 1e-7: rounding of running sums differs, a recursive seed differs by far more).
    """
    if spec.bounded is not None:
        return spec.bounded
    key = (spec.name, spec.version)
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
    cols = _probe_columns()
    if not set(spec.inputs) <= set(cols):
        result = False  # inputs the probe cannot build (e.g. quotes): assume the whole history
    else:
        ts = pd.date_range("2020-01-01", periods=_PROBE_BARS, freq="D", tz="UTC")
        full = _run_spec(spec, SymbolBars(dict(cols), ts))
        result = True
        for cut in _PROBE_CUTS:
            if cut + spec.lookback >= _PROBE_BARS:
                result = False  # too long a warm-up to tell: assume the whole history
                break
            part = _run_spec(spec, SymbolBars({c: a[cut:] for c, a in cols.items()}, ts[cut:]))
            if not same_values(full[cut + spec.lookback :], part[spec.lookback :]).all():
                result = False
                break
    with _probe_lock:
        _probe_cache[key] = result
    return result
