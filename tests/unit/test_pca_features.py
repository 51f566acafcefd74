"""PCA factors across the universe: fitted before fit_end only, no lookahead after it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from quanto.config.models import PipelineConfig
from quanto.errors import InputError
from quanto.features.pca import fit_end_for, pca_factors
from quanto.features.registry import compute_features
from quanto.features.stage import add_panel_features

SYMBOLS = ["A", "B", "C", "D", "E", "F"]


def factor_panel(n: int = 400, seed: int = 11) -> tuple[pd.DataFrame, pd.Series]:
    """Six symbols driven by a strong market factor and a weaker long-short factor, plus noise."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2021-01-04", periods=n, freq="B", tz="UTC")
    market = rng.normal(0, 0.02, n)
    spread = rng.normal(0, 0.008, n)
    beta = np.array([1.0, 0.9, 1.1, 0.8, 1.2, 1.0])
    tilt = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    frames = []
    for j, sym in enumerate(SYMBOLS):
        r = beta[j] * market + tilt[j] * spread + rng.normal(0, 0.004, n)
        close = 100 * np.exp(np.cumsum(r))
        frames.append(pd.DataFrame({"symbol": sym, "ts": ts, "timeframe": "1d", "open": close, "high": close * 1.01,
                                    "low": close * 0.99, "close": close, "volume": 1e6, "vwap": np.nan,
                                    "trades": pd.array([None] * n, dtype="Int64"), "vendor": "t", "imputed": False}))  # fmt: skip
    return pd.concat(frames, ignore_index=True), pd.Series(market, index=ts)


def loading_cols(k: int) -> list[str]:
    return [f"pca_loading_{i}" for i in range(1, k + 1)]


def test_columns_keys_and_sign_convention():
    bars, _ = factor_panel()
    fit_end = fit_end_for(bars, 200)
    out = pca_factors(bars, 3, fit_end)
    assert list(out.columns) == ["symbol", "ts", *loading_cols(3), "pca_factor_1", "pca_factor_2",
                                 "pca_factor_3", "pca_resid"]  # fmt: skip
    assert len(out) == len(bars) and not out.duplicated(["symbol", "ts"]).any()
    loads = out.groupby("symbol")[loading_cols(3)].agg(["min", "max"])
    for c in loading_cols(3):
        assert np.allclose(loads[(c, "min")], loads[(c, "max")])  # constant per symbol
    per_symbol = out.drop_duplicates("symbol").set_index("symbol")[loading_cols(3)]
    assert (per_symbol.sum() > 0).all()  # each component's loadings sum positive
    np.testing.assert_allclose(per_symbol.T.to_numpy() @ per_symbol.to_numpy(), np.eye(3), atol=1e-10)
    # The factor is the same for every symbol at a timestamp; the first timestamp has no return.
    assert (out.groupby("ts")["pca_factor_1"].nunique(dropna=False) == 1).all()
    assert out.loc[out["ts"] == out["ts"].min(), ["pca_factor_1", "pca_resid"]].isna().all().all()
    # A different seed's noise does not flip signs: the market component stays positive on all symbols.
    other = pca_factors(factor_panel(seed=12)[0], 1, fit_end)
    assert (other.drop_duplicates("symbol")["pca_loading_1"] > 0).all()


def test_no_lookahead_after_fit_end():
    bars, _ = factor_panel()
    stamps = np.sort(bars["ts"].unique())
    fit_end = pd.Timestamp(stamps[200])
    base = pca_factors(bars, 2, fit_end)

    # Anything after fit_end leaves the fit (loadings) and every value before fit_end unchanged.
    rng = np.random.default_rng(0)
    shaken = bars.copy()
    after = shaken["ts"] >= fit_end
    shaken.loc[after, "close"] *= np.exp(rng.normal(0, 0.05, after.sum()))
    moved = pca_factors(shaken, 2, fit_end)
    pd.testing.assert_frame_equal(moved[loading_cols(2)], base[loading_cols(2)])
    pd.testing.assert_frame_equal(moved[moved["ts"] < fit_end], base[base["ts"] < fit_end])

    # Out of sample: perturbing bars after ts2 > fit_end changes nothing at or before ts2 ...
    ts2 = pd.Timestamp(stamps[300])
    later = bars.copy()
    hit = later["ts"] > ts2
    later.loc[hit, "close"] *= np.exp(rng.normal(0, 0.05, hit.sum()))
    later = later[~((later["symbol"] == "C") & (later["ts"] > pd.Timestamp(stamps[350])))]  # and drop rows
    moved = pca_factors(later, 2, fit_end)
    keep = base["ts"] <= ts2
    pd.testing.assert_frame_equal(
        moved[moved["ts"] <= ts2].reset_index(drop=True), base[keep].reset_index(drop=True)
    )
    # ... and truncating the panel after ts2 gives the same values as the full panel.
    cut = pca_factors(bars[bars["ts"] <= ts2], 2, fit_end)
    pd.testing.assert_frame_equal(cut, base[keep].reset_index(drop=True))
    assert not moved.loc[moved["ts"] > ts2, "pca_factor_1"].equals(base.loc[base["ts"] > ts2, "pca_factor_1"])


def test_first_component_tracks_the_dominant_factor_out_of_sample():
    bars, market = factor_panel()
    fit_end = fit_end_for(bars, 200)
    out = pca_factors(bars, 2, fit_end)
    oos = out[out["ts"] >= fit_end].drop_duplicates("ts").set_index("ts")["pca_factor_1"]
    corr = np.corrcoef(oos.to_numpy(), market.loc[oos.index].to_numpy())[0, 1]
    assert abs(corr) > 0.9 and corr > 0  # positive by the sign convention (all betas positive)


def test_full_rank_reconstruction_leaves_no_residual():
    bars, _ = factor_panel()
    out = pca_factors(bars, len(SYMBOLS), fit_end_for(bars, 200))
    resid = out["pca_resid"].dropna()
    assert len(resid) == len(bars) - len(SYMBOLS)  # all but the first timestamp
    assert np.abs(resid).max() < 1e-9
    # With fewer components the residual is real but smaller than the standardized return.
    two = pca_factors(bars, 2, fit_end_for(bars, 200))["pca_resid"].dropna()
    assert 0 < two.std() < 1


def test_missing_symbols_renormalize_or_give_nan():
    bars, _ = factor_panel()
    stamps = np.sort(bars["ts"].unique())
    fit_end = pd.Timestamp(stamps[200])
    base = pca_factors(bars, 1, fit_end)
    one_gone = bars[~((bars["symbol"] == "A") & (bars["ts"] == stamps[300]))]
    out = pca_factors(one_gone, 1, fit_end)
    at = out[out["ts"] == stamps[300]]
    assert len(at) == len(SYMBOLS) - 1 and at["pca_factor_1"].notna().all()
    full = base.loc[base["ts"] == stamps[300], "pca_factor_1"].iloc[0]
    assert abs(at["pca_factor_1"].iloc[0] - full) < 0.5 * abs(full) + 0.5  # close to the full estimate
    # The next timestamp's return for A spans the gap, so A has no return there either.
    nxt = out[(out["ts"] == stamps[301]) & (out["symbol"] == "A")]
    assert nxt["pca_resid"].isna().all() and nxt["pca_factor_1"].notna().all()
    four_gone = bars[~(bars["symbol"].isin(["A", "B", "C", "D"]) & (bars["ts"] == stamps[310]))]
    out = pca_factors(four_gone, 1, fit_end)
    assert out.loc[out["ts"] == stamps[310], ["pca_factor_1", "pca_resid"]].isna().all().all()


def test_errors_name_the_setting():
    bars, _ = factor_panel(n=60)
    with pytest.raises(InputError, match="fit window .* needs at least 30"):
        pca_factors(bars, 3, fit_end_for(bars, 20))
    with pytest.raises(InputError, match="n_components=7 needs at least that many symbols"):
        pca_factors(bars, 7, fit_end_for(bars, 50))
    with pytest.raises(InputError, match="fit_bars"):
        fit_end_for(bars, 60)
    gappy = bars[~((bars["symbol"] == "B") & (bars["ts"].dt.day % 2 == 0))]
    with pytest.raises(InputError, match="rows with a return for every symbol"):
        pca_factors(gappy, 1, fit_end_for(bars, 50))
    with pytest.raises(ValueError, match="window_returns"):
        pca_factors(bars, 1, fit_end_for(bars, 50), window_returns="arith")  # type: ignore[arg-type]


def pipeline(**features) -> dict:
    return {"name": "pca", "universe": {"symbols": SYMBOLS, "start": dt.date(2021, 1, 4), "end": dt.date(2022, 6, 1)},
            "features": {"names": ["logret_5"], **features}, "walk_forward": {"train_bars": 150}}  # fmt: skip


def test_config_validation():
    cfg = PipelineConfig.model_validate(pipeline(pca={}))
    assert (
        cfg.features.pca is not None
        and cfg.features.pca.n_components == 3
        and cfg.features.pca.fit_bars is None
    )
    assert PipelineConfig.model_validate(pipeline()).features.pca is None
    one = pipeline(pca={"n_components": 1})
    one["universe"]["symbols"] = ["A"]
    with pytest.raises(ValidationError, match="features.pca needs at least"):
        PipelineConfig.model_validate(one)
    with pytest.raises(ValidationError, match="fit_bars .* must not exceed walk_forward.train_bars"):
        PipelineConfig.model_validate(pipeline(pca={"fit_bars": 151}))
    with pytest.raises(ValidationError):
        PipelineConfig.model_validate(pipeline(pca={"n_components": 21}))
    with pytest.raises(ValidationError):
        PipelineConfig.model_validate(pipeline(pca={"components": 2}))


def test_stage_path_adds_pca_columns_fitted_on_the_first_training_window():
    bars, _ = factor_panel()
    cfg = PipelineConfig.model_validate(pipeline(pca={"n_components": 2}))
    table = add_panel_features(compute_features(bars, ["logret_5"]), bars, cfg.features, cfg.walk_forward)
    assert {*loading_cols(2), "pca_factor_1", "pca_factor_2", "pca_resid"} <= set(table.columns)
    assert len(table) == len(bars)
    direct = pca_factors(bars, 2, fit_end_for(bars, cfg.walk_forward.train_bars))
    merged = table.merge(direct, on=["symbol", "ts"], suffixes=("", "_direct"))
    np.testing.assert_array_equal(merged["pca_resid"].to_numpy(), merged["pca_resid_direct"].to_numpy())
    # The fit window is the first train_bars timestamps: the first test bar is out of sample.
    assert fit_end_for(bars, 150) == np.sort(bars["ts"].unique())[150]
    with pytest.raises(InputError, match="walk_forward"):
        add_panel_features(compute_features(bars, ["logret_5"]), bars, cfg.features)
