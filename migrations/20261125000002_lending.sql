-- Lending read models, folded from `chainfold.lending.v1`.
--
-- Conventions: addresses and hashes are lowercase 0x-hex TEXT COLLATE "C" (readable in psql,
-- compared bytewise: hex has no linguistic order, and locale comparisons slow every index
-- insert); token amounts are raw
-- base units in NUMERIC(78,0) (a U256 always fits); USD values are exact NUMERIC, computed as
-- amount / 10^decimals * price_usd at the event and rounded half-even to 18 places. Columns a
-- recorded source does not have (block, tx hash, log index, time) are NULL, never invented.

-- One row per lending event (deposit, borrow, repay, redeem, liquidation), keyed by the
-- deterministic event id: a replayed event is an upsert that changes nothing.
CREATE TABLE lending_event (
    event_id     TEXT COLLATE "C"          PRIMARY KEY,
    chain_id     BIGINT        NOT NULL,
    wallet       TEXT COLLATE "C"          NOT NULL,
    -- deposit | borrow | repay | redeem | liquidation
    action       TEXT          NOT NULL CHECK (action IN ('deposit', 'borrow', 'repay', 'redeem', 'liquidation')),
    protocol     TEXT          NOT NULL,
    -- the reserve the amount is in; for a liquidation, the debt reserve
    reserve      TEXT COLLATE "C"          NOT NULL,
    symbol       TEXT          NOT NULL,
    decimals     SMALLINT      NOT NULL,
    amount       NUMERIC(78,0) NOT NULL CHECK (amount >= 0),
    -- USD price of one whole token at the event; NULL when the source has none
    price_usd    NUMERIC,
    -- for a liquidation: the debt covered in USD
    amount_usd   NUMERIC,
    -- repayer, redeem recipient, borrow caller or liquidator, where the event names one
    counterparty TEXT COLLATE "C",
    -- the collateral side of a liquidation (NULL for the other actions)
    collateral_reserve   TEXT COLLATE "C",
    collateral_symbol    TEXT,
    collateral_decimals  SMALLINT,
    collateral_amount    NUMERIC(78,0) CHECK (collateral_amount >= 0),
    collateral_price_usd NUMERIC,
    collateral_usd       NUMERIC,
    block_number BIGINT,
    block_hash   TEXT COLLATE "C",
    tx_hash      TEXT COLLATE "C",
    log_index    INTEGER,
    block_time   TIMESTAMPTZ,
    -- where the projector read it: topic/partition/offset
    kafka_topic     TEXT   NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL
);
-- the wallet page lists a wallet's events newest first
CREATE INDEX lending_event_wallet_idx ON lending_event (chain_id, wallet, block_time DESC, event_id);

-- Liquidations with both sides, for analysts: a view over lending_event, so each liquidation
-- is written once (the projector's hot path) and read as its own relation.
CREATE VIEW liquidation AS
SELECT event_id, chain_id, wallet,
       counterparty AS liquidator,
       collateral_reserve, collateral_symbol, collateral_decimals, collateral_amount,
       collateral_price_usd, collateral_usd,
       reserve AS debt_reserve, symbol AS debt_symbol, amount AS debt_covered,
       price_usd AS debt_price_usd, amount_usd AS debt_usd,
       block_number, tx_hash, block_time
FROM lending_event
WHERE action = 'liquidation';

-- Per wallet, chain and action: how many events and their USD total. Maintained incrementally
-- from the rows a batch newly inserted into lending_event, so replays never count twice.
-- `priced_count` < `event_count` means some events had no USD price (their USD is not in
-- amount_usd).
CREATE TABLE wallet_lending_summary (
    chain_id     BIGINT      NOT NULL,
    wallet       TEXT COLLATE "C"        NOT NULL,
    action       TEXT        NOT NULL,
    event_count  BIGINT      NOT NULL,
    priced_count BIGINT      NOT NULL,
    amount_usd   NUMERIC     NOT NULL,
    first_at     TIMESTAMPTZ,
    last_at      TIMESTAMPTZ,
    PRIMARY KEY (chain_id, wallet, action)
);
