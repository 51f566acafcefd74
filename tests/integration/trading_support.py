"""Trading test support: a small research job trained in-process (the model a session trades), and
trading job files on the same synthetic symbols."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from quanto.config.models import PipelineConfig
from quanto.config.trading import TradingConfig
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake

SYMBOLS = ["TRA", "TRB", "TRC"]
SEED = 21

RESEARCH: dict[str, Any] = {
    "name": "trading-test-research",
    "universe": {
        "vendor": "synthetic",
        "symbols": SYMBOLS,
        "timeframe": "1min",
        "start": "2024-02-05",
        "end": "2024-02-10",
        "synthetic": {"seed": SEED, "bad_tick_rate": 0.0},
    },
    "features": {"names": ["logret_1", "logret_5", "logret_20", "vol_20", "ret_skew_20"]},
    "label": {"kind": "forward_return", "horizon": 5},
    "model": {"params": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 50}, "n_jobs": 1},
    "walk_forward": {"train_bars": 1500, "test_bars": 300},
    "evaluation": {"canary": False},
}

TRADING: dict[str, Any] = {
    "name": "trading-test",
    "account": "acct",
    "mode": "paper",
    "universe": {
        "vendor": "synthetic",
        "symbols": SYMBOLS,
        "synthetic": {"seed": SEED, "bad_tick_rate": 0.0},
    },
    "feed": {"source": "replay", "warmup_sessions": 1, "replay": {"date": "2024-03-15", "speed": 0}},
    "model": {"job": "trading-test-research"},
    "strategy": {"mode": "long_short", "fraction": 0.04, "commission_bps": 1, "slippage_bps": 2},
    # Loose account limits: the parity test compares with a backtest, which has none of them.
    "risk": {"max_daily_loss": 0.5, "max_drawdown": 0.5, "min_window_return": -0.5},
    "broker": {"kind": "local"},
    "heartbeat_timeout_s": 6,  # a SIGKILLed worker's session moves on after 6 s
}


def train_research_model(lake_root: Path, dsn: str) -> str:
    """Train the research job's model in-process (ingest → train), promote it, return its id."""
    from quanto.models.registry import promote
    from quanto.research import run_pipeline_local
    from quanto.store.db import connect

    cfg = PipelineConfig.model_validate({**RESEARCH, "lake_root": str(lake_root)})
    ctx = StageContext(lake=Lake(lake_root), workflow_id="trading-test-research", run_id="r1", dsn=dsn)
    model_id = run_pipeline_local(cfg, ctx, until="train")["train"].summary["model_id"]
    with connect(dsn) as conn:
        promote(conn, model_id)
    return model_id


def trading_config(lake_root: Path, port: int, **over: Any) -> TradingConfig:
    """The trading job on the test's lake and exchange port, with `over` merged in."""
    data = copy.deepcopy(TRADING)
    data["lake_root"] = str(lake_root)
    data["broker"]["port"] = port
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return TradingConfig.model_validate(data)


def write_trading_config(folder: Path, cfg: TradingConfig) -> Path:
    """The job as a YAML file (what `quanto trade start -c` reads)."""
    path = folder / f"{cfg.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


@contextmanager
def local_exchange() -> Iterator[int]:
    """A local paper exchange process on a free port, owned by the test (killing a worker never
    kills it), stopped at the end; yields the port."""
    from quanto.starter.exchange import ensure_exchange, stop_exchange
    from tests.conftest import free_port

    port = free_port()
    ensure_exchange(port)
    try:
        yield port
    finally:
        stop_exchange(port)


def trade_in_process(
    cfg: TradingConfig, dsn: str, model_id: str, run_id: str, date: dt.date | None = None
) -> tuple[dict, list[tuple[str, dict]], StageContext]:
    """A session without the workflow: `prepare_day`, the local account, `run_session` on `date`
    (default: the replay's). Returns (the loop's stats, what it reported to the workflow, the context)."""
    from quanto.execution import day

    date = date or cfg.session_date()
    ctx = StageContext(
        lake=Lake(Path(cfg.lake_root)), workflow_id=cfg.workflow_id(date), run_id=run_id, dsn=dsn
    )
    prepared = day.prepare_day(cfg, ctx, date, confirmed=False)
    assert prepared["is_session"] and prepared["model_id"] == model_id
    day.prepare_local_account(cfg, ctx)
    events: list[tuple[str, dict]] = []
    stats = day.run_session(
        cfg,
        ctx,
        date,
        dt.datetime.fromisoformat(prepared["session_open"]),
        dt.datetime.fromisoformat(prepared["session_close"]),
        model_id,
        notify=lambda kind, payload: events.append((kind, payload)),
        heartbeat=lambda details: None,
        resume=None,
    )
    return stats, events, ctx
