"""Repositories for the research pipeline's records: manifests, data quality, runs and models."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
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


MODEL_STAGES = ("candidate", "production")
_MODEL_COLUMNS = (
    "model_id, name, kind, objective, stage, path, features, feature_versions, config, data_hashes,"
    " metrics, fold_summary, code_version, created_at, promoted_at"
)
_UPSERT_MODEL = f"""
    INSERT INTO models (model_id, name, kind, objective, path, features, feature_versions, config,
                        data_hashes, metrics, fold_summary, code_version, created_at)
    VALUES (%(model_id)s, %(name)s, %(kind)s, %(objective)s, %(path)s, %(features)s,
            %(feature_versions)s, %(config)s, %(data_hashes)s, %(metrics)s, %(fold_summary)s,
            %(code_version)s, coalesce(%(created_at)s, now()))
    ON CONFLICT (model_id) DO UPDATE SET
        name = EXCLUDED.name, kind = EXCLUDED.kind, objective = EXCLUDED.objective, path = EXCLUDED.path,
        features = EXCLUDED.features, feature_versions = EXCLUDED.feature_versions,
        config = EXCLUDED.config, data_hashes = EXCLUDED.data_hashes, metrics = EXCLUDED.metrics,
        fold_summary = EXCLUDED.fold_summary, code_version = EXCLUDED.code_version
    RETURNING {_MODEL_COLUMNS}
"""


def upsert_model(conn: psycopg.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """Register a trained model; a new one is `candidate`. Re-registering the same id refreshes what
    was recorded about it but keeps its stage and first registration time. Returns the stored row.

    `name` (the job name) defaults to the config's `name`, else the model id, as migration 0004 did
    for older rows; `feature_versions`, `fold_summary`, `code_version` and `created_at` are optional.
    """
    fold_summary = row.get("fold_summary")
    params = {
        **{k: row[k] for k in ("model_id", "kind", "objective", "path")},
        **{k: Jsonb(row[k]) for k in ("features", "config", "data_hashes", "metrics")},
        "name": row.get("name") or (row["config"] or {}).get("name") or row["model_id"],
        "feature_versions": Jsonb(row.get("feature_versions") or {}),
        "fold_summary": None if fold_summary is None else Jsonb(fold_summary),
        "code_version": row.get("code_version"),
        "created_at": row.get("created_at"),
    }
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_UPSERT_MODEL, params)
        return cur.fetchone()


def _model_rows(conn: psycopg.Connection, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_MODEL_COLUMNS} FROM models {where} ORDER BY created_at DESC, model_id", params)
        return cur.fetchall()


def select_models(
    conn: psycopg.Connection, name: str | None = None, stage: str | None = None
) -> list[dict[str, Any]]:
    """Model rows, newest first, optionally only those of one name and/or one stage."""
    return _model_rows(
        conn,
        "WHERE (%(name)s::text IS NULL OR name = %(name)s) AND (%(stage)s::text IS NULL OR stage = %(stage)s)",
        {"name": name, "stage": stage},
    )


def select_model(conn: psycopg.Connection, model_id: str) -> dict[str, Any] | None:
    """The row of one model, or None when no model has that id."""
    rows = _model_rows(conn, "WHERE model_id = %(model_id)s", {"model_id": model_id})
    return rows[0] if rows else None


def promote_model(conn: psycopg.Connection, model_id: str) -> dict[str, Any] | None:
    """Make `model_id` the production model of its name and demote the previous one to candidate, in
    one transaction. Returns {model_id, name, promoted_at, demoted: [ids], changed}, or None when no
    model has that id. Promoting the production model again changes nothing (changed = False)."""
    with conn.transaction():
        found = conn.execute("SELECT name FROM models WHERE model_id = %s", (model_id,)).fetchone()
        if found is None:
            return None
        name = found[0]
        # Serializes promotions of one name: two at once would each demote "the other" and then
        # collide on the one-production-per-name index.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 4))", (name,))
        stage, promoted_at = conn.execute(
            "SELECT stage, promoted_at FROM models WHERE model_id = %s", (model_id,)
        ).fetchone()
        out = {
            "model_id": model_id,
            "name": name,
            "promoted_at": promoted_at,
            "demoted": [],
            "changed": False,
        }
        if stage == "production":
            return out
        demoted = conn.execute(
            "UPDATE models SET stage = 'candidate' WHERE name = %s AND stage = 'production' RETURNING model_id",
            (name,),
        ).fetchall()
        (promoted_at,) = conn.execute(
            "UPDATE models SET stage = 'production', promoted_at = now() WHERE model_id = %s"
            " RETURNING promoted_at",
            (model_id,),
        ).fetchone()
    return {**out, "promoted_at": promoted_at, "demoted": [r[0] for r in demoted], "changed": True}


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


_DECISION_COLUMNS = (
    "id, workflow_id, run_id, name, challenger, incumbent, metric, challenger_score, incumbent_score,"
    " margin, margin_kind, decision, promoted, reason, metrics, decided_at"
)


def insert_retrain_decision(conn: psycopg.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """Record a retraining decision; returns the stored row. A run has one decision: when its row
    exists already (a retried activity), that row is returned and nothing is written."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"""
            INSERT INTO retrain_decisions (workflow_id, run_id, name, challenger, incumbent, metric,
                                           challenger_score, incumbent_score, margin, margin_kind,
                                           decision, promoted, reason, metrics)
            VALUES (%(workflow_id)s, %(run_id)s, %(name)s, %(challenger)s, %(incumbent)s, %(metric)s,
                    %(challenger_score)s, %(incumbent_score)s, %(margin)s, %(margin_kind)s, %(decision)s,
                    %(promoted)s, %(reason)s, %(metrics)s)
            ON CONFLICT (workflow_id, run_id) DO NOTHING
            RETURNING {_DECISION_COLUMNS}
            """,
            {**row, "metrics": Jsonb(row["metrics"])},
        )
        stored = cur.fetchone()
    if stored is not None:
        return stored
    return select_retrain_decisions(conn, workflow_id=row["workflow_id"], run_id=row["run_id"])[0]


def select_retrain_decisions(
    conn: psycopg.Connection,
    name: str | None = None,
    workflow_id: str | None = None,
    run_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Retraining decisions, newest first, optionally of one job name and/or one workflow (run)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_DECISION_COLUMNS} FROM retrain_decisions"
            " WHERE (%(name)s::text IS NULL OR name = %(name)s)"
            " AND (%(workflow_id)s::text IS NULL OR workflow_id = %(workflow_id)s)"
            " AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s)"
            " ORDER BY decided_at DESC, id DESC LIMIT %(limit)s",
            {"name": name, "workflow_id": workflow_id, "run_id": run_id, "limit": limit},
        )
        return cur.fetchall()
