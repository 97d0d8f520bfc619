-- Risk alerts (`chainfold risk`): one row per detection, idempotent by a deterministic id (a
-- replay of the log detects the same things and stores nothing new). `seq` orders alerts for
-- consumers; `source_published_at` is when the newest event the detection used was published to
-- Kafka, so `detected_at - source_published_at` is the detection latency.
CREATE TABLE risk_alert (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    seq                 BIGSERIAL NOT NULL UNIQUE,
    kind                TEXT        NOT NULL CHECK (kind IN ('SANDWICH', 'FLASH_LOAN_ATTACK', 'LIQUIDITY_DRAIN', 'POOL_ANOMALY', 'LIQUIDITY_SHORTAGE')),
    severity            TEXT        NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    chain_id            BIGINT      NOT NULL,
    block_number        BIGINT      NOT NULL,
    tx_hashes           TEXT[]      NOT NULL,
    addresses           TEXT[]      NOT NULL,
    pools               TEXT[]      NOT NULL,
    evidence            JSONB       NOT NULL,
    detector_version    TEXT        NOT NULL,
    source_published_at TIMESTAMPTZ,
    detected_at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX risk_alert_kind_idx ON risk_alert (chain_id, kind, seq DESC);
