-- AMM read models, folded from `chainfold.amm.v1`. Same conventions as the lending models.

-- One row per swap hop, keyed by event id. Reverted swaps (the recorded trace failed) are kept
-- with reverted = true and count in no volume.
CREATE TABLE swap (
    event_id      TEXT COLLATE "C"          PRIMARY KEY,
    chain_id      BIGINT        NOT NULL,
    pool          TEXT COLLATE "C"          NOT NULL,
    protocol      TEXT          NOT NULL,
    block_number  BIGINT,
    block_hash    TEXT COLLATE "C",
    tx_hash       TEXT COLLATE "C",
    tx_position   INTEGER       NOT NULL,
    -- call path inside the transaction (from traces); empty for log-decoded swaps
    trace_address INTEGER[]     NOT NULL,
    log_index     INTEGER,
    block_time    TIMESTAMPTZ,
    sender        TEXT COLLATE "C"          NOT NULL,
    recipient     TEXT COLLATE "C"          NOT NULL,
    token_in      TEXT COLLATE "C"          NOT NULL,
    amount_in     NUMERIC(78,0) NOT NULL CHECK (amount_in >= 0),
    token_out     TEXT COLLATE "C"          NOT NULL,
    amount_out    NUMERIC(78,0) NOT NULL CHECK (amount_out >= 0),
    reverted      BOOLEAN       NOT NULL,
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX swap_pool_idx ON swap (chain_id, pool, block_number, tx_position);

-- Per pool: successful and reverted swap counts and the block range seen.
CREATE TABLE pool_summary (
    chain_id      BIGINT NOT NULL,
    pool          TEXT COLLATE "C"   NOT NULL,
    protocol      TEXT   NOT NULL,
    swap_count    BIGINT NOT NULL,
    reverted_count BIGINT NOT NULL,
    first_block   BIGINT,
    last_block    BIGINT,
    PRIMARY KEY (chain_id, pool)
);
CREATE INDEX pool_summary_swaps_idx ON pool_summary (chain_id, swap_count DESC, pool);

-- Per pool and token: raw base units that flowed into the pool (sold to it) and out of it
-- (bought from it) in successful swaps. Net flow = volume_in - volume_out.
CREATE TABLE pool_token_volume (
    chain_id   BIGINT        NOT NULL,
    pool       TEXT COLLATE "C"          NOT NULL,
    token      TEXT COLLATE "C"          NOT NULL,
    volume_in  NUMERIC NOT NULL,
    volume_out NUMERIC NOT NULL,
    PRIMARY KEY (chain_id, pool, token)
);
