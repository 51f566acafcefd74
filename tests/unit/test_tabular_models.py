"""Tabular model families (LightGBM, XGBoost, random forest, extra trees, linear) behind one interface:
determinism, learning a planted signal and not learning noise, artifacts, bad input. Then what is
particular to the forests (node-array predictor vs scikit-learn, NaN imputation) and linear models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier
from sklearn.linear_model import Lasso, LogisticRegression, Ridge

from quanto.config.models import ModelConfig
from quanto.models import tabular
from quanto.models.base import FAMILIES, Design, load_model, make_model
from quanto.models.gbdt import LightGBMModel, XGBoostModel
from quanto.models.tabular import ExtraTreesModel, LinearModel, RandomForestModel

COLUMNS = ["signal", "other", "junk"]
# Small and fast: a few dozen trees on a few hundred rows.
PARAMS = {
    "lightgbm": {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 10},
    "xgboost": {"n_estimators": 40, "learning_rate": 0.1, "max_depth": 3},
    "random_forest": {"n_estimators": 30, "min_samples_leaf": 5},
    "extra_trees": {"n_estimators": 30, "min_samples_leaf": 5},
    "linear": {"alpha": 1.0},
}
CLASSES = {
    "lightgbm": LightGBMModel,
    "xgboost": XGBoostModel,
    "random_forest": RandomForestModel,
    "extra_trees": ExtraTreesModel,
    "linear": LinearModel,
}
FAMILY_NAMES = list(PARAMS)


def config(kind: str, objective: str = "regression", n_jobs: int = 1, **params) -> ModelConfig:
    """The family's small test config; `params` override. One thread by default: the tests share a
    busy 2-core machine, where idle OpenMP threads cost more than they bring."""
    return ModelConfig(kind=kind, objective=objective, params={**PARAMS[kind], **params}, n_jobs=n_jobs)


def design(n: int, seed: int, nan_share: float = 0.0) -> Design:
    """`n` rows over two symbols, features standard normal (NaN with probability `nan_share`)."""
    rng = np.random.default_rng(seed)
    half = n // 2
    frame = pd.DataFrame(
        {
            "symbol": np.repeat(["AAA", "BBB"], [half, n - half]),
            "ts": np.concatenate(
                [pd.date_range("2020-01-01", periods=k, freq="D", tz="UTC") for k in (half, n - half)]
            ),
        }
    )
    values = rng.normal(size=(n, len(COLUMNS)))
    values[rng.random(values.shape) < nan_share] = np.nan
    for i, name in enumerate(COLUMNS):
        frame[name] = values[:, i]
    return Design(frame, list(COLUMNS))


def planted(n: int, seed: int, nan_share: float = 0.0) -> tuple[Design, np.ndarray, np.ndarray]:
    """A design, all its rows and labels = signal + small noise (NaN signal counts as 0)."""
    d = design(n, seed, nan_share)
    noise = np.random.default_rng(seed + 1000).normal(scale=0.1, size=n)
    return d, np.arange(n), np.nan_to_num(d.frame["signal"].to_numpy()) + noise


def labels(objective: str, y: np.ndarray) -> np.ndarray:
    """Regression labels as they are; classification: their sign as 0/1."""
    return y if objective == "regression" else (y > 0).astype(np.float64)


def fit(kind: str, objective: str, d: Design, rows: np.ndarray, y: np.ndarray, n_jobs: int = 1, **params):
    """A fitted model of family `kind` on `rows` of `d` (labels per `objective`)."""
    return make_model(config(kind, objective, n_jobs, **params)).fit(d, rows, labels(objective, y))


def test_every_tabular_family_is_registered():
    for kind, cls in CLASSES.items():
        assert FAMILIES[kind] is cls
        model = make_model(config(kind))
        assert type(model) is cls and model.family == kind
    with pytest.raises(ValueError, match="lightgbm"):
        LightGBMModel(config("xgboost"))


@pytest.mark.parametrize("objective", ["regression", "classification"])
@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_two_fits_give_bit_identical_predictions(kind, objective):
    d, rows, y = planted(400, 1, nan_share=0.1)  # NaN features on the way
    a = fit(kind, objective, d, rows, y).predict(d, rows)
    b = fit(kind, objective, d, rows, y).predict(d, rows)
    assert a.dtype == np.float64 and a.shape == (400,)
    assert np.isfinite(a).all()
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_two_threaded_fits_give_bit_identical_predictions(kind):
    # Two threads, where sums could be added up in another order each run. Few trees: on a busy
    # machine every OpenMP barrier can wait for a descheduled thread.
    d, rows, y = planted(400, 1, nan_share=0.1)
    few = {"n_estimators": 10} if kind != "linear" else {}
    a = fit(kind, "regression", d, rows, y, n_jobs=2, **few).predict(d, rows)
    b = fit(kind, "regression", d, rows, y, n_jobs=2, **few).predict(d, rows)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_learns_a_planted_signal(kind):
    d, rows, y = planted(900, 2)
    train, test = rows[:600], rows[600:]
    model = fit(kind, "regression", d, train, y[train])
    assert spearmanr(model.predict(d, test), y[test]).statistic > 0.5
    importance = model.feature_importance()
    assert list(importance)[0] == "signal"
    assert sum(importance.values()) == pytest.approx(1.0)
    assert list(importance.values()) == sorted(importance.values(), reverse=True)


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_does_not_learn_noise(kind):
    # Fixed seeds make the outcome deterministic; the IC of 500 test rows has a standard error of
    # ~0.045, so the mean over three seeds sits far inside the bound unless the model leaks.
    ics = []
    for seed in range(3):
        d = design(1000, 10 + seed)
        y = np.random.default_rng(200 + seed).normal(size=1000)
        model = fit(kind, "regression", d, np.arange(500), y[:500])
        ics.append(spearmanr(model.predict(d, np.arange(500, 1000)), y[500:]).statistic)
    assert abs(float(np.mean(ics))) < 0.1


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_classification_predicts_probabilities(kind):
    d, rows, y = planted(900, 4)
    train, test = rows[:600], rows[600:]
    model = fit(kind, "classification", d, train, y[train])
    p = model.predict(d, test)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.mean((p > 0.5) == (y[test] > 0)) > 0.8
    proba = model.predict_proba(d, test)
    assert proba.shape == (300, 2)
    assert np.array_equal(proba[:, 1], p)
    assert np.allclose(proba.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="regressor"):
        fit(kind, "regression", d, train, y[train]).predict_proba(d, test)


@pytest.mark.parametrize("objective", ["regression", "classification"])
@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_save_load_round_trip(kind, objective, tmp_path):
    d, rows, y = planted(300, 7, nan_share=0.1)
    model = fit(kind, objective, d, rows, y)
    target = tmp_path / "models" / "m1"
    written = model.save(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in written)  # no temp files left
    assert sorted(p.name for p in written) == sorted(["meta.json", *CLASSES[kind].files])
    meta = json.loads((target / "meta.json").read_text())
    assert (meta["family"], meta["objective"], meta["features"]) == (kind, objective, COLUMNS)
    assert ModelConfig.model_validate(meta["config"]) == model.cfg
    loaded = load_model(target)
    assert type(loaded) is CLASSES[kind]
    assert loaded.features == model.features and loaded.note is None
    assert np.array_equal(loaded.predict(d, rows), model.predict(d, rows))
    assert loaded.feature_importance() == model.feature_importance()


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_one_class_classification_gives_a_constant_model(kind, tmp_path):
    d = design(60, 6)
    rows = np.arange(60)
    model = fit(kind, "classification", d, rows, np.full(60, -1.0))  # every label 0
    assert model.note is not None and "one class" in model.note
    assert np.array_equal(model.predict(d, rows), np.zeros(60))
    assert set(model.feature_importance().values()) == {0.0}
    # A constant model saved over an earlier fit's folder leaves no stale booster or arrays behind.
    fit(kind, "classification", *planted(60, 8)).save(tmp_path)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    loaded = load_model(tmp_path)
    assert np.array_equal(loaded.predict(d, rows), np.zeros(60))
    assert loaded.note == model.note
    ones = fit(kind, "classification", d, rows, np.ones(60))
    assert np.array_equal(ones.predict(d, rows), np.ones(60))


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_predict_matches_feature_columns_by_name(kind):
    d, rows, y = planted(300, 9)
    model = fit(kind, "regression", d, rows, y)
    frame = d.frame[["symbol", "ts", "junk", "signal", "other"]].assign(extra=1.0)
    shuffled = Design(frame, ["junk", "signal", "other", "extra"])
    assert np.array_equal(model.predict(shuffled, rows), model.predict(d, rows))
    with pytest.raises(ValueError, match="signal"):
        model.predict(Design(frame, ["junk", "other"]), rows)
    assert model.predict(d, np.arange(0)).shape == (0,)


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_bad_input_is_rejected(kind, tmp_path):
    d = design(20, 11)
    rows = np.arange(20)
    model = make_model(config(kind, "classification"))
    with pytest.raises(ValueError, match="0 or 1"):
        model.fit(d, rows, np.arange(20.0))
    with pytest.raises(ValueError, match="non-finite"):
        make_model(config(kind)).fit(d, rows, np.full(20, np.nan))
    with pytest.raises(ValueError, match="zero rows"):
        make_model(config(kind)).fit(d, rows[:0], np.zeros(0))
    with pytest.raises(ValueError, match="20 rows but 19 labels"):
        make_model(config(kind)).fit(d, rows, np.zeros(19))
    with pytest.raises(ValueError, match="validation window: .*0 or 1"):
        model.fit(d, rows[:10], np.tile([0.0, 1.0], 5), valid=(rows[10:], np.full(10, 2.0)))
    with pytest.raises(ValueError, match="no feature columns"):
        make_model(config(kind)).fit(Design(d.frame, []), rows, np.zeros(20))
    with pytest.raises(RuntimeError, match="not fitted"):
        make_model(config(kind)).predict(d, rows)
    with pytest.raises(RuntimeError, match="not fitted"):
        make_model(config(kind)).save(tmp_path)


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_incomplete_artifact_is_reported(kind, tmp_path):
    d, rows, y = planted(100, 12)
    fit(kind, "regression", d, rows, y).save(tmp_path)
    (tmp_path / CLASSES[kind].files[0]).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_model(tmp_path)


# -- forests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "objective", "peer"),
    [
        ("random_forest", "classification", RandomForestClassifier),
        ("extra_trees", "regression", ExtraTreesRegressor),
    ],
)
def test_forest_predicts_what_scikit_learn_predicts(kind, objective, peer):
    # The oracle: the same forest fitted by scikit-learn in one go (ours grows it in batches of 10
    # trees) and predicted by scikit-learn, NaN features included, on training and unseen rows.
    d, rows, y = planted(600, 13, nan_share=0.15)
    train = rows[:400]
    model = fit(kind, objective, d, train, y[train], n_estimators=25)
    X = d.tabular(rows)
    reference = peer(n_estimators=25, min_samples_leaf=5, max_features="sqrt", random_state=42, n_jobs=1)
    reference.fit(X[train], labels(objective, y[train]))
    expected = reference.predict_proba(X)[:, 1] if objective == "classification" else reference.predict(X)
    assert np.allclose(model.predict(d, rows), expected, rtol=1e-12, atol=1e-12)
    assert np.allclose(
        list(model.feature_importance().values()), sorted(reference.feature_importances_)[::-1]
    )


def test_forest_reports_progress_per_batch_of_trees():
    d, rows, y = planted(200, 14)
    steps = []
    make_model(config("random_forest", n_estimators=25)).fit(d, rows, y, progress=steps.append)
    assert steps == [{"step": 10, "of": 25}, {"step": 20, "of": 25}, {"step": 25, "of": 25}]


def test_forest_imputes_training_medians_where_trees_cannot_take_nan(monkeypatch, tmp_path):
    # As with a scikit-learn too old for NaN in this family's trees.
    monkeypatch.setitem(tabular.NATIVE_NAN_SINCE, "extra_trees", (99, 0))
    d, rows, y = planted(400, 15, nan_share=0.2)
    model = fit("extra_trees", "regression", d, rows, y)
    X = d.tabular(rows)
    medians = np.nanmedian(X, axis=0)
    assert np.array_equal(model.medians, medians)
    filled = np.where(np.isnan(X), medians, X)
    reference = ExtraTreesRegressor(
        n_estimators=30, min_samples_leaf=5, max_features="sqrt", random_state=42
    ).fit(filled, y)
    assert np.allclose(model.predict(d, rows), reference.predict(filled), rtol=1e-12, atol=1e-12)
    model.save(tmp_path)
    assert json.loads((tmp_path / "meta.json").read_text())["state"]["imputed"] is True
    loaded = load_model(tmp_path)
    assert np.array_equal(loaded.medians, medians)
    assert np.array_equal(loaded.predict(d, rows), model.predict(d, rows))


def test_forest_seed_matters():
    d, rows, y = planted(300, 16)
    a = fit("random_forest", "regression", d, rows, y).predict(d, rows)
    cfg = config("random_forest").model_copy(update={"seed": 7})
    b = make_model(cfg).fit(d, rows, y).predict(d, rows)
    assert not np.array_equal(a, b)


# -- linear -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "penalty", "alpha", "peer"),
    [
        ("regression", "l2", 0.5, Ridge(alpha=0.5)),
        ("regression", "l1", 0.05, Lasso(alpha=0.05, max_iter=1000)),
        ("classification", "l2", 0.5, LogisticRegression(C=2.0, max_iter=1000)),
        (
            "classification",
            "l1",
            0.05,
            LogisticRegression(C=20.0, l1_ratio=1.0, solver="saga", max_iter=1000, random_state=42),
        ),
    ],
)
def test_linear_matches_scikit_learn_on_median_filled_standardized_features(objective, penalty, alpha, peer):
    d, rows, y = planted(500, 17, nan_share=0.1)
    model = fit("linear", objective, d, rows, y, penalty=penalty, alpha=alpha)
    X = d.tabular(rows)
    filled = np.where(np.isnan(X), np.nanmedian(X, axis=0), X)
    z = (filled - filled.mean(axis=0)) / filled.std(axis=0)
    peer.fit(z, labels(objective, y))
    expected = peer.predict_proba(z)[:, 1] if objective == "classification" else peer.predict(z)
    assert np.allclose(model.predict(d, rows), expected, rtol=1e-6, atol=1e-6)
    assert np.allclose(model.coef, peer.coef_.ravel(), rtol=1e-6, atol=1e-6)


def test_lasso_zeroes_the_noise_features():
    d, rows, y = planted(500, 18)
    model = fit("linear", "regression", d, rows, y, penalty="l1", alpha=0.05)
    importance = model.feature_importance()
    assert importance["signal"] == 1.0 and importance["other"] == importance["junk"] == 0.0
    ridge = fit("linear", "regression", d, rows, y, penalty="l2", alpha=0.05).feature_importance()
    assert 0 < ridge["junk"] < ridge["signal"]


def test_linear_survives_constant_all_nan_and_infinite_features():
    d, rows, y = planted(200, 19)
    frame = d.frame.assign(other=3.0, junk=np.nan)
    frame.loc[::7, "signal"] = np.inf  # treated as missing, like NaN
    bad = Design(frame, COLUMNS)
    model = fit("linear", "regression", bad, rows, y)
    assert model.medians[1:].tolist() == [3.0, 0.0]
    assert model.medians[0] == np.median(np.delete(d.frame["signal"].to_numpy(), rows[::7]))
    p = model.predict(bad, rows)
    assert np.isfinite(p).all()
    assert np.unique(p[::7]).size == 1  # every infinite row sits at the median, like the others
    assert spearmanr(p, y).statistic > 0.8
