-- Operational records of the research pipeline.
CREATE TABLE IF NOT EXISTS runs (
    workflow_id   text        NOT NULL,
    run_id        text        NOT NULL,
    kind          text        NOT NULL,
    config_name   text        NOT NULL,
    config_hash   text        NOT NULL,
    status        text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    metrics       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    report_html   text,
    report_pdf    text,
    PRIMARY KEY (workflow_id, run_id)
);

CREATE TABLE IF NOT EXISTS manifests (
    stage         text        NOT NULL,
    key           text        NOT NULL,
    run_id        text        NOT NULL,
    workflow_id   text        NOT NULL,
    code_version  text        NOT NULL,
    config        jsonb       NOT NULL,
    inputs        jsonb       NOT NULL,
    outputs       jsonb       NOT NULL,
    counters      jsonb       NOT NULL,
    status        text        NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    path          text        NOT NULL,
    PRIMARY KEY (stage, key)
);

CREATE TABLE IF NOT EXISTS data_quality (
    id            bigserial   PRIMARY KEY,
    stage_key     text        NOT NULL,
    workflow_id   text        NOT NULL,
    dataset       text        NOT NULL,
    symbol        text        NOT NULL,
    rule          text        NOT NULL,
    count         bigint      NOT NULL,
    example       text,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS data_quality_stage_key ON data_quality (stage_key);

CREATE TABLE IF NOT EXISTS models (
    model_id      text        PRIMARY KEY,
    kind          text        NOT NULL,
    objective     text        NOT NULL,
    stage         text        NOT NULL DEFAULT 'candidate',
    path          text        NOT NULL,
    features      jsonb       NOT NULL,
    config        jsonb       NOT NULL,
    data_hashes   jsonb       NOT NULL,
    metrics       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
