-- Read models fed by the live JSON-RPC ingest (and `chainfold simulate`): pool state from
-- Uniswap V2 `Sync` and V3 `Swap`, liquidity changes, lending positions, flash loans, oracle
-- prices, and the chain heads that finality is measured against.
--
-- Reorgs: the ingest publishes a retraction (same event_id, the orphaned block's hash) for every
-- event of an orphaned block; the projector deletes the row whose event_id AND block_hash match.
-- Everything "current" below is therefore a VIEW over event rows (latest per entity, or a sum),
-- so it is right again the moment the orphaned rows are gone: no state to unwind.
--
-- Finality: `final` is true when the row's block is at least `confirmations` (per chain, from
-- chains.toml) below the last head the ingest published; NULL where the source has no block.

CREATE TABLE chain_head (
    chain_id      BIGINT PRIMARY KEY,
    name          TEXT        NOT NULL,
    number        BIGINT      NOT NULL,
    hash          TEXT COLLATE "C" NOT NULL,
    parent_hash   TEXT COLLATE "C" NOT NULL,
    block_time    TIMESTAMPTZ,
    confirmations BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Uniswap V3 pool state after each swap (NULL for V2 and recorded swaps).
ALTER TABLE swap
    ADD COLUMN sqrt_price_x96 NUMERIC(78,0),
    ADD COLUMN liquidity      NUMERIC(78,0),
    ADD COLUMN tick           INTEGER;

CREATE TABLE pool_sync (
    event_id     TEXT COLLATE "C" PRIMARY KEY,
    chain_id     BIGINT        NOT NULL,
    pool         TEXT COLLATE "C" NOT NULL,
    protocol     TEXT          NOT NULL,
    token0       TEXT COLLATE "C" NOT NULL,
    token1       TEXT COLLATE "C" NOT NULL,
    reserve0     NUMERIC(78,0) NOT NULL,
    reserve1     NUMERIC(78,0) NOT NULL,
    block_number BIGINT,
    block_hash   TEXT COLLATE "C",
    tx_hash      TEXT COLLATE "C",
    log_index    INTEGER,
    block_time   TIMESTAMPTZ,
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX pool_sync_pool_idx ON pool_sync (chain_id, pool, block_number DESC, log_index DESC);

-- Latest reserves per V2 pool; price = reserve1 / reserve0 in raw units (token1 per token0 before
-- decimals).
CREATE VIEW pool_state AS
SELECT DISTINCT ON (s.chain_id, s.pool)
       s.chain_id, s.pool, s.protocol, s.token0, s.token1, s.reserve0, s.reserve1,
       CASE WHEN s.reserve0 > 0 THEN s.reserve1 / s.reserve0 END AS price_raw,
       s.block_number, s.block_hash, s.tx_hash, s.log_index, s.block_time,
       (s.block_number <= h.number - h.confirmations) AS final
FROM pool_sync s
LEFT JOIN chain_head h ON h.chain_id = s.chain_id
ORDER BY s.chain_id, s.pool, s.block_number DESC, s.log_index DESC;

-- Latest state per V3 pool; price_raw = (sqrtPriceX96 / 2^96)^2 (token1 per token0, raw units).
CREATE VIEW pool_v3_state AS
SELECT DISTINCT ON (s.chain_id, s.pool)
       s.chain_id, s.pool, s.protocol, s.sqrt_price_x96, s.liquidity, s.tick,
       power(s.sqrt_price_x96 / 79228162514264337593543950336, 2) AS price_raw,
       s.block_number, s.block_hash, s.tx_hash, s.log_index, s.block_time,
       (s.block_number <= h.number - h.confirmations) AS final
FROM swap s
LEFT JOIN chain_head h ON h.chain_id = s.chain_id
WHERE s.sqrt_price_x96 IS NOT NULL
ORDER BY s.chain_id, s.pool, s.block_number DESC, s.log_index DESC;

CREATE TABLE liquidity_event (
    event_id     TEXT COLLATE "C" PRIMARY KEY,
    chain_id     BIGINT        NOT NULL,
    pool         TEXT COLLATE "C" NOT NULL,
    protocol     TEXT          NOT NULL,
    kind         TEXT          NOT NULL CHECK (kind IN ('mint', 'burn')),
    sender       TEXT COLLATE "C",
    owner        TEXT COLLATE "C",
    amount0      NUMERIC(78,0) NOT NULL,
    amount1      NUMERIC(78,0) NOT NULL,
    -- V3 only
    liquidity    NUMERIC(78,0),
    tick_lower   INTEGER,
    tick_upper   INTEGER,
    block_number BIGINT,
    block_hash   TEXT COLLATE "C",
    tx_hash      TEXT COLLATE "C",
    log_index    INTEGER,
    block_time   TIMESTAMPTZ,
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX liquidity_event_pool_idx ON liquidity_event (chain_id, pool, block_number);

CREATE TABLE flash_loan (
    event_id     TEXT COLLATE "C" PRIMARY KEY,
    chain_id     BIGINT        NOT NULL,
    protocol     TEXT          NOT NULL,
    -- the lending pool that lent
    pool         TEXT COLLATE "C" NOT NULL,
    target       TEXT COLLATE "C" NOT NULL,
    initiator    TEXT COLLATE "C" NOT NULL,
    asset        TEXT COLLATE "C" NOT NULL,
    symbol       TEXT          NOT NULL,
    decimals     SMALLINT      NOT NULL,
    amount       NUMERIC(78,0) NOT NULL,
    premium      NUMERIC(78,0) NOT NULL,
    block_number BIGINT,
    block_hash   TEXT COLLATE "C",
    tx_hash      TEXT COLLATE "C",
    log_index    INTEGER,
    block_time   TIMESTAMPTZ,
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX flash_loan_initiator_idx ON flash_loan (chain_id, initiator, block_number);

CREATE TABLE oracle_update (
    event_id     TEXT COLLATE "C" PRIMARY KEY,
    chain_id     BIGINT        NOT NULL,
    feed         TEXT COLLATE "C" NOT NULL,
    description  TEXT          NOT NULL,
    asset        TEXT COLLATE "C",
    answer       NUMERIC(78,0) NOT NULL,
    decimals     SMALLINT      NOT NULL,
    price        NUMERIC       NOT NULL,
    round_id     NUMERIC(78,0) NOT NULL,
    updated_at   TIMESTAMPTZ,
    block_number BIGINT,
    block_hash   TEXT COLLATE "C",
    tx_hash      TEXT COLLATE "C",
    log_index    INTEGER,
    block_time   TIMESTAMPTZ,
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX oracle_update_feed_idx ON oracle_update (chain_id, feed, block_number DESC, log_index DESC);

-- Latest price per feed.
CREATE VIEW oracle_price AS
SELECT DISTINCT ON (o.chain_id, o.feed)
       o.chain_id, o.feed, o.description, o.asset, o.price, o.answer, o.decimals, o.round_id,
       o.updated_at, o.block_number, o.block_hash, o.block_time,
       (o.block_number <= h.number - h.confirmations) AS final
FROM oracle_update o
LEFT JOIN chain_head h ON h.chain_id = o.chain_id
ORDER BY o.chain_id, o.feed, o.block_number DESC, o.log_index DESC;

-- Lending positions per wallet and reserve from the event flows: collateral = deposits -
-- redeems - collateral seized in liquidations; variable_debt = borrows - repays - debt covered
-- in liquidations. Principal only: no interest index is applied (the log carries none), so on
-- real Aave data repays of accrued interest can take debt below zero.
CREATE VIEW lending_position AS
WITH flow AS (
    SELECT chain_id, protocol, wallet, reserve, symbol, decimals, block_number,
           CASE action WHEN 'deposit' THEN amount WHEN 'redeem' THEN -amount ELSE 0 END AS collateral,
           CASE action WHEN 'borrow' THEN amount WHEN 'repay' THEN -amount
                       WHEN 'liquidation' THEN -amount ELSE 0 END AS debt
    FROM lending_event
    UNION ALL
    SELECT chain_id, protocol, wallet, collateral_reserve, collateral_symbol, collateral_decimals,
           block_number, -collateral_amount, 0
    FROM lending_event
    WHERE action = 'liquidation'
)
SELECT f.chain_id, f.protocol, f.wallet, f.reserve, max(f.symbol) AS symbol,
       max(f.decimals) AS decimals, sum(f.collateral) AS collateral,
       sum(f.debt) AS variable_debt, max(f.block_number) AS last_block,
       (max(f.block_number) <= max(h.number) - max(h.confirmations)) AS final
FROM flow f
LEFT JOIN chain_head h ON h.chain_id = f.chain_id
GROUP BY f.chain_id, f.protocol, f.wallet, f.reserve;
