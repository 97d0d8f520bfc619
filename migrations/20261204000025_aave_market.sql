-- Aave accounting as the protocol computes it (issue 15). Positions are scaled balances times
-- the reserve's index, so the read models keep what the pool says about its reserves and about
-- each wallet's collateral use, next to the money flows in lending_event:
--   reserve_update       ReserveDataUpdated: rates (yearly, ray) and indices (ray) from this log on
--   reserve_config       CollateralConfigurationChanged: LTV, threshold, bonus (basis points)
--   collateral_enabled   ReserveUsedAsCollateralEnabled (wallet)
--   collateral_disabled  ReserveUsedAsCollateralDisabled (wallet)
-- `chainfold` folds these with lending_event in (block, log) order (domain::aave) to answer
-- `aaveAccount` exactly as the pool's getUserAccountData does.
ALTER TABLE lending_event ADD COLUMN pool TEXT COLLATE "C";
CREATE INDEX lending_event_pool_idx ON lending_event (chain_id, pool, wallet, block_number)
    WHERE pool IS NOT NULL;

CREATE TABLE lending_market_event (
    event_id     TEXT COLLATE "C" PRIMARY KEY,
    chain_id     BIGINT   NOT NULL,
    protocol     TEXT     NOT NULL,
    pool         TEXT COLLATE "C" NOT NULL,
    kind         TEXT     NOT NULL CHECK (kind IN ('reserve_update', 'reserve_config', 'collateral_enabled', 'collateral_disabled')),
    reserve      TEXT COLLATE "C" NOT NULL,
    symbol       TEXT     NOT NULL,
    decimals     SMALLINT NOT NULL,
    -- collateral_enabled / collateral_disabled
    wallet       TEXT COLLATE "C",
    -- reserve_update
    liquidity_rate        NUMERIC(78,0),
    stable_borrow_rate    NUMERIC(78,0),
    variable_borrow_rate  NUMERIC(78,0),
    liquidity_index       NUMERIC(78,0),
    variable_borrow_index NUMERIC(78,0),
    -- reserve_config
    ltv                   INTEGER,
    liquidation_threshold INTEGER,
    liquidation_bonus     INTEGER,
    block_number BIGINT,
    block_hash   TEXT COLLATE "C",
    tx_hash      TEXT COLLATE "C",
    log_index    INTEGER,
    block_time   TIMESTAMPTZ,
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX lending_market_event_reserve_idx ON lending_market_event (chain_id, pool, reserve, block_number, log_index)
    WHERE kind = 'reserve_update';
CREATE INDEX lending_market_event_config_idx ON lending_market_event (chain_id, pool, block_number)
    WHERE kind = 'reserve_config';
CREATE INDEX lending_market_event_wallet_idx ON lending_market_event (chain_id, pool, wallet) WHERE wallet IS NOT NULL;
