"""The model registry against PostgreSQL, and `quanto models ls | show | promote` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from quanto.lake.storage import Lake, sha256_file
from quanto.models import registry
from quanto.models.base import Design
from quanto.store import db
from quanto.store.records import promote_model
from tests.unit.test_model_registry import HASHES, TinyLeastSquares, config

pytestmark = pytest.mark.integration


def quanto(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", "models", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def conn(pg_dsn):
    with db.connect(pg_dsn) as c:
        c.autocommit = True  # each registry call commits on its own, as the CLI's do
        yield c


@pytest.fixture
def name() -> str:
    """A job name of this test alone (the session's database is shared)."""
    return f"job{uuid.uuid4().hex[:8]}"


def fit(seed: int) -> TinyLeastSquares:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"symbol": "AAA", "ts": pd.date_range("2021-01-01", periods=30, tz="UTC"), "f1": rng.normal(size=30)}
    )
    design = Design(frame, ["f1"])
    rows = np.arange(30)
    return TinyLeastSquares(config().model).fit(design, rows, design.tabular(rows)[:, 0] * seed)


def register(lake: Lake, conn, model_id: str, name: str, sharpe: float) -> registry.ModelRecord:
    return registry.register_model(
        lake,
        fit(len(model_id)),
        model_id=model_id,
        config=config(name=name),
        features={"f1": 1},
        data_hashes=HASHES,
        metrics={"sharpe": sharpe},
        db=conn,
    )


def test_promote_demotes_the_previous_production_model(tmp_path, conn, name):
    lake = Lake(tmp_path / "lake")
    first = register(lake, conn, f"{name}-a", name, 0.5)
    second = register(lake, conn, f"{name}-b", name, 0.9)
    other = register(lake, conn, f"other{name}-a", f"other{name}", 0.1)
    assert {first.stage, second.stage, other.stage} == {"candidate"}
    assert registry.get_model(conn, first.model_id).created_at == first.created_at

    done = registry.promote(conn, first.model_id)
    assert done.changed and done.demoted == [] and done.name == name
    assert registry.get_model(conn, first.model_id).stage == "production"

    done = registry.promote(conn, second.model_id)
    assert done.demoted == [first.model_id]
    stages = {r.model_id: (r.stage, r.promoted_at is not None) for r in registry.list_models(conn, name=name)}
    assert stages == {first.model_id: ("candidate", True), second.model_id: ("production", True)}
    assert registry.get_model(conn, other.model_id).stage == "candidate"  # another name is untouched

    again = registry.promote(conn, second.model_id)  # idempotent
    assert not again.changed and again.promoted_at == done.promoted_at and again.demoted == []
    assert [r.model_id for r in registry.list_models(conn, name=name, stage="production")] == [
        second.model_id
    ]

    # Re-registering a model (a rerun) keeps its stage and first registration time.
    rerun = register(lake, conn, second.model_id, name, 1.1)
    assert (rerun.stage, rerun.created_at, rerun.metrics) == (
        "production",
        second.created_at,
        {"sharpe": 1.1},
    )

    with pytest.raises(registry.UnknownModelError, match=f"'{name}-zz' is not registered"):
        registry.promote(conn, f"{name}-zz")
    # The database itself refuses a second production model of one name.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE models SET stage = 'production' WHERE model_id = %s", (first.model_id,))


def test_concurrent_promotions_of_one_name_serialize(tmp_path, pg_dsn, conn, name):
    lake = Lake(tmp_path / "lake")
    a, b = (register(lake, conn, f"{name}-{s}", name, 0.0).model_id for s in "ab")
    errors: list[BaseException] = []
    with db.connect(pg_dsn) as first, db.connect(pg_dsn) as second:
        first.execute("SELECT 1")  # an open transaction: the promotion below holds its lock until commit
        promote_model(first, a)
        waiter_pid = second.info.backend_pid

        def promote_b() -> None:
            try:
                promote_model(second, b)
                second.commit()
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=promote_b)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the second promotion is blocked on the lock
            waiting = conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (waiter_pid,)
            ).fetchone()
            if waiting and waiting[0] == "Lock":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the second promotion never waited for the first")
        first.commit()
        thread.join(timeout=30)
    assert errors == []
    stages = {r.model_id: r.stage for r in registry.list_models(conn, name=name)}
    assert stages == {a: "candidate", b: "production"}


def test_models_cli_ls_show_promote(tmp_path, conn, name):
    lake = Lake(tmp_path / "lake")
    first = register(lake, conn, f"{name}-a", name, 0.5)
    second = register(lake, conn, f"{name}-b", name, 0.9)

    run = quanto("promote", first.model_id, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    promoted = json.loads(run.stdout)
    assert promoted.pop("promoted_at")
    assert promoted == {
        "model_id": first.model_id,
        "name": name,
        "stage": "production",
        "demoted": [],
        "changed": True,
    }
    run = quanto("promote", second.model_id, "--json", cwd=tmp_path)
    assert run.returncode == 0 and json.loads(run.stdout)["demoted"] == [first.model_id]

    ls = json.loads(quanto("ls", "--name", name, "--json", cwd=tmp_path).stdout)
    assert [(m["model_id"], m["stage"], m["metrics"]) for m in ls["models"]] == [
        (second.model_id, "production", {"sharpe": 0.9}),  # newest first
        (first.model_id, "candidate", {"sharpe": 0.5}),
    ]
    keys = {"model_id", "name", "family", "objective", "stage", "created_at", "metrics"}
    assert set(ls["models"][0]) == keys
    assert ls["models"][0]["family"] == "linear" and ls["models"][0]["objective"] == "regression"

    run = quanto("show", second.model_id, "--lake", "lake", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    folder = tmp_path / "lake" / "models" / second.model_id
    assert shown["stage"] == "production" and shown["features"] == {"f1": 1}
    assert shown["config"]["name"] == name and shown["data_hashes"] == HASHES
    assert shown["path"] == f"models/{second.model_id}" and shown["artifact_dir"] == str(folder)
    on_disk = sorted(folder.iterdir(), key=lambda p: (p.name == "card.json", p.name))  # the card last
    assert [(f["path"], f["sha256"], f["role"]) for f in shown["files"]] == [
        (
            f"models/{second.model_id}/{p.name}",
            sha256_file(p),
            "model_card" if p.name == "card.json" else "model",
        )
        for p in on_disk
    ]
    assert shown["problems"] == []
    text = quanto("show", second.model_id, "--lake", "lake", cwd=tmp_path).stdout
    assert f"{second.model_id}  ({name}, linear regression)" in text and "f1@1" in text

    for command in ("show", "promote"):
        bad = quanto(command, f"{name}-zz", "--json", cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr
        assert f"'{name}-zz' is not registered" in json.loads(bad.stdout)["error"]
    bad = quanto("ls", "--stage", "live", "--json", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown stage 'live'" in json.loads(bad.stdout)["error"]


def test_migration_keeps_models_registered_before_it(pg_dsn):
    dbname = f"quanto_mig_{uuid.uuid4().hex[:8]}"
    dsn = pg_dsn.rsplit("/", 1)[0] + "/" + dbname
    admin = pg_dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        with psycopg.connect(dsn) as c:
            c.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz)")
            for version, text in db.migration_files():
                if version < "0004":  # the schema as it was before the registry
                    c.execute(text)
                    c.execute("INSERT INTO schema_migrations VALUES (%s, now())", (version,))
            # A row as the train stage wrote it before the registry.
            c.execute(
                "INSERT INTO models (model_id, kind, objective, path, features, config, data_hashes, metrics)"
                " VALUES ('old-1', 'lightgbm', 'regression', 'models/old-1', %s, %s, %s, %s)",
                (Jsonb(["f1"]), Jsonb({"name": "legacy"}), Jsonb(["c" * 64]), Jsonb({"n_train": 5})),
            )
            c.commit()
            assert "0004_model_registry" in db.migrate(c)
            old = registry.get_model(c, "old-1")
            assert (old.name, old.stage, old.features) == ("legacy", "candidate", {"f1": None})
            assert old.data_hashes == ["c" * 64] and old.metrics == {"n_train": 5}
            assert registry.promote(c, "old-1").changed
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
