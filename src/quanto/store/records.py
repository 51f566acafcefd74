"""Repositories for the research pipeline's records: manifests, data quality, runs and models."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def upsert_manifest(conn: psycopg.Connection, m: dict[str, Any], path: str) -> None:
    """Insert a stage manifest row (or replace the row of the same stage and key)."""
    conn.execute(
        """
        INSERT INTO manifests (stage, key, run_id, workflow_id, code_version, config, inputs, outputs,
                               counters, status, started_at, finished_at, path)
        VALUES (%(stage)s, %(key)s, %(run_id)s, %(workflow_id)s, %(code_version)s, %(config)s, %(inputs)s,
                %(outputs)s, %(counters)s, %(status)s, %(started_at)s, %(finished_at)s, %(path)s)
        ON CONFLICT (stage, key) DO UPDATE SET
            run_id = EXCLUDED.run_id, workflow_id = EXCLUDED.workflow_id, outputs = EXCLUDED.outputs,
            counters = EXCLUDED.counters, status = EXCLUDED.status, started_at = EXCLUDED.started_at,
            finished_at = EXCLUDED.finished_at, path = EXCLUDED.path
        """,
        {
            **{k: m[k] for k in ("stage", "key", "run_id", "workflow_id", "code_version", "status")},
            "config": Jsonb(m["config"]),
            "inputs": Jsonb(m["inputs"]),
            "outputs": Jsonb(m["outputs"]),
            "counters": Jsonb(m["counters"]),
            "started_at": m["started_at"],
            "finished_at": m["finished_at"],
            "path": path,
        },
    )


def replace_quality(
    conn: psycopg.Connection, stage_key: str, workflow_id: str, rows: list[dict[str, Any]]
) -> None:
    """Store the data-quality rows of one validation output (replacing earlier rows of the same key)."""
    # Two runs computing the same key at once (validate + pipeline) must not both insert.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (stage_key,))
    conn.execute("DELETE FROM data_quality WHERE stage_key = %s", (stage_key,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO data_quality (stage_key, workflow_id, dataset, symbol, rule, policy, count, example)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    stage_key,
                    workflow_id,
                    r["dataset"],
                    r["symbol"],
                    r["rule"],
                    r.get("policy", "quarantine"),
                    r["count"],
                    r.get("example"),
                )
                for r in rows
            ],
        )


def replace_imputation_audit(
    conn: psycopg.Connection, stage_key: str, run_id: str, dataset: str, audit
) -> int:
    """Store one row per imputed value (replacing earlier rows of the same stage key); COPY for speed.

    `audit` is a polars frame with columns symbol, ts, column, old, new, method, rule.
    """
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 2))", (stage_key,))
    conn.execute("DELETE FROM imputation_audit WHERE stage_key = %s", (stage_key,))
    columns = "stage_key, run_id, dataset, symbol, ts, column_name, old_value, new_value, method, rule"
    with conn.cursor() as cur, cur.copy(f"COPY imputation_audit ({columns}) FROM STDIN") as copy:
        for r in audit.iter_rows(named=True):
            copy.write_row(
                (
                    stage_key,
                    run_id,
                    dataset,
                    r["symbol"],
                    r["ts"],
                    r["column"],
                    r["old"],
                    r["new"],
                    r["method"],
                    r["rule"],
                )
            )
    return audit.height


def upsert_model(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Register a trained model (stage `candidate`); re-registering the same id updates its metrics."""
    conn.execute(
        """
        INSERT INTO models (model_id, kind, objective, path, features, config, data_hashes, metrics)
        VALUES (%(model_id)s, %(kind)s, %(objective)s, %(path)s, %(features)s, %(config)s,
                %(data_hashes)s, %(metrics)s)
        ON CONFLICT (model_id) DO UPDATE SET metrics = EXCLUDED.metrics, path = EXCLUDED.path
        """,
        {
            **{k: row[k] for k in ("model_id", "kind", "objective", "path")},
            **{k: Jsonb(row[k]) for k in ("features", "config", "data_hashes", "metrics")},
        },
    )


def record_run(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Insert or update a pipeline run's row (status, metrics, report paths)."""
    conn.execute(
        """
        INSERT INTO runs (workflow_id, run_id, kind, config_name, config_hash, status, finished_at,
                          metrics, report_html, report_pdf)
        VALUES (%(workflow_id)s, %(run_id)s, %(kind)s, %(config_name)s, %(config_hash)s, %(status)s,
                CASE WHEN %(status)s IN ('running') THEN NULL ELSE now() END,
                %(metrics)s, %(report_html)s, %(report_pdf)s)
        ON CONFLICT (workflow_id, run_id) DO UPDATE SET
            status = EXCLUDED.status, finished_at = EXCLUDED.finished_at, metrics = EXCLUDED.metrics,
            report_html = EXCLUDED.report_html, report_pdf = EXCLUDED.report_pdf
        """,
        {**row, "metrics": Jsonb(row.get("metrics", {}))},
    )


def upsert_ingest_partition(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Insert or replace the row of one ingestion partition (what it covers, its files and counts)."""
    conn.execute(
        """
        INSERT INTO ingest_partitions (partition_id, vendor, dataset, timeframe, symbols, period_start,
                                       period_end, covered, rows, rejected, files, route, workflow_id,
                                       run_id, updated_at)
        VALUES (%(partition_id)s, %(vendor)s, %(dataset)s, %(timeframe)s, %(symbols)s, %(period_start)s,
                %(period_end)s, %(covered)s, %(rows)s, %(rejected)s, %(files)s, %(route)s, %(workflow_id)s,
                %(run_id)s, now())
        ON CONFLICT (partition_id) DO UPDATE SET
            covered = EXCLUDED.covered, rows = EXCLUDED.rows, rejected = EXCLUDED.rejected,
            files = EXCLUDED.files, route = EXCLUDED.route, workflow_id = EXCLUDED.workflow_id,
            run_id = EXCLUDED.run_id, updated_at = now()
        """,
        {**row, "covered": Jsonb(row["covered"]), "files": Jsonb(row["files"])},
    )
