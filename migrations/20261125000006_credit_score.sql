-- Wallet credit scores, full history (`chainfold score`). One row per (wallet, triggering
-- event): a replayed event rescoring the same wallet is the same row (ON CONFLICT DO NOTHING),
-- so a restarted scorer neither loses nor duplicates scores.
--
-- Provenance: the triggering event (id, topic/partition/offset, block) and the projector offset
-- of that partition the features were read at (the scorer waits until the projector has folded
-- the event before it reads the wallet's history).
CREATE TABLE credit_score (
    id              BIGSERIAL PRIMARY KEY,
    chain_id        BIGINT      NOT NULL,
    wallet          TEXT COLLATE "C" NOT NULL,
    score           INTEGER     NOT NULL CHECK (score BETWEEN 300 AND 850),
    band            TEXT        NOT NULL,
    probability_of_liquidation DOUBLE PRECISION,
    -- [{code, description, impact}], largest |impact| first
    reasons         JSONB       NOT NULL,
    model_version   TEXT        NOT NULL,
    model_sha256    TEXT        NOT NULL,
    -- the triggering event's time (block time): what the features saw as "now"
    computed_at     TIMESTAMPTZ,
    event_id        TEXT COLLATE "C" NOT NULL,
    kafka_topic     TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    projector_next_offset BIGINT NOT NULL,
    block_number    BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (chain_id, wallet, event_id)
);
CREATE INDEX credit_score_wallet_idx ON credit_score (chain_id, wallet, id DESC);

-- The latest score per wallet.
CREATE VIEW credit_score_latest AS
SELECT DISTINCT ON (chain_id, wallet) *
FROM credit_score
ORDER BY chain_id, wallet, id DESC;
