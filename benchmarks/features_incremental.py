"""Benchmark: a nightly top-up of the default feature set through the incremental feature store.

Dataset: the daily panel of features_throughput.py (500 symbols x 2,520 business days, seeded). The
store is first filled with every bar but the last day's; each timed run starts from a copy of that
store and adds the last day, as the nightly pipeline does.

- ours: `FeatureStore.compute(all bars)`: read the stored rows, hash the bars to find the stored
  prefix, compute one new row per symbol for bounded features (from `lookback` rows back) and the
  whole history of history-dependent ones (EMA, RSI, ...), write one chunk and the coverage.
- default set (67 features, 29 history-dependent): the peer is what a user without a store does,
  recompute the panel with raw TA-Lib per symbol (features_throughput.talib_per_symbol).
- Alpha158 (158 features, all bounded): no installable library computes Alpha158 on Python 3.11
  without Qlib's own data format, so the peer is our own full recompute (`compute_features`).

The top-up's output must equal the full recompute (engine.same_values, rtol 1e-7) or the benchmark
fails. $QUANTO_BENCH_SCALE scales the symbol count, $QUANTO_BENCH_REPS the timed repetitions (median).
One JSON line per comparison (DESIGN.md section 9); progress on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from features_throughput import DAILY_DAYS, build_daily, talib_per_symbol
from quanto.features.engine import same_values
from quanto.features.registry import DEFAULT_FEATURES, REGISTRY, compute_features, expand_names
from quanto.features.store import FeatureStore
from quanto.lake.storage import Lake

SCALE = float(os.environ.get("QUANTO_BENCH_SCALE", 1.0))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
SYMBOLS = max(1, round(500 * SCALE))
SCOPE = {"bench": "daily"}


def log(msg: str) -> None:
    print(f"[features_incremental] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def top_up(bars, names: list[str], peer_name: str, peer) -> dict:
    """Median seconds of a one-day top-up through the store vs `peer` recomputing everything."""
    specs = [REGISTRY[n] for n in names]
    last = bars["ts"].max()
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed"
        log(f"filling the store: {len(names)} features, {SYMBOLS} symbols x {DAILY_DAYS - 1} days")
        FeatureStore(Lake(seed), specs, SCOPE).compute(bars[bars["ts"] < last])
        ours, theirs = [], []
        for rep in range(REPS + 1):  # rep 0 warms up and checks equality
            lake = Path(tmp) / f"run{rep}"
            shutil.copytree(seed, lake)
            s, (table, run) = timed(lambda lake=lake: FeatureStore(Lake(lake), specs, SCOPE).compute(bars))
            p, reference = timed(lambda: peer(bars))
            shutil.rmtree(lake)
            if rep == 0:
                if run.stored_features:
                    assert run.rows_computed == SYMBOLS and run.symbols_extended == SYMBOLS, run
                full = compute_features(bars, names)
                bad = [n for n in names if not same_values(table[n].to_numpy(), full[n].to_numpy()).all()]
                if bad:
                    raise AssertionError(f"top-up differs from a full recompute: {bad}")
                stored, history = run.stored_features, run.history_features
                continue
            ours.append(s)
            theirs.append(p)
            log(f"rep {rep}: top-up {s:.3f}s, {peer_name} {p:.3f}s")
    ours_s, peer_s = statistics.median(ours), statistics.median(theirs)
    return {
        "n": len(bars),
        "ours_s": round(ours_s, 3),
        "peer": peer_name,
        "peer_s": round(peer_s, 3),
        "ratio": round(peer_s / ours_s, 2),
        "unit_rate": round(len(bars) / ours_s, 1),
        "features": len(names),
        "stored_features": stored,
        "history_features": history,
        "rows_computed": SYMBOLS,
    }


def main() -> None:
    import structlog

    # The store logs its coverage; stdout is for the JSON result lines only.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    bars = build_daily(SYMBOLS, DAILY_DAYS)
    cases = (
        ("features_default_daily_top_up", list(DEFAULT_FEATURES), "talib-per-symbol (full recompute)", talib_per_symbol),
        ("features_alpha158_daily_top_up", expand_names(["family:alpha158"]), "quanto full recompute",
         lambda b: compute_features(b, expand_names(["family:alpha158"]))),
    )  # fmt: skip
    for bench, names, peer_name, peer in cases:
        print(json.dumps({"bench": bench, **top_up(bars, names, peer_name, peer)}), flush=True)


if __name__ == "__main__":
    main()
