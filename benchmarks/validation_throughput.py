"""Benchmark: `validate_bars` (polars) vs the same bar checks written as plain pandas operations.

Input: N synthetic minute bars (N = $QUANTO_BENCH_ROWS, default 10 million) from the seeded generator
with bad_tick_rate 0.0005 (bad prices, negative volume, exact and conflicting duplicates), built once.
Both sides run every bar rule at its default policy (duplicate_conflict, price_positive, ohlc,
volume_nonnegative quarantine; out_of_order, spike, stale warn): exact duplicates dropped, conflicting
keys, OHLC/price/volume masks, per-series rolling mean/std of the previous closes (spike), per-series
run lengths of identical closes (stale), input-order check, sort by (symbol, timeframe, ts).
Ours gets a polars frame (what the validate stage reads from the lake) and, reported apart, the pandas
frame (conversion included); the peer gets the pandas frame. Reps alternate ours/peer so machine
noise hits both; medians of REPS after one warm-up each. The two must agree on the number of
quarantined rows and flags per rule (sanity), or the benchmark fails.

Prints one JSON line (DESIGN.md section 9); progress goes to stderr. Goal: ratio >= 5.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd
import polars as pl

from quanto.config.models import BarRules, SyntheticSpec
from quanto.data.synthetic import generate_minute_bars
from quanto.validation.bars import validate_bars

N = int(os.environ.get("QUANTO_BENCH_ROWS", 10_000_000))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
BAD_TICK_RATE = 0.0005
DAYS = 250  # about one trading year of 390-minute sessions per symbol
START = dt.date(2023, 1, 3)
KEY = ["symbol", "timeframe", "ts"]
SERIES = ["symbol", "timeframe"]


def log(msg: str) -> None:
    print(f"[validation_throughput] {msg}", file=sys.stderr, flush=True)


def build_bars(n: int) -> pd.DataFrame:
    """n synthetic minute bars: enough symbols of ~DAYS sessions, cut to exactly n rows."""
    per_symbol = DAYS * 390
    symbols = [f"S{i:04d}" for i in range(max(1, math.ceil(n / per_symbol)))]
    end = START + dt.timedelta(days=math.ceil(DAYS * 7 / 5) + 14)  # weekends and holidays
    bars = generate_minute_bars(symbols, START, end, SyntheticSpec(seed=11, bad_tick_rate=BAD_TICK_RATE))
    if len(bars) < n:
        raise SystemExit(f"generator gave {len(bars)} rows, fewer than {n}")
    return bars.iloc[:n].reset_index(drop=True)


def _num(s: pd.Series) -> pd.Series:
    return s.astype(str).str.removesuffix(".0")


def _ohlc_reason(q: pd.DataFrame) -> pd.Series:
    top, bottom = q[["open", "close"]].max(axis=1), q[["open", "close"]].min(axis=1)
    reason = "high " + _num(q["high"]) + " < low " + _num(q["low"])
    reason = reason.where(
        ~(q["low"] > bottom), "low " + _num(q["low"]) + " > min(open, close) " + _num(bottom)
    )
    return reason.where(~(q["high"] < top), "high " + _num(q["high"]) + " < max(open, close) " + _num(top))


def pandas_validate(df: pd.DataFrame, rules: BarRules) -> dict:
    """The bar rules in plain pandas (the peer): returns accepted, quarantined, flags, counts."""
    rows_in = len(df)
    df = df.drop_duplicates(keep="first")
    duplicates = rows_in - len(df)

    prev_ts = df.groupby(SERIES, sort=False)["ts"].shift()
    out_of_order = (df["ts"] < prev_ts).to_numpy()  # an equal ts is a duplicate, not disorder
    o, h, lo, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    prices = df[["open", "high", "low", "close"]].to_numpy()
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    masks = {
        "duplicate_conflict": df.duplicated(KEY, keep=False).to_numpy(),
        "price_positive": ~(np.isfinite(prices) & (prices > 0)).all(axis=1),
        "ohlc": (h < top) | (lo > bottom) | (h < lo),
        "volume_nonnegative": ~(np.isfinite(v) & (v >= 0)),
    }
    rule = np.select(list(masks.values()), list(masks), default="")  # first failing rule wins
    bad = rule != ""
    quarantined = df[bad].copy()
    quarantined["rule"] = rule[bad]
    quarantined["reason"] = np.select(
        [quarantined["rule"] == r for r in masks],
        [
            quarantined.groupby(KEY)["ts"].transform("size").astype(str)
            + " rows share (symbol, timeframe, ts) with different values",
            "prices must be finite and > 0: open="
            + _num(quarantined["open"])
            + " high="
            + _num(quarantined["high"])
            + " low="
            + _num(quarantined["low"])
            + " close="
            + _num(quarantined["close"]),
            _ohlc_reason(quarantined),
            "volume must be >= 0, got " + _num(quarantined["volume"]),
        ],
        default="",
    )
    flag_parts = [
        df[~bad & out_of_order][["symbol", "ts"]].assign(rule="out_of_order", reason="ts before previous")
    ]

    acc = df[~bad].sort_values(KEY, kind="stable").reset_index(drop=True)
    groups = acc.groupby(SERIES, sort=False)["close"]
    prev_close = groups.shift()
    window = rules.spike.window
    rolling = prev_close.groupby([acc["symbol"], acc["timeframe"]], sort=False).rolling(
        window, min_periods=window
    )
    mean = rolling.mean().reset_index(level=[0, 1], drop=True).sort_index()
    std = rolling.std().reset_index(level=[0, 1], drop=True).sort_index()
    spike = (acc["close"] - mean).abs() > rules.spike.k_sigma * std
    flag_parts.append(
        acc.loc[spike, ["symbol", "ts"]].assign(
            rule="spike", reason="close " + _num(acc.loc[spike, "close"]) + " is a spike"
        )
    )
    run_start = (acc["close"] != prev_close) | prev_close.isna()
    run = acc.groupby(run_start.cumsum(), sort=False).cumcount() + 1
    stale = run >= rules.stale.bars
    flag_parts.append(
        acc.loc[stale, ["symbol", "ts"]].assign(
            rule="stale", reason="close " + _num(acc.loc[stale, "close"]) + " unchanged"
        )
    )
    flags = pd.concat(flag_parts, ignore_index=True)
    if len(acc) + len(quarantined) + duplicates != rows_in:
        raise AssertionError("peer: row conservation broken")
    return {"accepted": acc, "quarantined": quarantined, "flags": flags, "duplicates_dropped": duplicates}


def _by_rule(frame) -> dict[str, int]:
    if isinstance(frame, pl.DataFrame):
        return dict(frame.group_by("rule").len().sort("rule").iter_rows())
    return {k: int(v) for k, v in frame["rule"].value_counts().sort_index().items()}


def main() -> None:
    rules = BarRules()
    log(f"building {N:,} synthetic minute bars")
    t0 = time.perf_counter()
    bars_pd = build_bars(N)
    bars_pl = pl.from_pandas(bars_pd)
    log(f"built in {time.perf_counter() - t0:.1f} s ({bars_pd['symbol'].nunique()} symbols)")

    ours_s, ours_pd_s, peer_s = [], [], []
    for rep in range(REPS + 1):  # rep 0 warms up
        t = time.perf_counter()
        ours = validate_bars(bars_pl, rules, source="bench")
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours_from_pd = validate_bars(bars_pd, rules, source="bench")
        ours_pd_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer = pandas_validate(bars_pd, rules)
        peer_s.append(time.perf_counter() - t)
        log(
            f"rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {ours_s[-1]:.2f} s, "
            f"ours from pandas {ours_pd_s[-1]:.2f} s, pandas {peer_s[-1]:.2f} s"
        )
        if rep == 0:
            # Sanity: the same rows quarantined and flagged, rule by rule.
            got = (_by_rule(ours.quarantined), _by_rule(ours.flags), ours.duplicates_dropped)
            want = (_by_rule(peer["quarantined"]), _by_rule(peer["flags"]), peer["duplicates_dropped"])
            log(f"quarantined {got[0]}, flags {got[1]}, duplicates dropped {got[2]}")
            if got != want:
                raise AssertionError(f"ours and the pandas peer disagree: {got} vs {want}")
            if ours_from_pd.counters != ours.counters:
                raise AssertionError("pandas and polars input disagree")
        del ours, ours_from_pd, peer

    ours_med = statistics.median(ours_s[1:])
    peer_med = statistics.median(peer_s[1:])
    print(json.dumps({
        "bench": "validate_bars", "n": N, "ours_s": round(ours_med, 3), "peer": "pandas",
        "peer_s": round(peer_med, 3), "ratio": round(peer_med / ours_med, 2),
        "unit_rate": round(N / ours_med, 1),
        "ours_pandas_input_s": round(statistics.median(ours_pd_s[1:]), 3),
        "goal": "ratio >= 5", "reps": REPS,
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
