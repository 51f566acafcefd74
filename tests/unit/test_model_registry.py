"""Model registry without a database: artifact + card.json under models/<id>/, load round trip,
integrity checks and bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from quanto.config.models import PipelineConfig
from quanto.errors import InputError
from quanto.features.registry import REGISTRY
from quanto.lake.materialize import code_version
from quanto.lake.storage import Lake, sha256_file
from quanto.models import base
from quanto.models.registry import (
    CARD_FILE,
    feature_versions,
    inspect_artifact,
    load_registered,
    read_card,
    register_model,
)

COLUMNS = ["logret_1", "rsi_14", "x_rank"]
HASHES = {"gold/features/a.parquet": "a" * 64, "gold/labels/b.parquet": "b" * 64}


class TinyLeastSquares(base.Model):
    """A real (if tiny) fitted model for the registry to store: least squares with an intercept."""

    family = "linear"

    def fit(self, design, rows, y, *, valid=None, progress=None, checkpoint=None):
        y = base.check_labels(self.objective, rows, y)
        x = np.column_stack([design.tabular(rows), np.ones(len(rows))])
        self.coef = np.linalg.lstsq(x, y, rcond=None)[0]
        self.features = list(design.columns)
        return self

    def predict(self, design, rows):
        return np.column_stack([design.tabular(rows), np.ones(len(rows))]) @ self.coef

    def feature_importance(self):
        return base.normalized_importance(self.features, self.coef[:-1])

    def _save_state(self, folder: Path) -> dict[str, Any]:
        np.save(folder / "coef.npy", self.coef)
        return {"coef": "coef.npy"}

    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.coef = np.load(folder / state["coef"])


@pytest.fixture
def linear_family(monkeypatch):
    # The test double stands in for the "linear" family only while a test runs.
    monkeypatch.setitem(base.FAMILIES, "linear", TinyLeastSquares)


@pytest.fixture
def design() -> base.Design:
    rng = np.random.default_rng(3)
    n = 60
    frame = pd.DataFrame(
        {
            "symbol": ["AAA"] * n,
            "ts": pd.date_range("2021-01-01", periods=n, freq="D", tz="UTC"),
            **{c: rng.normal(size=n) for c in COLUMNS},
        }
    )
    return base.Design(frame, COLUMNS)


@pytest.fixture
def fitted(linear_family, design) -> TinyLeastSquares:
    rows = np.arange(40)
    y = design.tabular(rows) @ np.array([0.5, -0.2, 0.1]) + 0.01
    return base.make_model(config().model).fit(design, rows, y)


def config(**over: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "alpha",
            "universe": {"symbols": ["AAA"], "start": "2021-01-01", "end": "2021-06-01"},
            "model": {"kind": "linear", "params": {"alpha": 0.5}},
            **over,
        }
    )


def register(lake: Lake, model: base.Model, **over: Any):
    kwargs = {
        "model_id": "alpha-001",
        "config": config(),
        "features": {"logret_1": 1, "rsi_14": 2, "x_rank": None},
        "data_hashes": HASHES,
        "metrics": {"sharpe": np.float64(1.25), "ic": float("nan"), "n_train": np.int64(40)},
        "fold_summary": [{"fold": 0, "mse": 0.1}],
        **over,
    }
    return register_model(lake, model, **kwargs)


def test_register_writes_artifact_and_card_and_loads_back(tmp_path, fitted, design):
    lake = Lake(tmp_path)
    record = register(lake, fitted)

    assert (record.model_id, record.name, record.family, record.stage) == (
        "alpha-001",
        "alpha",
        "linear",
        "candidate",
    )
    assert record.path == "models/alpha-001" and record.promoted_at is None
    folder = tmp_path / "models" / "alpha-001"
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, "coef.npy", "meta.json"]

    card = read_card(lake, "alpha-001")
    assert list(card["features"].items()) == [("logret_1", 1), ("rsi_14", 2), ("x_rank", None)]
    assert card["config"] == config().model_dump(mode="json")
    assert card["data_hashes"] == HASHES
    # numpy scalars become plain numbers; NaN is stored as null (PostgreSQL's jsonb has no NaN)
    assert card["metrics"] == {"sharpe": 1.25, "ic": None, "n_train": 40}
    assert card["fold_summary"] == [{"fold": 0, "mse": 0.1}]
    assert card["code_version"] == code_version() == record.code_version
    assert card["files"] == {n: sha256_file(folder / n) for n in ("coef.npy", "meta.json")}
    created = dt.datetime.fromisoformat(card["created_at"])
    assert created.tzinfo is not None and created == record.created_at
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 60

    loaded = load_registered(lake, "alpha-001")
    rows = np.arange(40, 60)  # rows the model never saw
    assert type(loaded) is TinyLeastSquares and loaded.features == COLUMNS
    np.testing.assert_array_equal(loaded.predict(design, rows), fitted.predict(design, rows))

    artifact = inspect_artifact(lake, "alpha-001")
    assert artifact.problems == []
    assert [(f.path, f.role) for f in artifact.files] == [
        ("models/alpha-001/coef.npy", "model"),
        ("models/alpha-001/meta.json", "model"),
        ("models/alpha-001/card.json", "model_card"),
    ]


def test_registering_again_keeps_the_first_created_at(tmp_path, fitted):
    lake = Lake(tmp_path)
    first = register(lake, fitted)
    again = register(lake, fitted, metrics={"sharpe": 2.0})
    assert again.created_at == first.created_at
    assert read_card(lake, "alpha-001")["metrics"] == {"sharpe": 2.0}


def test_changed_or_missing_artifact_files_refuse_to_load(tmp_path, fitted):
    lake = Lake(tmp_path)
    register(lake, fitted)
    folder = tmp_path / "models" / "alpha-001"
    np.save(folder / "coef.npy", np.zeros(4))
    (folder / "meta.json").unlink()
    problems = inspect_artifact(lake, "alpha-001").problems
    assert (
        problems[0].startswith("coef.npy: changed since registration") and problems[1] == "meta.json: missing"
    )
    with pytest.raises(InputError, match="coef.npy: changed"):
        load_registered(lake, "alpha-001")
    assert "no card.json" in inspect_artifact(lake, "never-registered").problems[0]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"model_id": "../escape"}, "model_id: '../escape' is not a valid id"),
        ({"config": {"model": {"kind": "linear"}}}, "config: needs the job's 'name'"),
        (
            {"config": {"name": "alpha", "model": {"kind": "lightgbm"}}},
            "model builds family 'lightgbm' but the model is family 'linear'",
        ),
        ({"features": {"rsi_14": 1, "logret_1": 1, "x_rank": None}}, "do not match the model's columns"),
        ({"features": {"logret_1": 0, "rsi_14": 1, "x_rank": None}}, "'logret_1' -> 0"),
        ({"data_hashes": {"gold/x.parquet": "abc"}}, r"data_hashes\['gold/x.parquet'\]: 'abc'"),
        ({"metrics": {"when": object()}}, "metrics: not JSON-serializable"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(tmp_path, fitted, over, message):
    with pytest.raises(InputError, match=message):
        register(Lake(tmp_path), fitted, **over)
    assert not (tmp_path / "models").exists()


def test_a_dict_config_registers_under_its_name(tmp_path, fitted):
    record = register(Lake(tmp_path), fitted, config={"name": "beta", "model": {"kind": "linear"}})
    assert record.name == "beta" and read_card(Lake(tmp_path), "alpha-001")["config"]["name"] == "beta"


def test_feature_versions_come_from_the_feature_registry(monkeypatch):
    monkeypatch.setitem(REGISTRY, "rsi_14", dataclasses.replace(REGISTRY["rsi_14"], version=3))
    versions = feature_versions(["rsi_14", "logret_1", "talib_rsi_timeperiod21", "x_rank"])
    assert versions == {
        "rsi_14": 3,
        "logret_1": REGISTRY["logret_1"].version,
        # a parameterized TA-Lib feature is re-created in a process that has not seen it yet
        "talib_rsi_timeperiod21": REGISTRY["talib_rsi_timeperiod21"].version,
        "x_rank": None,  # derived by a panel step, not a registered feature
    }
    assert list(versions) == ["rsi_14", "logret_1", "talib_rsi_timeperiod21", "x_rank"]
