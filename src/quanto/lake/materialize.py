"""Content-addressed stage materialization: a stage's output key is hash(inputs, config, code version).

When the manifest of a key exists (and its outputs are present) the stage is skipped and says so;
otherwise it computes, writes its outputs atomically, then its manifest (JSON in the lake + a row in
PostgreSQL). The manifest is written last, so a crash mid-stage leaves no manifest and the stage reruns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import structlog

from quanto.contracts import FileRef, StageResult
from quanto.lake.storage import Lake, sha256_json
from quanto.observability import metrics

log = structlog.get_logger("quanto.stage")

# A stage's counters that are row counts, and their kind in quanto_stage_rows_total.
ROW_COUNTERS = {
    "rows_in": "in",
    "accepted": "out",
    "rows": "out",
    "predictions": "out",
    "quarantined": "quarantined",
    "imputed": "imputed",
}


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the package's source files: changing code invalidates materialized outputs."""
    from quanto import __version__

    h = hashlib.sha256()
    # Paths relative to the package root: identical code hashes the same wherever it is installed.
    stack: list[tuple[Any, str]] = [(resources.files("quanto"), "")]
    files: list[tuple[str, Any]] = []
    while stack:
        node, rel = stack.pop()
        for child in node.iterdir():
            if child.is_dir() and child.name != "__pycache__":
                stack.append((child, f"{rel}{child.name}/"))
            elif child.name.endswith((".py", ".sql", ".j2", ".css")):
                files.append((f"{rel}{child.name}", child))
    for rel, f in sorted(files, key=lambda item: item[0]):
        h.update(rel.encode())
        h.update(f.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def _no_progress(done: int, total: int, note: str = "") -> None:
    return None


@dataclass
class StageContext:
    """What a stage needs from its runner: the lake, identity, records, progress and resume state."""

    lake: Lake
    workflow_id: str = "local"
    run_id: str = "local"
    record: bool = True  # write manifest/quality/model rows to PostgreSQL
    dsn: str | None = None
    progress: Callable[[int, int, str], None] = _no_progress
    resume: Any = None  # checkpoint details of an earlier attempt of this activity, if any
    heartbeat_details: Any = None  # checkpoint details a retry should receive (sent with heartbeats)
    events: list[str] = field(default_factory=list)

    def db(self):
        """A connection to Quanto's database (created and migrated on first use)."""
        from quanto.store.db import connect

        return connect(self.dsn)


@dataclass
class Materialized:
    """What a stage's compute function returns."""

    outputs: list[FileRef]
    counters: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def stage_key(stage: str, inputs: list[FileRef], config: Any) -> str:
    """The content address of a stage's output."""
    return sha256_json(
        {
            "stage": stage,
            "inputs": sorted(f.sha256 for f in inputs),
            "config": config,
            "code": code_version(),
        }
    )


def _manifest_path(stage: str, key: str) -> str:
    return f"manifests/{stage}/{key}.json"


def load_manifest(lake: Lake, stage: str, key: str) -> dict[str, Any] | None:
    """The manifest of (stage, key) when it and all its outputs exist, else None."""
    import json

    path = lake.abspath(_manifest_path(stage, key))
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    outputs = [FileRef(**o) for o in manifest["outputs"]]
    return manifest if lake.exists(outputs) else None


def _record_manifest(ctx: StageContext, manifest: dict[str, Any], rel: str) -> None:
    from quanto.store.records import upsert_manifest

    with ctx.db() as conn:
        upsert_manifest(conn, manifest, rel)


MAX_INLINE_OUTPUTS = 16  # more files than this travel in the manifest, not in workflow payloads


def slim(result: StageResult) -> StageResult:
    """The result without its file list when that list is long (it stays in the manifest)."""
    if len(result.outputs) <= MAX_INLINE_OUTPUTS:
        return result
    return result.model_copy(update={"outputs": [], "outputs_in_manifest": True})


def hydrate(lake: Lake, result: StageResult) -> StageResult:
    """The result with its file list read back from its manifest when `slim` left it out."""
    if not result.outputs_in_manifest:
        return result
    import json

    manifest = json.loads(lake.abspath(result.manifest).read_text())
    outputs = [FileRef(**o) for o in manifest["outputs"]]
    return result.model_copy(update={"outputs": outputs, "outputs_in_manifest": False})


def materialize(
    stage: str,
    ctx: StageContext,
    inputs: list[FileRef],
    config: Any,
    compute: Callable[[str], Materialized],
) -> StageResult:
    """Run `compute(key)` unless the stage's output for these inputs/config/code already exists."""
    key = stage_key(stage, inputs, config)
    t0 = time.perf_counter()
    existing = load_manifest(ctx.lake, stage, key)
    if existing is not None:
        log.info("stage skipped: already materialized", stage=stage, key=key[:12])
        metrics.observe_stage(stage, time.perf_counter() - t0, "skipped")
        if ctx.record:
            # Idempotent: restores the row if an earlier run lost it (database down, record=False run).
            _record_manifest(ctx, existing, _manifest_path(stage, key))
        return StageResult(
            stage=stage,
            key=key,
            skipped=True,
            outputs=[FileRef(**o) for o in existing["outputs"]],
            counters=existing["counters"],
            summary=existing.get("summary", {}),
            manifest=_manifest_path(stage, key),
            seconds=time.perf_counter() - t0,
        )
    started = dt.datetime.now(dt.UTC)
    log.info("stage started", stage=stage, key=key[:12], inputs=len(inputs))
    try:
        result = compute(key)
    except Exception:
        metrics.observe_stage(stage, time.perf_counter() - t0, "failed")
        raise
    finished = dt.datetime.now(dt.UTC)
    manifest = {
        "stage": stage,
        "key": key,
        "run_id": ctx.run_id,
        "workflow_id": ctx.workflow_id,
        "inputs": [f.model_dump() for f in inputs],
        "config": config,
        "code_version": code_version(),
        "outputs": [f.model_dump() for f in result.outputs],
        "counters": result.counters,
        "summary": result.summary,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "status": "completed",
    }
    rel = _manifest_path(stage, key)
    # The database row first, the JSON last: the JSON's presence is what makes the stage skip.
    if ctx.record:
        _record_manifest(ctx, manifest, rel)
    ctx.lake.write_json(rel, manifest)
    seconds = time.perf_counter() - t0
    log.info("stage finished", stage=stage, key=key[:12], seconds=round(seconds, 3), **result.counters)
    metrics.observe_stage(stage, seconds, "completed")
    for name, kind in ROW_COUNTERS.items():
        if name in result.counters:
            metrics.count_rows(stage, kind, result.counters[name])
    return StageResult(
        stage=stage,
        key=key,
        outputs=result.outputs,
        counters=result.counters,
        summary=result.summary,
        manifest=rel,
        seconds=seconds,
    )
