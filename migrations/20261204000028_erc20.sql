-- ERC-20 transfers of watched tokens (contract kind `erc20_token`, topic chainfold.transfers.v1).
--
-- Log indexes take the whole u32 range here (some chains put synthetic logs at 0xfffffffc), so
-- log_index is BIGINT; so are the ingest's own journals, which every published event passes
-- through. The protocol tables keep INTEGER and refuse (dead-letter) a larger index instead of
-- wrapping it.
ALTER TABLE ingest_journal ALTER COLUMN log_index TYPE BIGINT;
ALTER TABLE ingest_pending ALTER COLUMN log_index TYPE BIGINT;

-- What each token said about itself when the ingest first read it (name(), symbol(),
-- decimals()); NULL where the call failed or answered an empty string, NUL bytes removed.
-- Written from the transfers themselves, so a rebuild from the log restores it.
CREATE TABLE erc20_token (
    chain_id  BIGINT NOT NULL,
    token     TEXT COLLATE "C" NOT NULL,
    name      TEXT,
    symbol    TEXT,
    decimals  SMALLINT,
    PRIMARY KEY (chain_id, token)
);

CREATE TABLE erc20_transfer (
    event_id        TEXT COLLATE "C" PRIMARY KEY,
    chain_id        BIGINT NOT NULL,
    token           TEXT COLLATE "C" NOT NULL,
    block_number    BIGINT,
    block_hash      TEXT COLLATE "C",
    tx_hash         TEXT COLLATE "C",
    log_index       BIGINT,
    block_time      TIMESTAMPTZ,
    from_address    TEXT COLLATE "C" NOT NULL,
    to_address      TEXT COLLATE "C" NOT NULL,
    -- base units, exact: a uint256 (up to 2^256-1) fits NUMERIC(78,0)
    value           NUMERIC(78, 0) NOT NULL,
    kafka_topic     TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL
);
CREATE INDEX erc20_transfer_token_block ON erc20_transfer (chain_id, token, block_number, log_index);
CREATE INDEX erc20_transfer_from ON erc20_transfer (chain_id, from_address, block_number);
CREATE INDEX erc20_transfer_to ON erc20_transfer (chain_id, to_address, block_number);

-- Balances folded from the transfers in the same transaction as them, and unfolded by the
-- retraction that deletes a transfer: always the sum over erc20_transfer (a test checks). The
-- zero address's balance is minus the net minted supply. NUMERIC without a scale: a holder of a
-- 2^256-1 transfer twice is still exact.
CREATE TABLE erc20_balance (
    chain_id  BIGINT NOT NULL,
    token     TEXT COLLATE "C" NOT NULL,
    holder    TEXT COLLATE "C" NOT NULL,
    balance   NUMERIC NOT NULL,
    transfers BIGINT NOT NULL,
    PRIMARY KEY (chain_id, token, holder)
);
CREATE INDEX erc20_balance_holder ON erc20_balance (chain_id, holder);
CREATE INDEX erc20_balance_emptied ON erc20_balance (chain_id) WHERE transfers = 0;
