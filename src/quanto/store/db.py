"""Connections, database creation and ordered migrations."""

from __future__ import annotations

import contextlib
import os
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/quanto"
_MIGRATION_LOCK = 74_210_001  # arbitrary constant: one advisory lock id for Quanto's migrations
_migrated: set[str] = set()


def dsn_from_env() -> str:
    """The DSN from `QUANTO_PG_DSN`, or the local default."""
    return os.environ.get("QUANTO_PG_DSN", DEFAULT_DSN)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    info = conninfo_to_dict(dsn)
    if "password" in info:
        info["password"] = "***"
    return make_conninfo(**info)


def ensure_database(dsn: str) -> None:
    """Create the DSN's database when it does not exist (connecting to `postgres` to do so)."""
    info = conninfo_to_dict(dsn)
    name = info.get("dbname") or "quanto"
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
        return
    except psycopg.OperationalError as err:
        if "does not exist" not in str(err):
            raise
    admin = make_conninfo(**{**info, "dbname": "postgres"})
    # Another process may create it first; that is fine.
    with (
        psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn,
        contextlib.suppress(psycopg.errors.DuplicateDatabase),
    ):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def migration_files() -> list[tuple[str, str]]:
    """(version, SQL) of the packaged migrations in order."""
    folder = resources.files("quanto.store") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations in order under an advisory lock; returns the versions applied."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migration_files():
            if version in done:
                continue
            conn.execute(text)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def connect(dsn: str | None = None) -> psycopg.Connection:
    """A connection to Quanto's database, created and migrated on first use in this process."""
    dsn = dsn or dsn_from_env()
    if dsn not in _migrated:
        ensure_database(dsn)
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            migrate(conn)
        _migrated.add(dsn)
    return psycopg.connect(dsn, connect_timeout=10)
