-- Ingestion: one row per partition (what it holds and where), kept current as partitions are topped up.
CREATE TABLE IF NOT EXISTS ingest_partitions (
    partition_id  text        PRIMARY KEY,
    vendor        text        NOT NULL,
    dataset       text        NOT NULL,
    timeframe     text        NOT NULL,
    symbols       text[]      NOT NULL,
    period_start  date        NOT NULL,
    period_end    date        NOT NULL,
    covered       jsonb       NOT NULL,
    rows          bigint      NOT NULL,
    rejected      bigint      NOT NULL,
    files         jsonb       NOT NULL,
    route         text        NOT NULL,
    workflow_id   text        NOT NULL,
    run_id        text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ingest_partitions_dataset ON ingest_partitions (vendor, dataset, timeframe);
