"""PostgreSQL: the database is created when missing and migrations apply once, in order."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from quanto.store import db

pytestmark = pytest.mark.integration


def test_database_created_and_migrated_once(pg_dsn):
    name = f"quanto_mig_{uuid.uuid4().hex[:8]}"
    dsn = pg_dsn.rsplit("/", 1)[0] + "/" + name
    try:
        with db.connect(dsn) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == [v for v, _ in db.migration_files()]
            tables = {
                r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
            assert {"runs", "manifests", "data_quality", "models"} <= tables
            assert db.migrate(conn) == []  # applying again changes nothing
    finally:
        with psycopg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_redacted_dsn_hides_the_password():
    assert "s3cret" not in db.redact_dsn("postgresql://u:s3cret@h:5432/d")
