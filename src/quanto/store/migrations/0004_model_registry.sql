-- Model registry: a job name per model, its stage (candidate | production), when it was promoted, the
-- registry version of each feature, and the code version that trained it. Rows written before this
-- migration keep working: their name comes from the config the train stage stored.
ALTER TABLE models ADD COLUMN IF NOT EXISTS name text;
UPDATE models SET name = coalesce(config ->> 'name', model_id) WHERE name IS NULL;
ALTER TABLE models ALTER COLUMN name SET NOT NULL;

ALTER TABLE models ADD COLUMN IF NOT EXISTS promoted_at timestamptz;
ALTER TABLE models ADD COLUMN IF NOT EXISTS feature_versions jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE models ADD COLUMN IF NOT EXISTS fold_summary jsonb;
ALTER TABLE models ADD COLUMN IF NOT EXISTS code_version text;

ALTER TABLE models DROP CONSTRAINT IF EXISTS models_stage_known;
ALTER TABLE models ADD CONSTRAINT models_stage_known CHECK (stage IN ('candidate', 'production'));

-- At most one production model per name: `promote` demotes the previous one in the same transaction.
CREATE UNIQUE INDEX IF NOT EXISTS models_one_production ON models (name) WHERE stage = 'production';
CREATE INDEX IF NOT EXISTS models_name_created ON models (name, created_at DESC);
