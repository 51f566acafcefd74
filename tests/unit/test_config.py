"""Job files: every shipped config validates; errors name the file, key path and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from quanto.config.loading import ConfigError, load_config, parse_config
from quanto.config.models import PipelineConfig
from quanto.starter.server import SEARCH_ATTRIBUTES

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "universe": {"symbols": ["AAPL"], "start": "2010-01-01", "end": "2011-01-01"}}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    if path.name == "schedules.yaml":
        from quanto.config.schedules import SchedulesConfig

        schedules = load_config(SchedulesConfig, path)
        for entry in schedules.schedules:  # every schedule names a shipped job file that validates
            assert (path.parent / entry.config).is_file(), entry.config
        return
    if path.name.startswith("ingest"):
        import datetime as dt

        from quanto.config.ingest import IngestConfig

        ingest = load_config(IngestConfig, path)
        assert ingest.workflow_id(dt.date(2026, 1, 5)).startswith(f"ingest-{ingest.name}-")
        return
    if path.name == "trading.yaml":
        from quanto.config.trading import TradingConfig

        trading = load_config(TradingConfig, path)
        assert trading.workflow_id(trading.session_date()) == f"trading-{trading.account}-2024-03-15"
        research = load_config(PipelineConfig, path.parent / trading.model.bootstrap)
        assert research.name == trading.model.job  # the bootstrap trains the model the day trades
        assert research.universe.symbols == trading.universe.symbols
        return
    if path.name.startswith("retrain"):
        import datetime as dt

        from quanto.config.retrain import load_retrain

        retrain = load_retrain(path)  # and the research job file it names
        end = retrain.window_end(dt.date(2026, 1, 5))
        assert retrain.workflow_id(end).startswith(f"retrain-{retrain.job_name}-")
        assert retrain.research(end).universe.end == end
        return
    if path.name.startswith("sweep"):
        from quanto.config.sweep import SweepJob

        job = load_config(SweepJob, path)
        assert job.workflow_id().startswith(f"sweep-{job.name}-") and len(job.points()) >= 2
        return
    cfg = load_config(PipelineConfig, path)
    assert cfg.workflow_id().startswith(f"pipeline-{cfg.name}-")


def test_workflow_id_is_a_business_key():
    a = parse_config(PipelineConfig, BASE, "a.yaml")
    b = parse_config(
        PipelineConfig, {**BASE, "lake_root": "/elsewhere", "runtime": {"max_attempts": 2}}, "b.yaml"
    )
    c = parse_config(PipelineConfig, {**BASE, "label": {"horizon": 3}}, "c.yaml")
    assert a.workflow_id() == b.workflow_id() != c.workflow_id()  # results-relevant keys only


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"extra": 1}, "job.yaml: extra: Extra inputs are not permitted (got 1)"),
        (
            {"universe": {**BASE["universe"], "symbols": ["A", "A"]}},
            "job.yaml: universe.symbols: symbols must be unique",
        ),
        (
            {"universe": {**BASE["universe"], "vendor": "bloomberg"}},
            "job.yaml: universe.vendor: Input should be",
        ),
        (
            {"label": {"horizon": 0}},
            "job.yaml: label.horizon: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"backtest": {"mode": "yolo"}},
            "job.yaml: backtest.mode: Input should be 'long_flat' or 'long_short'",
        ),
        ({"report": {"formats": ["docx"]}}, "job.yaml: report.formats[0]: Input should be 'html' or 'pdf'"),
        ({"name": "has space"}, "job.yaml: name: String should match pattern"),
    ],
)
def test_errors_name_file_key_and_value(patch, message):
    with pytest.raises(ConfigError) as err:
        parse_config(PipelineConfig, {**BASE, **patch}, "job.yaml")
    assert message in str(err.value)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(PipelineConfig, [1, 2], "x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(PipelineConfig, bad)


def test_lake_root_default_comes_from_environment(monkeypatch):
    monkeypatch.setenv("QUANTO_LAKE_ROOT", "/data/lake")
    assert parse_config(PipelineConfig, BASE, "x").lake_root == "/data/lake"


def test_search_attributes_match_the_deploy_file():
    lines = (REPO / "temporal-config/search-attributes.env").read_text().splitlines()
    declared = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert declared == SEARCH_ATTRIBUTES


@pytest.mark.parametrize(
    "label, objective, ok",
    [("forward_return", "regression", True), ("forward_return", "classification", False),
     ("direction", "classification", True), ("triple_barrier", "classification", True),
     ("triple_barrier", "regression", False)],
)  # fmt: skip
def test_label_kind_and_model_objective_must_fit(label, objective, ok):
    data = {**BASE, "label": {"kind": label}, "model": {"objective": objective}}
    if ok:
        parse_config(PipelineConfig, data, "job.yaml")
    else:
        with pytest.raises(ConfigError, match=f"does not fit label.kind '{label}'"):
            parse_config(PipelineConfig, data, "job.yaml")


def test_panel_features_must_name_selected_features_and_a_universe_benchmark():
    with pytest.raises(ConfigError, match=r"features: .*cross_sectional features \['rsi_14'\] are not among"):
        parse_config(
            PipelineConfig, {**BASE, "features": {"names": ["logret_5"], "cross_sectional": ["rsi_14"]}}, "j"
        )
    with pytest.raises(ConfigError, match="features.benchmark 'SPX' must be one of universe.symbols"):
        parse_config(PipelineConfig, {**BASE, "features": {"benchmark": "SPX"}}, "j")
    ok = {**BASE, "universe": {**BASE["universe"], "symbols": ["AAPL", "SPX"]},
          "features": {"names": ["default"], "cross_sectional": ["rsi_14"], "benchmark": "SPX"}}  # fmt: skip
    assert parse_config(PipelineConfig, ok, "j").features.benchmark == "SPX"
