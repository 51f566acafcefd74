-- Risk limits changed during a session (the workflow's set_risk_limits update): the loop reads them
-- before every bar; NULL means the job file's limits.
ALTER TABLE trading_controls ADD COLUMN IF NOT EXISTS risk_limits jsonb;
