"""Benchmark: the demo pipeline through Temporal vs the same stage functions called in one process.

Prints JSON lines (DESIGN.md section 9):
- pipeline_demo: ours = through a real dev server + `quanto worker`; peer = direct in-process calls.
  Goal: ours / peer <= 1.10 (ratio = peer_s / ours_s >= 0.91).
- pipeline_warm_rerun: ours = rerun through Temporal when every stage is materialized; peer = a cold
  in-process run. Goal: ours <= 5 s.
Each rep writes to a fresh lake so nothing is skipped; medians of REPS after one warm-up of each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> None:
    from quanto.config.loading import load_config
    from quanto.config.models import PipelineConfig
    from quanto.lake.materialize import StageContext
    from quanto.lake.storage import Lake
    from quanto.research import run_pipeline_local
    from quanto.starter.client import connect
    from quanto.starter.pipeline import start_pipeline
    from quanto.starter.server import DevServer

    base = load_config(PipelineConfig, REPO / "configs/demo.yaml")
    work = Path(tempfile.mkdtemp(prefix="quanto-bench-"))
    os.environ["QUANTO_LOG_DIR"] = str(work)
    from quanto.observability.logging import configure_logging

    configure_logging(console=False)  # stdout carries only the JSON result lines
    server = DevServer(state_dir=work / "temporal", port=_free_port(), ui_port=0)
    server.start()
    os.environ["TEMPORAL_ADDRESS"] = server.address
    log = open(work / "worker.log", "ab")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "quanto.starter.cli", "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
        start_new_session=True,
    )
    try:
        client = await connect()

        async def through_temporal(lake: Path) -> tuple[float, object]:
            cfg = base.model_copy(update={"lake_root": str(lake)})
            t0 = time.perf_counter()
            handle = await start_pipeline(client, cfg, "bench")
            result = await handle.result()
            return time.perf_counter() - t0, result

        def direct(lake: Path) -> tuple[float, dict]:
            cfg = base.model_copy(update={"lake_root": str(lake)})
            t0 = time.perf_counter()
            results = run_pipeline_local(cfg, StageContext(lake=Lake(lake), workflow_id="bench-direct"))
            return time.perf_counter() - t0, results

        temporal_s, direct_s = [], []
        for rep in range(REPS + 1):  # rep 0 warms up worker processes and imports
            t, result = await through_temporal(work / f"lake-t{rep}")
            d, local = direct(work / f"lake-d{rep}")
            assert result.metrics == local["backtest"].summary["metrics"], "Temporal and direct runs disagree"
            if rep:
                temporal_s.append(t)
                direct_s.append(d)
        rows = local["ingest"].counters["rows"]
        ours, peer = statistics.median(temporal_s), statistics.median(direct_s)
        print(json.dumps({
            "bench": "pipeline_demo", "n": rows, "ours_s": round(ours, 3), "peer": "direct_in_process",
            "peer_s": round(peer, 3), "ratio": round(peer / ours, 3), "unit_rate": round(rows / ours, 1),
            "overhead": round(ours / peer, 3), "goal": "overhead <= 1.10", "reps": REPS,
        }), flush=True)  # fmt: skip

        warm = []
        for _ in range(REPS):
            t, result = await through_temporal(work / f"lake-t{REPS}")
            assert all(s.skipped for s in result.stages)
            warm.append(t)
        w = statistics.median(warm)
        print(json.dumps({
            "bench": "pipeline_warm_rerun", "n": rows, "ours_s": round(w, 3), "peer": "direct_cold_run",
            "peer_s": round(peer, 3), "ratio": round(peer / w, 3), "unit_rate": round(rows / w, 1),
            "goal": "ours_s <= 5", "reps": REPS,
        }), flush=True)  # fmt: skip
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
