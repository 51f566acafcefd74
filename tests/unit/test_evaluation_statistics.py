"""PSR and DSR against the papers' formulas and their published numerical example."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from quanto.evaluation.statistics import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_estimate_variance,
    sharpe_moments,
    sharpe_statistics,
)

PHI = NormalDist().cdf


def test_psr_by_hand():
    # Normal returns: PSR = Phi(SR sqrt(T - 1) / sqrt(1 + SR^2 / 2)).
    assert probabilistic_sharpe_ratio(0.1, 100) == pytest.approx(
        PHI(0.1 * math.sqrt(99) / math.sqrt(1 + 0.01 / 2))
    )
    # Skewed, fat-tailed returns against a benchmark of 0.05.
    z = (0.1 - 0.05) * math.sqrt(99) / math.sqrt(1 - (-1.0) * 0.1 + (6.0 - 1) / 4 * 0.01)
    assert probabilistic_sharpe_ratio(0.1, 100, skew=-1.0, kurtosis=6.0, benchmark=0.05) == pytest.approx(
        PHI(z)
    )
    assert probabilistic_sharpe_ratio(0.1, 1) is None


def test_dsr_reproduces_the_papers_numerical_example():
    # Bailey & López de Prado (2014): 100 trials with annualized Sharpe variance 0.5, the best at an
    # annualized 2.5 over 5 years of daily returns (T = 1250) with skew -3 and kurtosis 10:
    # SR*_0 = 0.1132 per day, DSR = 0.9004.
    sr, variance = 2.5 / math.sqrt(250), 0.5 / 250
    assert expected_max_sharpe(100, variance) == pytest.approx(0.1132, abs=1e-4)
    assert deflated_sharpe_ratio(sr, 1250, -3.0, 10.0, 100, variance) == pytest.approx(0.9004, abs=1e-4)


def test_expected_max_sharpe_by_hand_and_one_trial_is_plain_psr():
    gamma = 0.5772156649015329
    inv = NormalDist().inv_cdf
    want = math.sqrt(0.04) * ((1 - gamma) * inv(1 - 1 / 10) + gamma * inv(1 - 1 / (10 * math.e)))
    assert expected_max_sharpe(10, 0.04) == pytest.approx(want)
    assert expected_max_sharpe(1, 0.04) == 0.0
    assert deflated_sharpe_ratio(0.1, 200, 0.5, 4.0, 1) == probabilistic_sharpe_ratio(0.1, 200, 0.5, 4.0)
    with pytest.raises(ValueError, match="n_trials must be >= 1, got 0"):
        expected_max_sharpe(0, 0.04)


def test_more_trials_deflate_more():
    dsr = [deflated_sharpe_ratio(0.08, 500, 0.0, 3.0, n, 0.002) for n in (1, 2, 10, 100, 1000)]
    assert all(a > b for a, b in zip(dsr, dsr[1:], strict=False))


def test_moments_match_scipy():
    r = np.random.default_rng(3).standard_t(5, size=400) * 0.01 + 0.001
    m = sharpe_moments(r)
    assert m.sharpe == pytest.approx(r.mean() / r.std(ddof=1))
    assert m.skew == pytest.approx(stats.skew(r, bias=True))
    assert m.kurtosis == pytest.approx(stats.kurtosis(r, fisher=False, bias=True))
    assert m.n == 400
    assert sharpe_moments(np.array([0.01, 0.02])) is None
    assert sharpe_moments(np.full(10, 0.01)) is None


def test_sharpe_statistics_of_a_series():
    r = np.random.default_rng(4).normal(0.001, 0.01, size=300)
    m = sharpe_moments(r)
    out = sharpe_statistics(r, n_trials=20, periods_per_year=252)
    json.dumps(out, allow_nan=False)
    assert out["sharpe"] == pytest.approx(m.sharpe * math.sqrt(252))
    assert out["sharpe_per_period"] == pytest.approx(m.sharpe)
    assert out["psr"] == pytest.approx(probabilistic_sharpe_ratio(m.sharpe, 300, m.skew, m.kurtosis))
    # Without the trials' Sharpe ratios, their variance is this estimate's sampling variance.
    variance = sharpe_estimate_variance(m.sharpe, 300, m.skew, m.kurtosis)
    assert out["trial_sharpe_var_source"] == "estimate" and out["trial_sharpe_var"] == pytest.approx(variance)
    assert out["sharpe_threshold"] == pytest.approx(expected_max_sharpe(20, variance))
    assert out["dsr"] == pytest.approx(deflated_sharpe_ratio(m.sharpe, 300, m.skew, m.kurtosis, 20, variance))
    assert out["dsr"] < out["psr"]
    given = sharpe_statistics(r, n_trials=20, trial_sharpe_var=0.01)
    assert given["trial_sharpe_var_source"] == "trials" and given["trial_sharpe_var"] == 0.01
    assert given["dsr"] == pytest.approx(deflated_sharpe_ratio(m.sharpe, 300, m.skew, m.kurtosis, 20, 0.01))


def test_sharpe_statistics_of_too_short_a_series_is_none():
    out = sharpe_statistics(np.array([0.01, 0.02]), n_trials=3)
    assert out["psr"] is None and out["dsr"] is None and out["n_trials"] == 3 and out["n"] == 2
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError, match="n_trials must be >= 1, got 0"):
        sharpe_statistics(np.zeros(5), n_trials=0)
