"""Lake writes are atomic and content-addressed; stages skip when their manifest exists."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from quanto.contracts import FileRef
from quanto.lake.materialize import Materialized, StageContext, materialize, stage_key
from quanto.lake.storage import Lake


def frame(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {"symbol": ["A"] * n, "ts": pd.date_range("2024", periods=n, tz="UTC"), "x": range(n)}
    )


def test_same_content_same_file_and_hash(tmp_path):
    lake = Lake(tmp_path)
    a = lake.write_frame("gold/x", frame())
    b = lake.write_frame("gold/x", frame())
    c = lake.write_frame("gold/x", frame(6))
    assert a == b and a.path != c.path
    assert a.path.startswith("gold/x/part-") and a.path.endswith(".parquet") and a.rows == 5
    assert [p.name for p in (tmp_path / "gold/x").iterdir() if p.name.startswith(".tmp")] == []
    pd.testing.assert_frame_equal(lake.read_frame([a]), frame())


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    lake = Lake(tmp_path)

    def half_written(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr("quanto.lake.storage.pq.write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        lake.write_frame("gold/y", frame())
    assert list((tmp_path / "gold/y").iterdir()) == []


def _ctx(tmp_path) -> StageContext:
    return StageContext(lake=Lake(tmp_path), record=False)


def test_materialize_computes_once_then_skips(tmp_path):
    ctx = _ctx(tmp_path)
    calls = []

    def compute(key: str) -> Materialized:
        calls.append(key)
        return Materialized([ctx.lake.write_frame(f"gold/s/{key[:8]}", frame())], {"rows": 5}, {"note": "hi"})

    inputs = [FileRef(path="in.parquet", sha256="ab" * 32, rows=1)]
    first = materialize("stage", ctx, inputs, {"k": 1}, compute)
    second = materialize("stage", ctx, inputs, {"k": 1}, compute)
    assert len(calls) == 1 and not first.skipped and second.skipped
    assert (
        second.outputs == first.outputs
        and second.summary == {"note": "hi"}
        and second.counters == {"rows": 5}
    )
    manifest = json.loads((tmp_path / first.manifest).read_text())
    assert manifest["inputs"][0]["sha256"] == "ab" * 32 and manifest["status"] == "completed"
    assert manifest["config"] == {"k": 1} and manifest["code_version"]

    # Different config or inputs → a different key → computed again.
    materialize("stage", ctx, inputs, {"k": 2}, compute)
    materialize("stage", ctx, [FileRef(path="in.parquet", sha256="cd" * 32)], {"k": 1}, compute)
    assert len(calls) == 3


def test_missing_output_means_not_materialized(tmp_path):
    ctx = _ctx(tmp_path)
    n = []

    def compute(key: str) -> Materialized:
        n.append(1)
        return Materialized([ctx.lake.write_frame("gold/z", frame())])

    first = materialize("stage", ctx, [], {}, compute)
    (tmp_path / first.outputs[0].path).unlink()
    again = materialize("stage", ctx, [], {}, compute)
    assert not again.skipped and len(n) == 2


def test_crash_inside_compute_writes_no_manifest(tmp_path):
    ctx = _ctx(tmp_path)

    def boom(key: str) -> Materialized:
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        materialize("stage", ctx, [], {}, boom)
    assert not (tmp_path / "manifests").exists()


def test_stage_key_ignores_input_order():
    a, b = FileRef(path="a", sha256="1" * 64), FileRef(path="b", sha256="2" * 64)
    assert stage_key("s", [a, b], {"x": 1}) == stage_key("s", [b, a], {"x": 1})
    assert stage_key("s", [a], {"x": 1}) != stage_key("t", [a], {"x": 1})


def test_long_file_lists_travel_in_the_manifest_not_the_payload(tmp_path):
    from quanto.lake.materialize import MAX_INLINE_OUTPUTS, hydrate, slim

    ctx = _ctx(tmp_path)
    n = MAX_INLINE_OUTPUTS + 5

    def compute(key: str) -> Materialized:
        return Materialized([ctx.lake.write_frame(f"gold/many/{i}", frame(i + 1)) for i in range(n)])

    full = materialize("many", ctx, [], {}, compute)
    small = slim(full)
    assert small.outputs == [] and small.outputs_in_manifest
    assert len(small.model_dump_json()) < len(full.model_dump_json()) / 4
    assert hydrate(ctx.lake, small).outputs == full.outputs
    few = materialize(
        "few", ctx, [], {}, lambda key: Materialized([ctx.lake.write_frame("gold/one", frame())])
    )
    assert slim(few) is few and hydrate(ctx.lake, few) is few
