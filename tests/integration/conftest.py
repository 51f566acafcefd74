"""Integration fixtures: small job files, a worker per test session, helpers to start and watch runs."""

from __future__ import annotations

import asyncio
import copy
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from quanto.config.models import PipelineConfig
from quanto.starter.client import connect
from quanto.starter.server import DevServer
from tests.conftest import free_port, start_worker

pytestmark = pytest.mark.integration

# Minute bars of 3 synthetic symbols over ~6 weeks: long enough for ~20 walk-forward folds, so a test
# can kill a worker in the middle of that stage; small enough to finish in well under a minute.
INTRADAY: dict[str, Any] = {
    "universe": {
        "vendor": "synthetic",
        "symbols": ["SYN0", "SYN1", "SYN2"],
        "timeframe": "1min",
        "start": "2024-03-01",
        "end": "2024-04-13",
        "synthetic": {"seed": 5, "bad_tick_rate": 0.0005},
    },
    "label": {"kind": "forward_return", "horizon": 15},
    "model": {"params": {"n_estimators": 60, "num_leaves": 15, "min_child_samples": 100}, "n_jobs": 1},
    "walk_forward": {"scheme": "expanding", "train_bars": 3900, "test_bars": 390, "embargo_bars": 15},
    "backtest": {"mode": "long_short"},
    "evaluation": {"canary": False},  # durability is the point here; the daily job runs the canary
    "runtime": {"heartbeat_timeout_s": 4, "max_attempts": 10},
}

# Daily sample bars of two stocks: a quick pipeline for the replay and failure tests.
DAILY: dict[str, Any] = {
    "universe": {"vendor": "sample", "symbols": ["IBM", "MSFT"], "start": "2008-01-01", "end": "2012-01-01"},
    "model": {"params": {"n_estimators": 30}, "n_jobs": 1},
    "walk_forward": {"train_bars": 500, "test_bars": 126},
    "report": {"formats": ["html"]},
    "runtime": {"heartbeat_timeout_s": 10},
}


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base`."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(folder: Path, name: str, base: dict, **over: Any) -> tuple[Path, PipelineConfig]:
    """Write a job file named `name` with its own lake under `folder`; returns (path, validated config)."""
    data = merge(base, {"name": name, "lake_root": str(folder / "lake"), **over})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, PipelineConfig.model_validate(data)


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 30) -> int | None:
    """Signal a child's whole process group (worker + its process pool), as Ctrl-C in a terminal does.

    Returns the exit code, or None when the group had to be SIGKILLed after `wait_s`.
    """
    import os

    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return proc.wait()
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return None


@pytest.fixture(scope="session")
def session_worker(temporal_server, pg_dsn, tmp_path_factory) -> Iterator[subprocess.Popen]:
    """One `quanto worker` for the tests that do not kill workers."""
    proc = start_worker(tmp_path_factory.mktemp("worker-logs") / "worker.log")
    yield proc
    # After running real activities (process pool and manager alive) the worker still stops cleanly
    # when the whole group is signalled, as with Ctrl-C.
    assert stop_process_group(proc, signal.SIGINT, wait_s=20) == 0


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A dev server of this test alone (no other worker may poll it), persisted to SQLite."""
    server = DevServer(state_dir=tmp_path / "temporal", port=free_port(), ui_port=0)
    server.start()
    monkeypatch.setenv("TEMPORAL_ADDRESS", server.address)
    yield server
    server.stop()


async def pending_activity(handle, activity_type: str) -> Any | None:
    """The pending activity of that type in the workflow's description, if any."""
    desc = await handle.describe()
    for pa in desc.raw_description.pending_activities:
        if pa.activity_type.name == activity_type:
            return pa
    return None


async def training_child(client, handle):
    """The TrainingWorkflow handle of a pipeline run (its walk-forward stage runs as that child)."""
    run_id = (await handle.describe()).run_id
    return client.get_workflow_handle(f"{handle.id}-training-{run_id}")


async def training_progress(child):
    """The child's `progress` query, or None while the child has not started yet."""
    from temporalio.service import RPCError

    from quanto.contracts import TrainingProgress

    try:
        return await child.query("progress", result_type=TrainingProgress)
    except RPCError:
        return None


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


__all__ = [
    "DAILY",
    "INTRADAY",
    "connect",
    "pending_activity",
    "training_child",
    "training_progress",
    "wait_for",
    "write_config",
]
