"""Block bootstrap of a return series: confidence intervals and a stress distribution of its statistics.

Returns of a strategy are autocorrelated and volatility clusters, so resampling single periods (the iid
bootstrap) understates how much total return, Sharpe and drawdown could have differed. A block bootstrap
resamples whole runs of consecutive periods instead, keeping the dependence inside each block:

- **stationary** (Politis & Romano 1994): blocks start at uniformly random periods and have geometric
  lengths with mean `block`; the resampled series is itself stationary.
- **circular** (Politis & Romano 1992): blocks of exactly `block` periods starting at uniformly random
  periods. Both wrap around the end of the series so every period is equally likely to be drawn.

Each path is n periods long (n = len(returns)) and is scored with `compounded_statistics`, the
definitions of `performance_metrics`. Intervals are percentile intervals of the paths' statistics;
the stress distribution is their low tail (the 1 % / 5 % worst paths). A fixed seed gives the same
paths on every machine (numpy's PCG64 generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from quanto.backtest.metrics import compounded_statistics, finite_or_none

Method = Literal["stationary", "circular"]
METHODS: tuple[str, ...] = ("stationary", "circular")
STATISTICS: tuple[str, ...] = ("total_return", "cagr", "sharpe", "max_drawdown")
STRESS_QUANTILES: tuple[float, ...] = (0.01, 0.05)

# Paths × periods resampled at once: bounds memory (8 bytes each, a few copies) for long series.
_CHUNK_ELEMENTS = 2_000_000


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def optimal_block_length(returns: np.ndarray, method: Method = "stationary") -> float:
    """Politis & White (2004, corrected by Patton, Politis & White 2009) block length for `method`,
    as estimated by the `arch` package; at least 1."""
    from arch.bootstrap import optimal_block_length as politis_white

    r = np.asarray(returns, dtype=float)
    if r.size < 10 or np.ptp(r) == 0:
        return 1.0  # too short or constant to estimate any dependence
    return max(1.0, float(politis_white(r)[_check_method(method)].iloc[0]))


def bootstrap_indices(
    n: int, block: float, n_paths: int, rng: np.random.Generator, method: Method = "stationary"
) -> np.ndarray:
    """(n_paths × n) indices into a series of n periods, resampled in blocks (see the module docstring).

    stationary: `block` is the mean block length (any real ≥ 1; 1 is the iid bootstrap). circular:
    blocks of ceil(`block`) periods.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not block >= 1:
        raise ValueError(f"block must be >= 1, got {block}")
    pos = np.arange(n)
    if _check_method(method) == "circular":
        length = math.ceil(block)
        starts = rng.integers(0, n, size=(n_paths, -(-n // length)))
        return (starts[:, pos // length] + pos % length) % n
    # A new block starts at period 0 and afterwards with probability 1/block at each period; inside a
    # block the index advances by one from the block's random start.
    new_block = rng.random((n_paths, n)) < 1.0 / block
    new_block[:, 0] = True
    starts = rng.integers(0, n, size=(n_paths, n))
    block_start = np.maximum.accumulate(np.where(new_block, pos, 0), axis=1)
    return (np.take_along_axis(starts, block_start, axis=1) + pos - block_start) % n


@dataclass(frozen=True)
class BootstrapResult:
    """The statistics of the observed series (`estimates`) and of every resampled path (`samples`:
    one row per path, columns `STATISTICS`; NaN where a path's statistic is undefined)."""

    method: str
    block: float
    n_paths: int
    seed: int
    confidence: float
    periods_per_year: float
    n: int
    estimates: dict[str, float | None]
    samples: pd.DataFrame

    def interval(self, statistic: str) -> tuple[float | None, float | None]:
        """Percentile interval of `statistic` at `confidence`: its (1 − c)/2 and (1 + c)/2 quantiles
        over the paths where it is defined."""
        values = self._values(statistic)
        if not values.size:
            return None, None
        tail = (1.0 - self.confidence) / 2.0
        lower, upper = np.quantile(values, [tail, 1.0 - tail])
        return finite_or_none(lower), finite_or_none(upper)

    def stress(
        self, statistic: str, quantiles: tuple[float, ...] = STRESS_QUANTILES
    ) -> dict[str, float | None]:
        """The low tail of `statistic` over the paths: {"q01": 1 % quantile, "q05": 5 % quantile, ...}.
        Low is bad for every statistic here (a drawdown is negative)."""
        values = self._values(statistic)
        return {
            f"q{round(q * 100):02d}": finite_or_none(np.quantile(values, q)) if values.size else None
            for q in quantiles
        }

    def summary(self, quantiles: tuple[float, ...] = STRESS_QUANTILES) -> dict[str, Any]:
        """JSON-safe summary: settings; per statistic the estimate, the paths' mean, std (ddof = 1),
        interval (lower, upper) and count of undefined paths; and the stress quantiles."""
        stats: dict[str, Any] = {}
        for name in STATISTICS:
            values = self._values(name)
            lower, upper = self.interval(name)
            stats[name] = {
                "estimate": self.estimates[name],
                "mean": finite_or_none(values.mean()) if values.size else None,
                "std": finite_or_none(values.std(ddof=1)) if values.size >= 2 else None,
                "lower": lower,
                "upper": upper,
                "undefined": int(self.n_paths - values.size),
            }
        return {
            "method": self.method,
            "block": float(self.block),
            "n_paths": int(self.n_paths),
            "seed": int(self.seed),
            "confidence": float(self.confidence),
            "periods_per_year": float(self.periods_per_year),
            "n": int(self.n),
            "statistics": stats,
            "stress": {name: self.stress(name, quantiles) for name in STATISTICS},
        }

    def _values(self, statistic: str) -> np.ndarray:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        values = self.samples[statistic].to_numpy(dtype=float)
        return values[np.isfinite(values)]


def block_bootstrap(
    returns: pd.Series | np.ndarray,
    block: float | Literal["auto"],
    n_paths: int,
    seed: int,
    *,
    method: Method = "stationary",
    periods_per_year: float = 252.0,
    risk_free: float = 0.0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Resample `returns` in blocks `n_paths` times and score every path (see the module docstring).

    block: mean (stationary) or fixed (circular) block length in periods, ≥ 1; "auto" picks the
        Politis-White length for `method` (`optimal_block_length`).
    periods_per_year, risk_free: as in `performance_metrics` (252: daily bars).
    confidence: of the percentile intervals, in (0, 1).
    Raises ValueError naming the argument for fewer than 2 returns, non-finite returns, n_paths < 1,
    block < 1, an unknown method or a confidence outside (0, 1).
    """
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"returns must be one series of at least 2 periods, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"returns must be finite, got {int((~np.isfinite(r)).sum())} NaN or infinite values")
    if isinstance(n_paths, bool) or not isinstance(n_paths, (int, np.integer)) or n_paths < 1:
        raise ValueError(f"n_paths must be an integer >= 1, got {n_paths!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer (the paths must be reproducible), got {seed!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _check_method(method)
    if block == "auto":
        block = optimal_block_length(r, method)
    elif isinstance(block, str) or not block >= 1:
        raise ValueError(f"block must be a number >= 1 or 'auto', got {block!r}")

    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // r.size)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_paths, per_chunk):
        idx = bootstrap_indices(r.size, float(block), min(per_chunk, n_paths - start), rng, method)
        parts.append(compounded_statistics(r[idx], periods_per_year, risk_free))
    samples = pd.DataFrame({name: np.concatenate([p[name] for p in parts]) for name in STATISTICS})
    observed = compounded_statistics(r[None, :], periods_per_year, risk_free)
    return BootstrapResult(
        method=method,
        block=float(block),
        n_paths=int(n_paths),
        seed=int(seed),
        confidence=float(confidence),
        periods_per_year=float(periods_per_year),
        n=int(r.size),
        estimates={name: finite_or_none(observed[name][0]) for name in STATISTICS},
        samples=samples,
    )
