-- Validation: the policy behind each quality row, and one audit row per imputed value.
ALTER TABLE data_quality ADD COLUMN IF NOT EXISTS policy text NOT NULL DEFAULT 'quarantine';

CREATE TABLE IF NOT EXISTS imputation_audit (
    id            bigserial   PRIMARY KEY,
    stage_key     text        NOT NULL,
    run_id        text        NOT NULL,
    dataset       text        NOT NULL,
    symbol        text        NOT NULL,
    ts            timestamptz NOT NULL,
    column_name   text        NOT NULL,
    old_value     double precision,
    new_value     double precision,
    method        text        NOT NULL,
    rule          text        NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS imputation_audit_stage_key ON imputation_audit (stage_key);
CREATE INDEX IF NOT EXISTS imputation_audit_symbol_ts ON imputation_audit (symbol, ts);
