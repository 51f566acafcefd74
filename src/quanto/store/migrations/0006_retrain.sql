-- Retraining decisions: one row per RetrainWorkflow run, written in the transaction that promotes the
-- challenger (when it wins), so the registry never changes without the reason it changed.
CREATE TABLE IF NOT EXISTS retrain_decisions (
    id                bigserial        PRIMARY KEY,
    workflow_id       text             NOT NULL,
    run_id            text             NOT NULL,
    name              text             NOT NULL,  -- the job name: models are promoted per name
    challenger        text             NOT NULL,  -- model id trained by this run
    incumbent         text,                       -- production model when it was scored; null: none
    metric            text             NOT NULL,
    challenger_score  double precision,           -- null: the metric is undefined on the holdout
    incumbent_score   double precision,           -- null: no incumbent, or it could not be scored
    margin            double precision NOT NULL,
    margin_kind       text             NOT NULL,
    decision          text             NOT NULL,  -- the rule's verdict
    promoted          boolean          NOT NULL,  -- false for keep, and for promote under promote: never
    reason            text             NOT NULL,
    metrics           jsonb            NOT NULL,  -- both metric sets, holdout, window, rule
    decided_at        timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT retrain_decision_known CHECK (decision IN ('promote', 'keep')),
    CONSTRAINT retrain_margin_kind_known CHECK (margin_kind IN ('absolute', 'relative')),
    -- A retried activity finds the decision of its run instead of deciding twice.
    CONSTRAINT retrain_one_decision_per_run UNIQUE (workflow_id, run_id)
);
CREATE INDEX IF NOT EXISTS retrain_decisions_name_decided ON retrain_decisions (name, decided_at DESC);
