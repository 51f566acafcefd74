"""Benchmark: Polygon minute flat files → canonical bars, `read_days` vs a plain pandas loop.

Input: DAYS (= $QUANTO_BENCH_DAYS, default 21: about a month) XNYS sessions from 2024-01-02 of
minute aggregates for TICKERS (= $QUANTO_BENCH_TICKERS, default 3,000) tickers × 390 regular-session
minutes: ~1.17M rows and ~80 MB of CSV per day (~25M rows, ~1.7 GB for 21 days), gzip level 6 as
`tests/fakes/s3.make_flat_file` writes them (seeded: every day is generated, none reused). Built once
into .quanto/bench/flatfiles/ (a local root with the bucket's key layout; about 2 minutes on 2 shared cores)
and reused while the parameters in its manifest.json match.

Ours: `read_days(FlatFileSource(root), days, "1min", workers=WORKERS)`: polars reads each gzip typed
(its own inflate, CRC checked; a file with bad rows would be re-read as text for the quarantine),
per-field checks, canonical BAR_SCHEMA frames, in WORKERS threads (default 2). Reported apart: the
same with one worker (what the threads add).
Peer: for each file `pd.read_csv(path, compression="gzip")` + the same canonical columns (ts from ns,
float volume, nullable trades, constant columns), no bad-row detection.
Both sides drop each day's frame after counting its rows, as an ingest would after writing it.
Reps alternate ours/peer; medians of REPS (default 3) after a one-day warm-up each (a full-month
warm-up pass would double the run time for nothing: nothing is cached across days). Process CPU
seconds are reported too: on a shared machine they show the work apart from the waiting. unit_rate
is ours in decompressed MB/s; goal: >= 3 GB/min of decompressed CSV. With the cache warm a run takes
about 1.5-2 minutes on 2 cores.

Prints one JSON line (DESIGN.md section 9); progress goes to stderr.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import statistics
import string
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

# The flat-file writer lives with the test fakes; the benchmark reuses it rather than copying it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.s3 import make_flat_file  # noqa: E402

from quanto.data.flatfiles import FlatFileSource, flat_file_key, read_days  # noqa: E402

DAYS = int(os.environ.get("QUANTO_BENCH_DAYS", 21))
TICKERS = int(os.environ.get("QUANTO_BENCH_TICKERS", 3000))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
WORKERS = int(os.environ.get("QUANTO_BENCH_WORKERS", 2))
MINUTES = 390
SEED = 2024
FIRST_DAY = dt.date(2024, 1, 2)
ROOT = Path(os.environ.get("QUANTO_HOME", ".quanto")) / "bench" / "flatfiles"
GENERATOR_VERSION = 1  # bump when make_flat_file's output changes


def log(msg: str) -> None:
    print(f"[ingest_flatfiles] {msg}", file=sys.stderr, flush=True)


def sessions(n: int) -> list[dt.date]:
    """The first n XNYS sessions from FIRST_DAY."""
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # exchange_calendars trips pandas' warnings
        cal = xcals.get_calendar(
            "XNYS", start=str(FIRST_DAY), end=str(FIRST_DAY + dt.timedelta(days=n * 2 + 30))
        )
    return [d.date() for d in cal.sessions[:n]]


def ticker_names(n: int) -> list[str]:
    """n distinct tickers: AAA, AAB, ... (four letters past 17,576)."""
    names = itertools.chain(
        ("".join(t) for t in itertools.product(string.ascii_uppercase, repeat=3)),
        ("".join(t) for t in itertools.product(string.ascii_uppercase, repeat=4)),
    )
    return list(itertools.islice(names, n))


def build(days: list[dt.date], tickers: list[str]) -> dict[dt.date, Path]:
    """Write (or reuse) the flat files under ROOT; returns each day's path."""
    manifest = ROOT / "manifest.json"
    params = {
        "version": GENERATOR_VERSION,
        "days": [str(d) for d in days],
        "tickers": len(tickers),
        "seed": SEED,
    }
    paths = {d: ROOT / flat_file_key("1min", d) for d in days}
    if (
        manifest.exists()
        and json.loads(manifest.read_text()) == params
        and all(p.exists() for p in paths.values())
    ):
        return paths

    def write(day: dt.date) -> None:
        f = make_flat_file(day, tickers, "1min", seed=SEED, minutes=MINUTES)
        paths[day].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths[day].with_suffix(".tmp")
        tmp.write_bytes(f.data)
        tmp.replace(paths[day])

    log(f"generating {len(days)} days x {len(tickers):,} tickers into {ROOT} (once)")
    t = time.perf_counter()
    manifest.unlink(missing_ok=True)
    # zlib.compress and polars release the GIL, so two threads use both cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(write, days))
    manifest.write_text(json.dumps(params))
    log(f"generated in {time.perf_counter() - t:.1f} s")
    return paths


def ours(root: Path, days: list[dt.date], workers: int) -> tuple[int, int]:
    """Rows and decompressed bytes of all days through read_days."""
    rows = nbytes = 0
    for _, parsed in read_days(FlatFileSource(str(root)), days, "1min", workers=workers):
        rows += len(parsed.bars)
        nbytes += parsed.bytes_decompressed
    return rows, nbytes


def pandas_day(path: Path) -> pd.DataFrame:
    """One flat file to canonical columns with plain pandas."""
    raw = pd.read_csv(path, compression="gzip")
    return pd.DataFrame(
        {
            "symbol": raw["ticker"].astype(str),
            "ts": pd.to_datetime(raw["window_start"], unit="ns", utc=True),
            "timeframe": "1min",
            "open": raw["open"].astype("float64"),
            "high": raw["high"].astype("float64"),
            "low": raw["low"].astype("float64"),
            "close": raw["close"].astype("float64"),
            "volume": raw["volume"].astype("float64"),
            "vwap": float("nan"),
            "trades": raw["transactions"].astype("Int64"),
            "vendor": "polygon",
            "imputed": False,
        }
    )


def peer(paths: list[Path]) -> int:
    """Rows of all days through the pandas loop."""
    return sum(len(pandas_day(p)) for p in paths)


def main() -> None:
    days = sessions(DAYS)
    paths = build(days, ticker_names(TICKERS))
    ordered = [paths[d] for d in days]
    compressed = sum(p.stat().st_size for p in ordered)
    log(f"{len(days)} files, {compressed / 1e6:,.0f} MB gzip")

    # Sanity: both sides make the same bars of one day.
    from polars.testing import assert_frame_equal

    from quanto.data.schemas import BAR_SCHEMA, conform

    [(_, first)] = list(read_days(FlatFileSource(str(ROOT)), days[:1], "1min"))
    assert_frame_equal(first.bars, conform(pandas_day(ordered[0]), BAR_SCHEMA, "pandas"))
    del first

    # Warm-up: one day each (imports, allocator, page cache of the first file).
    ours(ROOT, days[:1], WORKERS)
    peer(ordered[:1])
    ours_s, peer_s, ours_cpu, peer_cpu = [], [], [], []
    rows = nbytes = 0
    for rep in range(REPS):
        t, c = time.perf_counter(), time.process_time()
        rows, nbytes = ours(ROOT, days, WORKERS)
        ours_s.append(time.perf_counter() - t)
        ours_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        peer_rows = peer(ordered)
        peer_s.append(time.perf_counter() - t)
        peer_cpu.append(time.process_time() - c)
        if peer_rows != rows:
            raise AssertionError(f"ours made {rows} rows, pandas {peer_rows}")
        log(
            f"rep {rep}: ours {ours_s[-1]:.2f} s ({nbytes / 1e6 / ours_s[-1]:,.0f} MB/s, cpu {ours_cpu[-1]:.1f} s), "
            f"pandas {peer_s[-1]:.2f} s (cpu {peer_cpu[-1]:.1f} s)"
        )
    # Threads' gain: one worker, a single pass (it only informs the choice of workers).
    t = time.perf_counter()
    ours(ROOT, days, 1)
    one_worker_s = time.perf_counter() - t
    log(f"ours with 1 worker: {one_worker_s:.2f} s")

    ours_med = statistics.median(ours_s)
    peer_med = statistics.median(peer_s)
    mb_per_s = nbytes / 1e6 / ours_med
    print(json.dumps({
        "bench": "flatfiles_minute_month", "n": rows, "ours_s": round(ours_med, 3),
        "peer": "pandas_read_csv_loop", "peer_s": round(peer_med, 3), "ratio": round(peer_med / ours_med, 2),
        "unit_rate": round(mb_per_s, 1), "gb_per_min": round(mb_per_s * 60 / 1000, 2),
        "goal": "gb_per_min >= 3", "days": len(days), "tickers": TICKERS, "workers": WORKERS,
        "decompressed_mb": round(nbytes / 1e6, 1), "gzip_mb": round(compressed / 1e6, 1),
        "ours_1_worker_s": round(one_worker_s, 3), "reps": REPS,
        "ours_cpu_s": round(statistics.median(ours_cpu), 2), "peer_cpu_s": round(statistics.median(peer_cpu), 2),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
