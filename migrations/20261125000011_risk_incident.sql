-- Alerts that share an actor or a transaction within a time window (any chains), merged into one
-- incident (`domain::risk::correlate`), recomputed by the risk worker as alerts arrive. The id is
-- the earliest member's, so an incident keeps its id while it grows.
CREATE TABLE risk_incident (
    id          TEXT COLLATE "C" PRIMARY KEY,
    alert_ids   TEXT[]      NOT NULL,
    chain_ids   BIGINT[]    NOT NULL,
    stages      TEXT[]      NOT NULL,
    severity    TEXT        NOT NULL,
    first_at    TIMESTAMPTZ NOT NULL,
    last_at     TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX risk_incident_alerts_idx ON risk_incident USING gin (alert_ids);
