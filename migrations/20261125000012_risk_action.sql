-- Recommendations executed on-chain by `chainfold actuate --heal` (simulator only): which
-- alert, what was done, the transaction that did it, or why it failed.
CREATE TABLE risk_action (
    alert_id    TEXT COLLATE "C" PRIMARY KEY REFERENCES risk_alert (id) ON DELETE CASCADE,
    chain_id    BIGINT      NOT NULL,
    action      TEXT        NOT NULL,
    reserve     TEXT        NOT NULL,
    amount      DOUBLE PRECISION NOT NULL,
    tx_hash     TEXT,
    tx_block    BIGINT,
    error       TEXT,
    acted_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
