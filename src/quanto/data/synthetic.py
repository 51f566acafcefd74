"""Offline `synthetic` vendor: seeded, realistic 1-minute bars on the XNYS calendar.

The model, per symbol:

- Regular-hours minutes of every XNYS session (holidays skipped, half days close at 13:00 ET).
- Minute log returns `r = sigma_min * s(x) * sqrt(h) * z`, where `h` follows a unit-mean GARCH(1,1)
  (volatility clustering), `s(x)` is an intraday U-shaped volatility profile (x = position in the
  session) and `sigma_min` comes from `SyntheticSpec.annual_vol`.
- An overnight gap at each session open, scaled by the same conditional volatility.
- Each minute is built from `SUBSTEPS` finer increments, so high/low are the extremes of a real path
  (high >= max(open, close), low <= min(open, close)) and vwap is a volume-weighted mean of that path.
- Volume follows a U-shaped ("smile") intraday profile with lognormal noise and rises with volatility;
  trades = volume / a noisy average trade size.
- A share `bad_tick_rate` of rows is then corrupted on purpose (see `FAULT_KINDS`) so validation has
  something to catch; `generate_minute_bars_with_faults` reports what was injected.

Each symbol draws from its own stream seeded by SHA-256 of (seed, symbol), so adding a symbol never
changes the others. Bars are a function of (spec, symbol, start, end): a different range starts a new
path at `start_price`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from quanto.config.models import SyntheticSpec
from quanto.data.schemas import conform_bars, empty_bars

VENDOR = "synthetic"
TIMEFRAME = "1min"
CALENDAR = "XNYS"

FAULT_KINDS = (
    "high_below_max",
    "low_above_min",
    "non_positive_price",
    "negative_volume",
    "duplicate_exact",
    "duplicate_conflict",
)
FAULT_COLUMNS = ("symbol", "ts", "kind")

# Model constants. SyntheticSpec holds what a job file may change; these shape the stylized facts.
TRADING_DAYS_PER_YEAR = 252
MINUTES_PER_DAY = 390
GARCH_ALPHA = 0.05  # reaction to the last squared shock
GARCH_BETA = 0.94  # persistence 0.99 per minute: volatility clusters last about an hour
GARCH_CHUNK = 256  # minutes solved in closed form at once (keeps exp(cumsum log a) finite)
OVERNIGHT_VARIANCE_SHARE = 0.2  # share of daily variance that arrives as the opening gap
SUBSTEPS = 8  # intra-minute path points used for high, low and vwap
VOL_SMILE = (1.2, 0.4, 0.06)  # extra volatility at the open, at the close, decay (session fraction)
VOLUME_SMILE = (2.0, 1.5, 0.08)  # extra volume at the open, at the close, decay (session fraction)
VOLUME_NOISE_SIGMA = 0.5  # lognormal noise of minute volume
VOLUME_VOL_ELASTICITY = 1.0  # volume ~ (conditional vol / average vol) ** elasticity
MEAN_MINUTE_VOLUME = 5_000.0  # shares per minute, before the per-symbol level
SYMBOL_VOLUME_SIGMA = 0.7  # lognormal dispersion of the per-symbol volume level
MEAN_TRADE_SIZE = 120.0  # shares per trade
TRADE_SIZE_SIGMA = 0.3
FAULT_MOVE = (0.0005, 0.005)  # relative size of price corruptions and conflicting closes

_NS_PER_MINUTE = 60 * 1_000_000_000


@lru_cache(maxsize=8)
def _xnys_schedule(first_year: int, last_year: int) -> pd.DataFrame:
    """XNYS session schedule (open/close in UTC) for whole calendar years, cached."""
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        # exchange_calendars trips pandas' own deprecation warnings on construction; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        cal = xcals.get_calendar(CALENDAR, start=f"{first_year}-01-01", end=f"{last_year}-12-31")
    return cal.schedule[["open", "close"]].copy()


def _session_minutes(start: dt.date, end: dt.date) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minute open times (UTC ns), position within the session in (0, 1), and session-start flags."""
    sched = _xnys_schedule(start.year, end.year)
    days = sched.index
    sched = sched[(days >= pd.Timestamp(start)) & (days < pd.Timestamp(end))]
    opens = pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8
    closes = pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8
    counts = (closes - opens) // _NS_PER_MINUTE
    total = int(counts.sum())
    first = np.zeros(total, dtype=bool)
    starts = np.cumsum(counts) - counts
    first[starts] = True
    minute_no = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    ts = np.repeat(opens, counts) + minute_no * _NS_PER_MINUTE
    position = (minute_no + 0.5) / np.repeat(counts, counts)
    return ts, position, first


def _u_profile(position: np.ndarray, first: np.ndarray, shape: tuple[float, float, float]) -> np.ndarray:
    """U-shaped intraday profile, scaled to mean 1 within each session (half days included)."""
    at_open, at_close, decay = shape
    raw = 1.0 + at_open * np.exp(-position / decay) + at_close * np.exp(-(1.0 - position) / decay)
    session = np.cumsum(first) - 1
    means = np.bincount(session, weights=raw) / np.bincount(session)
    return raw / means[session]


def _garch_variance(z: np.ndarray) -> np.ndarray:
    """Unit-mean GARCH(1,1) variance h driven by standard normal shocks z (vectorized).

    h[t] = omega + (alpha z[t-1]^2 + beta) h[t-1] is affine with random slope a, so within a chunk
    h[s+k] = P_k (h[s] + omega * sum_{i=1..k} 1/P_i) with P_k = prod_{j<k} a[s+j]. Chunks keep P finite;
    only the scalar carry between chunks is a Python loop.
    """
    n = len(z)
    omega = 1.0 - GARCH_ALPHA - GARCH_BETA  # unconditional variance 1
    n_chunks = -(-n // GARCH_CHUNK)
    pad = n_chunks * GARCH_CHUNK - n
    a = GARCH_ALPHA * np.concatenate([z, np.zeros(pad)]) ** 2 + GARCH_BETA
    log_a = np.log(a).reshape(n_chunks, GARCH_CHUNK)
    # log_p[:, k] = sum of log a over the first k steps of the chunk (k = 0 .. CHUNK-1).
    log_p = np.concatenate([np.zeros((n_chunks, 1)), np.cumsum(log_a[:, :-1], axis=1)], axis=1)
    p = np.exp(log_p)
    acc = p * np.concatenate([np.zeros((n_chunks, 1)), np.cumsum(np.exp(-log_p[:, 1:]), axis=1)], axis=1)
    # Carry: the state entering the next chunk, from the chunk's last step.
    p_end = p[:, -1] * a.reshape(n_chunks, GARCH_CHUNK)[:, -1]
    acc_end = acc[:, -1] * a.reshape(n_chunks, GARCH_CHUNK)[:, -1] + 1.0
    h0 = np.empty(n_chunks)
    h = 1.0
    for c in range(n_chunks):
        h0[c] = h
        h = p_end[c] * h + omega * acc_end[c]
    return (p * h0[:, None] + omega * acc).ravel()[:n]


def _round_price(p: np.ndarray) -> np.ndarray:
    """Round to the US tick: cents at or above $1, 1/100 cent below; never to zero (monotone)."""
    return np.maximum(np.where(p >= 1.0, np.round(p, 2), np.round(p, 4)), 1e-4)


def _symbol_seed(seed: int, symbol: str) -> np.random.SeedSequence:
    """A seed sequence from SHA-256 of (seed, symbol): stable across processes, unlike hash()."""
    digest = hashlib.sha256(f"{seed}\x00{symbol}".encode()).digest()
    return np.random.SeedSequence(int.from_bytes(digest[:16], "little"))


def _clean_bars(
    rng: np.random.Generator,
    ts: np.ndarray,
    first: np.ndarray,
    vol_profile: np.ndarray,
    volume_profile: np.ndarray,
    spec: SyntheticSpec,
) -> dict[str, np.ndarray]:
    """One symbol's clean minute bars as column arrays (profiles are the per-minute U shapes)."""
    n = len(ts)
    daily_var = spec.annual_vol**2 / TRADING_DAYS_PER_YEAR
    sigma_min = np.sqrt((1.0 - OVERNIGHT_VARIANCE_SHARE) * daily_var / MINUTES_PER_DAY)
    sigma_gap = np.sqrt(OVERNIGHT_VARIANCE_SHARE * daily_var)
    volume_level = MEAN_MINUTE_VOLUME * np.exp(SYMBOL_VOLUME_SIGMA * rng.standard_normal())

    # Prices. Sub-steps are laid out (SUBSTEPS, n) so reductions run over contiguous rows (fast).
    # A minute's shock is the scaled sum of its sub-step shocks, so the fine path ends at the close.
    w = rng.standard_normal((SUBSTEPS, n))
    z = w.sum(axis=0) / np.sqrt(SUBSTEPS)
    vol = np.sqrt(_garch_variance(z))
    path = np.cumsum(w, axis=0)
    path *= sigma_min * np.sqrt(vol_profile) * vol / np.sqrt(SUBSTEPS)
    gap = np.where(first, sigma_gap * vol * rng.standard_normal(n), 0.0)
    gap[0] = 0.0  # the first bar opens exactly at start_price
    ret = path[-1]
    open_log = np.log(spec.start_price) + np.cumsum(gap + ret) - ret
    open_ = _round_price(np.exp(open_log))
    close = _round_price(np.exp(open_log + ret))
    # Rounding is monotone, so high/low stay outside open/close; the max/min guard float ties anyway.
    high = _round_price(np.exp(open_log + np.maximum(path.max(axis=0), 0.0)))
    high = np.maximum(high, np.maximum(open_, close))
    low = _round_price(np.exp(open_log + np.minimum(path.min(axis=0), 0.0)))
    low = np.minimum(low, np.minimum(open_, close))
    # vwap: volume-weighted (geometric) mean of the fine path, hence inside [low, high].
    weights = rng.random((SUBSTEPS, n))
    vwap = np.exp(open_log + (weights * path).sum(axis=0) / weights.sum(axis=0))
    vwap = np.clip(np.round(vwap, 4), low, high)

    # Volume: intraday smile x volatility x lognormal noise; whole shares, at least one.
    noise = np.exp(VOLUME_NOISE_SIGMA * rng.standard_normal(n) - VOLUME_NOISE_SIGMA**2 / 2)
    volume = volume_level * volume_profile * vol**VOLUME_VOL_ELASTICITY * noise
    volume = np.maximum(np.round(volume), 1.0)
    trade_size = MEAN_TRADE_SIZE * np.exp(TRADE_SIZE_SIGMA * rng.standard_normal(n))
    trades = np.clip(np.round(volume / trade_size), 1, volume).astype(np.int64)
    return {
        "ts": ts,
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "vwap": vwap,
        "trades": trades,
    }


def _inject_faults(
    rng: np.random.Generator, cols: dict[str, np.ndarray], rate: float
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Corrupt round(rate * n) distinct rows, one fault kind each.

    Returns the new columns (duplicates inserted right after their original) and the faulty rows'
    ts and kind codes (indices into FAULT_KINDS), sorted by ts.
    """
    n = len(cols["ts"])
    n_bad = min(int(round(rate * n)), n)
    if n_bad == 0:
        return cols, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    rows = np.sort(rng.choice(n, size=n_bad, replace=False))
    kinds = rng.integers(0, len(FAULT_KINDS), size=n_bad)
    move = rng.uniform(*FAULT_MOVE, size=n_bad)
    cols = {k: v.copy() for k, v in cols.items()}
    fault_ts = cols["ts"][rows]

    def pick(kind: str) -> tuple[np.ndarray, np.ndarray]:
        mask = kinds == FAULT_KINDS.index(kind)
        return rows[mask], move[mask]

    r, m = pick("high_below_max")
    cols["high"][r] = np.maximum(cols["open"][r], cols["close"][r]) * (1.0 - m)
    r, m = pick("low_above_min")
    cols["low"][r] = np.minimum(cols["open"][r], cols["close"][r]) * (1.0 + m)
    r, _ = pick("non_positive_price")
    if len(r):
        column = rng.integers(0, 4, size=len(r))
        negative = rng.random(len(r)) < 0.5
        for j, name in enumerate(("open", "high", "low", "close")):
            hit = column == j
            cols[name][r[hit]] = np.where(negative[hit], -cols[name][r[hit]], 0.0)
    r, _ = pick("negative_volume")
    cols["volume"][r] = -cols["volume"][r]

    # Duplicates: repeat the row, then make the conflicting copy's close differ (kept OHLC-consistent
    # so the copy breaks only the uniqueness rule).
    exact, _ = pick("duplicate_exact")
    conflict, m = pick("duplicate_conflict")
    repeats = np.ones(n, dtype=np.int64)
    repeats[exact] = 2
    repeats[conflict] = 2
    take = np.repeat(np.arange(n), repeats)
    cols = {k: v[take] for k, v in cols.items()}
    new_pos = np.cumsum(repeats) - 1  # position of the last copy of each original row
    copies = new_pos[conflict]
    sign = np.where(rng.random(len(conflict)) < 0.5, -1.0, 1.0)
    cols["close"][copies] = cols["close"][copies] * (1.0 + sign * m)
    cols["high"][copies] = np.maximum(cols["high"][copies], cols["close"][copies])
    cols["low"][copies] = np.minimum(cols["low"][copies], cols["close"][copies])
    return cols, fault_ts, kinds


def generate_minute_bars_with_faults(
    symbols: list[str], start: dt.date, end: dt.date, spec: SyntheticSpec
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic 1-minute bars for every XNYS session in [start, end), plus the injected faults.

    Returns `(bars, faults)`: canonical bars sorted by (symbol, ts) with duplicate rows adjacent, and
    a frame (symbol, ts, kind) with one row per corrupted bar, kind one of `FAULT_KINDS`. For the
    duplicate kinds, (symbol, ts) names the pair of rows. With `bad_tick_rate == 0` faults is empty.
    """
    symbols = sorted(set(symbols))
    ts, position, first = _session_minutes(start, end) if end > start else (np.empty(0),) * 3
    if not len(ts) or not symbols:
        return conform_bars(empty_bars()), _fault_frame([], [], [])
    vol_profile = _u_profile(position, first, VOL_SMILE)
    volume_profile = _u_profile(position, first, VOLUME_SMILE)
    parts: list[dict[str, np.ndarray]] = []
    fault_symbols, fault_ts, fault_kinds = [], [], []
    for symbol in symbols:
        # Separate child streams: the clean path never depends on bad_tick_rate.
        price_ss, fault_ss = _symbol_seed(spec.seed, symbol).spawn(2)
        cols = _clean_bars(np.random.default_rng(price_ss), ts, first, vol_profile, volume_profile, spec)
        cols, bad_ts, bad_kinds = _inject_faults(np.random.default_rng(fault_ss), cols, spec.bad_tick_rate)
        parts.append(cols)
        fault_symbols.append(np.full(len(bad_ts), symbol, dtype=object))
        fault_ts.append(bad_ts)
        fault_kinds.append(np.asarray(FAULT_KINDS, dtype=object)[bad_kinds])
    # Build the frame once from concatenated arrays: much cheaper than concatenating frames.
    lengths = [len(p["ts"]) for p in parts]
    bars = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    bars.insert(0, "symbol", np.repeat(np.asarray(symbols, dtype=object), lengths))
    bars["ts"] = pd.to_datetime(bars["ts"], unit="ns", utc=True)
    bars["timeframe"] = TIMEFRAME
    bars["vendor"] = VENDOR
    bars["imputed"] = False
    faults = _fault_frame(
        np.concatenate(fault_symbols), np.concatenate(fault_ts), np.concatenate(fault_kinds)
    )
    return conform_bars(bars), faults


def _fault_frame(symbols: ArrayLike, ts: ArrayLike, kinds: ArrayLike) -> pd.DataFrame:
    """The injected-faults frame: symbol (str), ts (UTC), kind (str)."""
    return pd.DataFrame(
        {
            "symbol": pd.Series(symbols, dtype=object).astype(str),
            "ts": pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="ns", utc=True),
            "kind": pd.Series(kinds, dtype=object).astype(str),
        }
    )


def generate_minute_bars(
    symbols: list[str], start: dt.date, end: dt.date, spec: SyntheticSpec
) -> pd.DataFrame:
    """Synthetic canonical 1-minute bars (vendor `synthetic`) for every XNYS session in [start, end).

    Regular hours only; `ts` is the minute's open in UTC; rows sorted by (symbol, ts). A share
    `spec.bad_tick_rate` of rows is corrupted on purpose (see `generate_minute_bars_with_faults`).
    The same spec, symbols and range always give identical bars.
    """
    return generate_minute_bars_with_faults(symbols, start, end, spec)[0]
