"""Trades (or cumulative-volume ticks) to canonical bars, in one go or incrementally for streams.

`trades_to_bars` turns a TRADE_SCHEMA frame into BAR_SCHEMA bars: a trade at time t belongs to the
bar [open, open + timeframe) containing t on a grid anchored at UTC midnight (shifted by `offset`);
open/close are the first/last price in time order (ties keep input order), high/low the extremes,
volume = sum(size), vwap = sum(price * size) / volume (null when volume is 0), trades = count,
imputed False. Timeframes are `<n>min` or `<n>h`; `1d` bars open at the session open, which a fixed
grid cannot reproduce (the same choice as features.microstructure.aggregate_to_bars).

`BarAggregator` does the same for a stream of micro-batches. It buffers the raw rows of each batch
(cheap list appends) and folds them into per-bar partial aggregates (first/last time and price,
high, low, volume, price*volume, count) with one vectorized polars pass every `compact_rows` rows or
when bars are emitted, so the per-message cost is a few array appends. Folding partials is exact for
open/high/low/close/trades and the same up to floating-point summation order for volume and vwap, so
the bars equal `trades_to_bars` on the same trades however they were split into batches.

Event time, watermark and late data: the aggregator's watermark is the largest trade time seen minus
`grace_s`. `close_until()` emits (and forgets) every bar whose interval ended at or before the
watermark. A trade that arrives afterwards for a bar whose interval ended at or before the last
watermark closed is *late*: it is never merged into a new, partial duplicate of an emitted bar;
it is counted in `late` and kept in `late_trades` (drain with `take_late_trades()`) so the caller
can store it or trigger a re-aggregation of that bar. Nothing is dropped silently.

Kite ticks carry the day's cumulative volume, not trade sizes: `add_cumulative_volume_ticks` turns
them into (price, volume delta) rows per symbol in arrival order. The first tick ever seen for a
symbol (or the first after `reset_cumulative()`) is the baseline and adds no volume, because the
cumulative figure includes trades before we were listening; a tick on a new UTC day (Indian and US
sessions each fall inside one UTC day) starts from zero, because vendors reset the counter daily; a
cumulative figure below the day's running maximum adds nothing. Bars built only from ticks have
`trades` null (a tick is a snapshot, not one trade).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from quanto.data.schemas import BAR_SCHEMA, polars_schema

TS_DTYPE = pl.Datetime("ns", "UTC")
DAY_NS = 86_400_000_000_000
_TIMEFRAME_RE = re.compile(r"^(\d+)(min|h)$")
_UNIT_NS = {"min": 60_000_000_000, "h": 3_600_000_000_000}
_BAR_PL_SCHEMA = polars_schema(BAR_SCHEMA)
_PARTIAL_SCHEMA = {
    "symbol": pl.String,
    "bar": pl.Int64,
    "first_ts": pl.Int64,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "last_ts": pl.Int64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "pv": pl.Float64,
    "trades": pl.Int64,
}
_LATE_SCHEMA = {"symbol": pl.String, "ts": TS_DTYPE, "price": pl.Float64, "size": pl.Float64}
Array = Sequence | np.ndarray | pl.Series
_TRADE_FRAME = 2  # marks a buffered TRADE_SCHEMA frame (raw frames carry their count n, 1 or 0)
_TRADE_RAW_DTYPES = (("symbol", pl.String), ("ts", TS_DTYPE), ("price", pl.Float64), ("size", pl.Float64))


def timeframe_ns(timeframe: str) -> int:
    """Length of an intraday bar timeframe (`1min`, `5min`, `1h`, ...) in nanoseconds.

    Raises ValueError for anything else, including `1d` (daily bars open at the session open).
    """
    m = _TIMEFRAME_RE.match(timeframe) if isinstance(timeframe, str) else None
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"unknown bar timeframe {timeframe!r}; expected '<n>min' or '<n>h' (e.g. 1min, 1h)")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]


def _to_ns(ts: Array) -> pl.Series:
    """Timestamps (UTC-aware datetimes, numpy datetime64 or integer ns since the epoch) as Int64 ns."""
    if isinstance(ts, pl.Series):
        if isinstance(ts.dtype, pl.Datetime) and ts.dtype.time_unit != "ns":  # type: ignore[union-attr]
            ts = ts.dt.cast_time_unit("ns")  # slow-ish (a select inside): only when needed
        return ts.cast(pl.Int64)
    arr = np.asarray(ts)
    if np.issubdtype(arr.dtype, np.datetime64):
        arr = arr.astype("datetime64[ns]").view(np.int64)
    return pl.Series(arr, dtype=pl.Int64)


def _raw_frame(symbols: Array, ts_ns: Array, prices: Array, sizes: Array | None) -> pl.DataFrame:
    """Parallel arrays → (symbol, ts Int64 ns, price, size) rows."""
    ts = _to_ns(ts_ns)
    return pl.DataFrame(
        [
            _series("symbol", symbols, pl.String),
            ts.alias("ts"),
            _series("price", prices, pl.Float64),
            _series("size", np.zeros(len(ts)) if sizes is None else sizes, pl.Float64),
        ]
    )


def _trade_raw(trades: pl.DataFrame) -> pl.DataFrame:
    """A TRADE_SCHEMA frame's raw rows (symbol, ts Int64 ns, price, size)."""
    return _raw_frame(trades["symbol"], trades["ts"], trades["price"], trades["size"])


def _series(name: str, values: Array, dtype: pl.DataType) -> pl.Series:
    if isinstance(values, pl.Series):
        return (values if values.dtype == dtype else values.cast(dtype)).alias(name)
    return pl.Series(name, values, dtype=dtype)


def _bar_open(step_ns: int, offset_ns: int) -> pl.Expr:
    shifted = pl.col("ts") - offset_ns
    return shifted - shifted.mod(step_ns) + offset_ns  # mod is non-negative: floors before 1970 too


def _partials(raw: pl.DataFrame | pl.LazyFrame, step_ns: int, offset_ns: int) -> pl.LazyFrame:
    """Per-(symbol, bar) partial aggregates of raw rows (a lazy query); ties in ts keep row order."""
    price, ts = pl.col("price"), pl.col("ts")
    return (
        raw.lazy()
        .with_columns(_bar_open(step_ns, offset_ns).alias("bar"))
        .group_by("symbol", "bar")
        .agg(
            ts.min().alias("first_ts"),
            price.sort_by(ts, maintain_order=True).first().alias("open"),
            price.max().alias("high"),
            price.min().alias("low"),
            ts.max().alias("last_ts"),
            price.sort_by(ts, maintain_order=True).last().alias("close"),
            pl.col("size").sum().alias("volume"),
            (price * pl.col("size")).sum().alias("pv"),
            pl.col("n").sum().alias("trades"),
        )
    )


def _merge(earlier: pl.DataFrame, later: pl.LazyFrame) -> pl.LazyFrame:
    """Fold two partial frames; on equal times the earlier frame's rows come first (stable)."""
    both = pl.concat([earlier.lazy(), later], how="vertical")
    return both.group_by("symbol", "bar").agg(
        pl.col("first_ts").min(),
        pl.col("open").sort_by("first_ts", maintain_order=True).first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("last_ts").max(),
        pl.col("close").sort_by("last_ts", maintain_order=True).last(),
        pl.col("volume").sum(),
        pl.col("pv").sum(),
        pl.col("trades").sum(),
    )


def _finish(partials: pl.DataFrame | pl.LazyFrame, timeframe: str, vendor: str) -> pl.DataFrame:
    """Partial aggregates to canonical BAR_SCHEMA bars sorted by (symbol, ts)."""
    volume = pl.col("volume")
    return (  # one lazy query: eager select, cast and sort would each run one
        partials.lazy()
        .select(
            pl.col("symbol"),
            pl.col("bar").cast(TS_DTYPE).alias("ts"),
            pl.lit(timeframe).alias("timeframe"),
            "open",
            "high",
            "low",
            "close",
            volume,
            pl.when(volume > 0).then(pl.col("pv") / volume).otherwise(None).alias("vwap"),
            pl.when(pl.col("trades") > 0).then(pl.col("trades")).otherwise(None).alias("trades"),
            pl.lit(vendor).alias("vendor"),
            pl.lit(False).alias("imputed"),
        )
        .cast(_BAR_PL_SCHEMA)  # type: ignore[arg-type]
        .sort("symbol", "ts")
        .collect()
    )


def trades_to_bars(
    trades: pl.DataFrame, timeframe: str, vendor: str, *, offset: dt.timedelta = dt.timedelta(0)
) -> pl.DataFrame:
    """Canonical bars (BAR_SCHEMA, sorted by symbol, ts) from a TRADE_SCHEMA frame.

    See the module docstring for the bar rules. `offset` shifts the grid from UTC midnight (e.g. 30
    minutes for 1h bars on a 9:30 session open). Only symbol, ts, price and size are read.
    """
    step = timeframe_ns(timeframe)
    raw = _raw_frame(trades["symbol"], trades["ts"], trades["price"], trades["size"])
    raw = raw.with_columns(pl.lit(1, dtype=pl.Int64).alias("n"))
    return _finish(_partials(raw, step, _offset_ns(offset)), timeframe, vendor)


def _offset_ns(offset: dt.timedelta) -> int:
    return int(offset / dt.timedelta(microseconds=1)) * 1000


class BarAggregator:
    """Incremental trades/ticks → bars for a stream (see the module docstring for the rules).

    Feed micro-batches with `add_trades` / `add_trade_frame` / `add_cumulative_volume_ticks`, call
    `close_until()` to take the finished bars and `flush()` at the end. Not thread-safe.
    """

    def __init__(
        self,
        timeframe: str,
        vendor: str,
        grace_s: float = 0.0,
        *,
        offset: dt.timedelta = dt.timedelta(0),
        compact_rows: int = 250_000,
    ) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.timeframe = timeframe
        self.vendor = vendor
        self._step = timeframe_ns(timeframe)
        self._offset = _offset_ns(offset)
        self._grace = int(grace_s * 1e9)
        self._compact_rows = compact_rows
        # Buffered raw micro-batches (symbol, ts Int64 ns, price, size) with n = 1 (trades) or 0 (ticks).
        self._pending: list[tuple[pl.DataFrame, int]] = []
        self._pending_rows = 0
        self._pending_min: int | None = None  # smallest ts buffered: bounds what close_until can emit
        self._state = pl.DataFrame(schema=_PARTIAL_SCHEMA)
        self._state_min_bar: int | None = None
        self._empty = _finish(self._state, timeframe, vendor)
        self._max_ts: int | None = None
        self._closed_ns: int | None = None  # bars ending at or before this were emitted
        self._late: list[pl.DataFrame] = []
        self._cum: dict[str, tuple[int, float]] = {}  # symbol -> (UTC day, day's max cumulative volume)
        self.late = 0
        self.rows_in = 0

    @property
    def watermark_ns(self) -> int | None:
        """Largest event time seen minus the grace period (None before the first row)."""
        return None if self._max_ts is None else self._max_ts - self._grace

    @property
    def open_bars(self) -> int:
        """Bars started but not emitted yet (after folding the buffered rows)."""
        self._compact()
        return self._state.height

    def add_trades(self, symbols: Array, ts_ns: Array, prices: Array, sizes: Array) -> None:
        """Add a micro-batch of trades given as parallel arrays (lists, numpy arrays or polars Series).

        `ts_ns` is integer nanoseconds since the epoch, numpy datetime64 or a polars Datetime Series.
        """
        self._add(_raw_frame(symbols, ts_ns, prices, sizes), 1)

    def add_trade_frame(self, trades: pl.DataFrame) -> None:
        """Add a TRADE_SCHEMA frame (e.g. `StreamBatch.trades`)."""
        if not trades.height:
            return
        names = trades.columns
        dtypes = trades.dtypes
        if not all(c in names and dtypes[names.index(c)] == d for c, d in _TRADE_RAW_DTYPES):
            # Other dtypes (or missing columns): normalize now, so any error is raised here.
            self._add(_trade_raw(trades), 1)
            return
        # A canonical frame is kept as is and projected to raw rows when folded, once for many
        # micro-batches: building a raw frame per (small) batch costs more than its share of the fold.
        phys = trades.get_column("ts").cast(pl.Int64)  # (to_physical runs a query: far slower)
        self._note(trades.height, phys.min(), phys.max())  # type: ignore[arg-type]
        self._pending.append((trades, _TRADE_FRAME))

    def add_cumulative_volume_ticks(
        self, symbols: Array, ts_ns: Array, prices: Array, cumulative_volumes: Array
    ) -> None:
        """Add ticks whose volume is the day's cumulative traded volume (Kite `volume_traded`).

        Rows are taken in the given (arrival) order; a null cumulative volume adds no volume. The
        volume delta rules are in the module docstring.
        """
        raw = _raw_frame(symbols, ts_ns, prices, None)
        cum = pl.Series("cum", cumulative_volumes, dtype=pl.Float64)
        if not raw.height:
            return
        self._add(raw.with_columns(self._volume_deltas(raw.with_columns(cum))), 0)

    def add_tick_frame(self, ticks: pl.DataFrame) -> None:
        """Add a frame of ticks with columns symbol, ts, price, volume (cumulative; `StreamBatch.ticks`)."""
        if ticks.height:
            priced = ticks.filter(pl.col("price").is_not_null())
            self.add_cumulative_volume_ticks(
                priced["symbol"], priced["ts"], priced["price"], priced["volume"]
            )

    def reset_cumulative(self, symbols: Sequence[str] | None = None) -> None:
        """Forget the cumulative-volume baselines (all, or of `symbols`).

        Call it after a stream reconnect: the next tick per symbol becomes the baseline, so volume
        traded while disconnected is not credited to the first bar after the outage (that range comes
        from the REST backfill instead).
        """
        if symbols is None:
            self._cum.clear()
        else:
            for s in symbols:
                self._cum.pop(s, None)

    def _volume_deltas(self, ticks: pl.DataFrame) -> pl.Series:
        """Volume added by each tick (arrival order), updating the per-symbol baselines."""
        seen = [(s, *self._cum[s]) for s in ticks["symbol"].unique().to_list() if s in self._cum]
        state = pl.DataFrame(
            seen, schema={"symbol": pl.String, "s_day": pl.Int64, "s_cum": pl.Float64}, orient="row"
        )
        day_group = ["symbol", "day"]
        cum = pl.col("cum")
        df = (
            ticks.select("symbol", "ts", "cum")
            .with_row_index("i")
            .with_columns((pl.col("ts") // DAY_NS).alias("day"))
            .join(state, on="symbol", how="left", maintain_order="left")
            .with_columns(
                # A (symbol, day) group that is not the symbol's first in this batch follows a day change.
                (pl.col("i").min().over(day_group) > pl.col("i").min().over("symbol")).alias("later_day"),
            )
            .with_columns(
                pl.when(pl.col("s_day") == pl.col("day"))
                .then(pl.col("s_cum"))
                .when(pl.col("s_day").is_not_null() | pl.col("later_day"))
                .then(0.0)
                .otherwise(cum.drop_nulls().first().over(day_group))  # first tick ever: the baseline
                .alias("seed"),
            )
            .with_columns(
                # Forward fill first: a tick without a volume must not hide the running maximum.
                pl.max_horizontal("seed", cum.forward_fill().cum_max().shift(1).over(day_group)).alias(
                    "base"
                ),
            )
        )
        # Remember, per symbol, its last day and that day's running maximum (including the seed).
        last = (
            df.filter(pl.col("day") == pl.col("day").last().over("symbol"))
            .group_by("symbol")
            .agg(pl.col("day").last(), pl.max_horizontal(pl.col("seed").max(), cum.max()).alias("top"))
        )
        for symbol, day, top in last.iter_rows():
            if top is not None:
                self._cum[symbol] = (day, top)
        return (
            df.select(
                pl.when(cum.is_null()).then(0.0).otherwise((cum - pl.col("base")).clip(lower_bound=0.0))
            )
            .to_series()
            .fill_null(0.0)
            .alias("size")
        )

    def _add(self, raw: pl.DataFrame, n: int) -> None:
        if not raw.height:
            return
        ts = raw["ts"]
        self._pending.append((raw, n))
        self._note(raw.height, ts.min(), ts.max())  # type: ignore[arg-type]

    def _note(self, rows: int, bottom: int, top: int) -> None:
        """Account for `rows` just buffered with times in [bottom, top] (int ns); fold when due."""
        self._max_ts = top if self._max_ts is None else max(self._max_ts, top)
        self._pending_min = bottom if self._pending_min is None else min(self._pending_min, bottom)
        self._pending_rows += rows
        self.rows_in += rows
        if self._pending_rows >= self._compact_rows:
            self._compact()

    def _pending_raw(self) -> pl.DataFrame:
        """The buffered micro-batches as one raw frame (symbol, ts Int64 ns, price, size, n), in order.

        Entries are raw frames with n = 1 (trades) or 0 (ticks), or TRADE_SCHEMA frames (marked `_TRADE_FRAME`)
        kept as added; consecutive entries of one sort are concatenated before they are projected.
        """
        runs: list[tuple[list[pl.DataFrame], int]] = []
        for frame, n in self._pending:
            if runs and runs[-1][1] == n:
                runs[-1][0].append(frame)
            else:
                runs.append(([frame], n))
        parts = []
        for frames, n in runs:
            if n == _TRADE_FRAME:
                try:
                    part = _trade_raw(pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0])
                except pl.exceptions.PolarsError:  # frames with different extra columns or dtypes
                    part = pl.concat([_trade_raw(f) for f in frames], how="vertical")
                n = 1
            else:
                part = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
            parts.append(part.hstack([pl.Series("n", np.full(part.height, n, dtype=np.int64))]))
        return pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]

    def _compact(self) -> None:
        """Fold buffered rows into the partial bars; rows for already-emitted bars become late."""
        if not self._pending:
            return
        raw = self._pending_raw()
        earliest = self._earliest_end(state=False)
        self._pending, self._pending_rows, self._pending_min = [], 0, None
        # Rows can be late only when the earliest buffered bar ended by the closed mark (the usual
        # stream has none: skip the filter then).
        if self._closed_ns is not None and (earliest is None or earliest <= self._closed_ns):
            is_late = (_bar_open(self._step, self._offset) + self._step) <= self._closed_ns
            late = raw.filter(is_late)
            if late.height:
                self.late += late.height
                self._late.append(late.select("symbol", pl.col("ts").cast(TS_DTYPE), "price", "size"))
                raw = raw.filter(~is_late)
        partials = _partials(raw, self._step, self._offset)
        self._set_state((_merge(self._state, partials) if self._state.height else partials).collect())

    def _set_state(self, state: pl.DataFrame) -> None:
        self._state = state
        self._state_min_bar = state["bar"].min() if state.height else None  # type: ignore[assignment]

    def _earliest_end(self, *, state: bool = True) -> int | None:
        """End of the earliest open bar (buffered, or folded too with `state`), None when nothing is open."""
        ends = []
        if self._pending_min is not None:
            shifted = self._pending_min - self._offset
            ends.append(shifted - shifted % self._step + self._offset + self._step)
        if state and self._state_min_bar is not None:
            ends.append(self._state_min_bar + self._step)
        return min(ends) if ends else None

    def close_until(self, watermark_ns: int | None = None) -> pl.DataFrame:
        """Emit the bars whose interval ended at or before `watermark_ns` (default: `watermark_ns`
        property, i.e. max event time seen minus grace). Returns BAR_SCHEMA rows, possibly none."""
        mark = self.watermark_ns if watermark_ns is None else watermark_ns
        if mark is None:
            return self._empty
        earliest = self._earliest_end()
        if earliest is None or mark < earliest:
            # Nothing can close: skip folding (the common case when called after every frame). Raising
            # the closed mark is safe: every buffered row belongs to a bar ending after it.
            self._closed_ns = mark if self._closed_ns is None else max(self._closed_ns, mark)
            return self._empty
        self._compact()
        self._closed_ns = mark if self._closed_ns is None else max(self._closed_ns, mark)
        done = (pl.col("bar") + self._step) <= mark
        out = self._state.filter(done)
        self._set_state(self._state.filter(~done))
        return self._emit(out)

    def flush(self) -> pl.DataFrame:
        """Emit every bar, finished or not (end of stream); later rows for them count as late."""
        self._compact()
        out = self._state
        self._set_state(self._state.clear())
        if out.height:
            end = int(out["bar"].max()) + self._step  # type: ignore[arg-type]
            self._closed_ns = end if self._closed_ns is None else max(self._closed_ns, end)
        return self._emit(out)

    def _emit(self, partials: pl.DataFrame) -> pl.DataFrame:
        return _finish(partials, self.timeframe, self.vendor) if partials.height else self._empty

    @property
    def late_trades(self) -> pl.DataFrame:
        """Late rows not yet taken (symbol, ts, price, size; size = volume delta for ticks)."""
        if not self._late:
            return pl.DataFrame(schema=_LATE_SCHEMA)
        if len(self._late) > 1:
            self._late = [pl.concat(self._late, how="vertical")]
        return self._late[0]

    def take_late_trades(self) -> pl.DataFrame:
        """Return the late rows not yet taken and forget them (keeps a long stream's memory bounded)."""
        out = self.late_trades
        self._late = []
        return out
