-- Trading records (DESIGN §5): one session's control state, orders, fills, position and P&L snapshots,
-- risk decisions and an append-only audit log. Every table is keyed by the session's workflow id
-- (trading-<account>-<date>) and carries the account, so a day can be read back (and reported) alone.

-- The gate the order loop reads before every submission batch (quanto.store.trading.submission_gate).
-- A row, not a workflow variable: a halt survives worker and server restarts.
CREATE TABLE IF NOT EXISTS trading_controls (
    workflow_id   text        PRIMARY KEY,
    account       text        NOT NULL,
    state         text        NOT NULL DEFAULT 'ACTIVE'
                              CONSTRAINT trading_controls_state_known CHECK (state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    reason        text        NOT NULL DEFAULT '',
    halted_at     timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    version       bigint      NOT NULL DEFAULT 1
);

-- One row per order, upserted as its status moves; bracket legs point at their parent.
CREATE TABLE IF NOT EXISTS orders (
    client_order_id        text             PRIMARY KEY,
    workflow_id            text             NOT NULL,
    account                text             NOT NULL,
    broker_order_id        text,
    parent_client_order_id text,
    symbol                 text             NOT NULL,
    side                   text             NOT NULL CONSTRAINT orders_side_known CHECK (side IN ('buy', 'sell')),
    qty                    double precision NOT NULL,
    type                   text             NOT NULL,
    time_in_force          text             NOT NULL,
    limit_price            double precision,
    stop_price             double precision,
    intent                 text             NOT NULL,
    decision_ts            timestamptz,
    status                 text             NOT NULL,
    filled_qty             double precision NOT NULL DEFAULT 0,
    filled_avg_price       double precision,
    submitted_at           timestamptz,
    updated_at             timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_workflow ON orders (workflow_id, submitted_at);

-- One row per execution; a fill reported twice (stream and poll) is stored once.
CREATE TABLE IF NOT EXISTS fills (
    order_id         text             NOT NULL,
    fill_id          text             NOT NULL,
    client_order_id  text             NOT NULL,
    workflow_id      text             NOT NULL,
    account          text             NOT NULL,
    symbol           text             NOT NULL,
    side             text             NOT NULL CONSTRAINT fills_side_known CHECK (side IN ('buy', 'sell')),
    qty              double precision NOT NULL,
    price            double precision NOT NULL,
    commission       double precision NOT NULL DEFAULT 0,
    ts               timestamptz      NOT NULL,
    recorded_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, fill_id)
);
CREATE INDEX IF NOT EXISTS fills_workflow ON fills (workflow_id, ts);

-- Position snapshots. `position_snapshots` has one row per snapshot, so a flat book (no position rows)
-- is a snapshot too and "the positions at the close" never shows an older, non-empty one.
CREATE TABLE IF NOT EXISTS position_snapshots (
    workflow_id   text        NOT NULL,
    ts            timestamptz NOT NULL,
    n_positions   integer     NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, ts)
);
CREATE TABLE IF NOT EXISTS positions (
    workflow_id      text             NOT NULL,
    ts               timestamptz      NOT NULL,
    symbol           text             NOT NULL,
    qty              double precision NOT NULL,
    avg_entry_price  double precision NOT NULL,
    price            double precision NOT NULL,
    market_value     double precision NOT NULL,
    PRIMARY KEY (workflow_id, ts, symbol),
    FOREIGN KEY (workflow_id, ts) REFERENCES position_snapshots (workflow_id, ts) ON DELETE CASCADE
);

-- The account's equity curve through the session (exposures and drawdown as fractions of equity).
CREATE TABLE IF NOT EXISTS pnl_snapshots (
    workflow_id     text             NOT NULL,
    ts              timestamptz      NOT NULL,
    account         text             NOT NULL,
    equity          double precision NOT NULL,
    cash            double precision NOT NULL,
    pnl             double precision NOT NULL,
    drawdown        double precision NOT NULL,
    gross_exposure  double precision NOT NULL,
    net_exposure    double precision NOT NULL,
    state           text             NOT NULL
                                     CONSTRAINT pnl_snapshots_state_known CHECK (state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    PRIMARY KEY (workflow_id, ts)
);

-- Every risk decision, approvals included.
CREATE TABLE IF NOT EXISTS risk_events (
    id           bigserial        PRIMARY KEY,
    workflow_id  text             NOT NULL,
    account      text             NOT NULL,
    ts           timestamptz      NOT NULL,
    rule         text             NOT NULL,
    action       text             NOT NULL
                                  CONSTRAINT risk_events_action_known CHECK (action IN ('approve', 'refuse', 'halt', 'disable', 'alert')),
    symbol       text,
    side         text,
    qty          double precision,
    notional     double precision,
    reason       text             NOT NULL DEFAULT '',
    details      jsonb            NOT NULL DEFAULT '{}'::jsonb,
    recorded_at  timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS risk_events_workflow ON risk_events (workflow_id, ts);

-- The audit log: signals received, state changes, orders, fills, risk, reconciliation, session events.
CREATE TABLE IF NOT EXISTS audit_log (
    id           bigserial   PRIMARY KEY,
    workflow_id  text        NOT NULL,
    account      text        NOT NULL,
    ts           timestamptz NOT NULL,
    kind         text        NOT NULL
                             CONSTRAINT audit_log_kind_known CHECK (
                                 kind IN ('signal', 'state_change', 'order', 'fill', 'risk', 'reconcile', 'session', 'control')
                             ),
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_log_workflow ON audit_log (workflow_id, id);

-- Append-only, enforced by the database rather than by convention: statement-level triggers, so even an
-- UPDATE or DELETE that matches no row is refused, and TRUNCATE (which row triggers never see) too.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed (rows can only be inserted)', TG_OP
        USING HINT = 'Record a correction as a new audit row instead.';
END
$$;
DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
