"""Probabilistic and deflated Sharpe ratios (Bailey & López de Prado).

PSR (The Sharpe Ratio Efficient Frontier, 2012): the probability that the true Sharpe ratio exceeds
a benchmark SR*, given the observed per-period Sharpe ratio SR over T returns with skewness g3 and
kurtosis g4 (3 for a normal distribution):

    PSR(SR*) = Phi( (SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2) )

DSR (The Deflated Sharpe Ratio, 2014): PSR against the Sharpe ratio the best of N independent trials
would show by luck alone, with V the variance of the trials' Sharpe ratios and gamma Euler's
constant:

    SR*_0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))

Every Sharpe ratio here is per period (not annualized), as the formulas require.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from quanto.evaluation.metrics import finite_or_none

EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class SharpeMoments:
    """Per-period Sharpe ratio (ddof 1), skewness and kurtosis (population moments; a normal
    distribution has kurtosis 3) of `n` returns."""

    sharpe: float
    skew: float
    kurtosis: float
    n: int


def sharpe_moments(returns: np.ndarray) -> SharpeMoments | None:
    """The moments PSR needs, or None with fewer than 3 returns or no variation."""
    r = np.asarray(returns, dtype=np.float64)
    if not np.isfinite(r).all():
        raise ValueError("returns must be finite")
    if len(r) < 3 or np.ptp(r) == 0:
        return None
    centred = r - r.mean()
    m2 = float(np.mean(centred**2))
    return SharpeMoments(
        sharpe=float(r.mean() / r.std(ddof=1)),
        skew=float(np.mean(centred**3) / m2**1.5),
        kurtosis=float(np.mean(centred**4) / m2**2),
        n=len(r),
    )


def _sharpe_scale(sharpe: float, skew: float, kurtosis: float) -> float | None:
    # The non-normal standard-error factor; >= 0 by Pearson's inequality kurtosis >= 1 + skew^2.
    v = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return math.sqrt(v) if v > 0 else None


def probabilistic_sharpe_ratio(
    sharpe: float, n: int, skew: float = 0.0, kurtosis: float = 3.0, benchmark: float = 0.0
) -> float | None:
    """PSR(benchmark) of a per-period Sharpe ratio over `n` returns (see the module docstring);
    None when n < 2 or the moments are degenerate."""
    if n < 2:
        return None
    scale = _sharpe_scale(sharpe, skew, kurtosis)
    if scale is None:
        return None
    return finite_or_none(norm.cdf((sharpe - benchmark) * math.sqrt(n - 1) / scale))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR*_0: the expected maximum per-period Sharpe ratio of `n_trials` independent trials with
    true Sharpe 0 whose estimates have `variance` (0 for one trial)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if variance < 0:
        raise ValueError(f"variance must be >= 0, got {variance}")
    if n_trials == 1:
        return 0.0
    return math.sqrt(variance) * (
        (1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials) + EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * math.e))
    )


def sharpe_estimate_variance(sharpe: float, n: int, skew: float = 0.0, kurtosis: float = 3.0) -> float | None:
    """Sampling variance of a per-period Sharpe estimate over `n` returns:
    (1 - g3 SR + (g4 - 1)/4 SR^2) / (n - 1)."""
    scale = _sharpe_scale(sharpe, skew, kurtosis)
    return None if scale is None or n < 2 else scale**2 / (n - 1)


def deflated_sharpe_ratio(
    sharpe: float,
    n: int,
    skew: float,
    kurtosis: float,
    n_trials: int,
    trial_sharpe_var: float | None = None,
) -> float | None:
    """DSR = PSR(SR*_0) with SR*_0 = `expected_max_sharpe(n_trials, V)`. V is `trial_sharpe_var`,
    the variance of the trials' per-period Sharpe ratios, when known; else the sampling variance of
    this estimate (`sharpe_estimate_variance`), i.e. the trials are taken as independent draws of
    the same estimator under the null. None when the moments are degenerate."""
    variance = (
        trial_sharpe_var
        if trial_sharpe_var is not None
        else sharpe_estimate_variance(sharpe, n, skew, kurtosis)
    )
    if variance is None:
        return None
    return probabilistic_sharpe_ratio(sharpe, n, skew, kurtosis, expected_max_sharpe(n_trials, variance))


def sharpe_statistics(
    returns: np.ndarray,
    n_trials: int,
    trial_sharpe_var: float | None = None,
    periods_per_year: float = 1.0,
) -> dict[str, Any]:
    """PSR and DSR of a per-period return series, JSON-safe.

    Keys: n, sharpe (annualized with `periods_per_year`), sharpe_per_period, skew, kurtosis, psr
    (against 0), n_trials, trial_sharpe_var and its source ("trials" or "estimate"), sharpe_threshold
    (SR*_0, per period) and dsr. Undefined values (fewer than 3 returns, no variation) are None.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    moments = sharpe_moments(returns)
    out: dict[str, Any] = {
        "n": len(np.asarray(returns)),
        "sharpe": None,
        "sharpe_per_period": None,
        "skew": None,
        "kurtosis": None,
        "psr": None,
        "n_trials": int(n_trials),
        "trial_sharpe_var": finite_or_none(trial_sharpe_var),
        "trial_sharpe_var_source": "trials" if trial_sharpe_var is not None else "estimate",
        "sharpe_threshold": None,
        "dsr": None,
    }
    if moments is None:
        return out
    sr, g3, g4, n = moments.sharpe, moments.skew, moments.kurtosis, moments.n
    variance = trial_sharpe_var if trial_sharpe_var is not None else sharpe_estimate_variance(sr, n, g3, g4)
    out.update(
        sharpe=finite_or_none(sr * math.sqrt(periods_per_year)),
        sharpe_per_period=finite_or_none(sr),
        skew=finite_or_none(g3),
        kurtosis=finite_or_none(g4),
        psr=probabilistic_sharpe_ratio(sr, n, g3, g4),
        trial_sharpe_var=finite_or_none(variance),
        dsr=deflated_sharpe_ratio(sr, n, g3, g4, n_trials, variance),
    )
    if variance is not None:
        out["sharpe_threshold"] = finite_or_none(expected_max_sharpe(n_trials, variance))
    return out
