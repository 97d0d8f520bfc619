-- The live ingest's own durable state (not a read model: `chainfold rebuild` keeps it).
--
-- ingest_checkpoint: per chain, the last block whose events were all acknowledged by Kafka. A
--   restart resumes at the next block: no gap, and nothing confirmed is published again.
-- ingest_block: hashes of the last `reorg_window` blocks processed one by one near the head; a
--   new block whose parent is not the stored hash is a reorg.
-- ingest_journal: the envelopes published from those blocks, so a reorg can publish the exact
--   retraction of each (same event id, key and topic) even after a restart.

CREATE TABLE ingest_checkpoint (
    chain_id     BIGINT PRIMARY KEY,
    block_number BIGINT NOT NULL,
    block_hash   TEXT COLLATE "C",
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE ingest_block (
    chain_id    BIGINT NOT NULL,
    number      BIGINT NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL,
    parent_hash TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, number)
);

CREATE TABLE ingest_journal (
    chain_id     BIGINT  NOT NULL,
    block_number BIGINT  NOT NULL,
    log_index    INTEGER NOT NULL,
    -- lending | amm | oracle (the unprefixed topic kind)
    topic_kind   TEXT    NOT NULL,
    payload      BYTEA   NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

-- The chain's genesis hash when the follower first saw it: a local devnet restarted from
-- scratch keeps its chain id but not its genesis, and must not be taken for a deep reorg.
CREATE TABLE ingest_chain (
    chain_id     BIGINT PRIMARY KEY,
    genesis_hash TEXT COLLATE "C" NOT NULL
);

-- Pools announced by watched factories (`[[chain.factory]]`), watched from then on.
CREATE TABLE ingest_discovered (
    chain_id      BIGINT NOT NULL,
    address       TEXT COLLATE "C" NOT NULL,
    -- uniswap_v2_pair | uniswap_v3_pool
    kind          TEXT NOT NULL,
    token0        TEXT COLLATE "C" NOT NULL,
    token1        TEXT COLLATE "C" NOT NULL,
    created_block BIGINT NOT NULL,
    PRIMARY KEY (chain_id, address)
);
