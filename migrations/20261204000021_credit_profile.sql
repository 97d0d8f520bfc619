-- The scorer's working state per wallet: its credit profile (domain::profile::CreditProfile, the
-- behaviour and position folds) as of the last lending_event row folded, whose sort key is kept
-- in columns. Rescoring a wallet reads only its rows after that key, so an event costs the same
-- whatever the wallet's history. Written in the transaction of the scores and offsets it
-- produced; not a read model (where it stands depends on batch boundaries), emptied by
-- `chainfold rebuild`, and checked on every read against wallet_lending_summary's count, so a
-- stale or missing row only costs one full read of the wallet's history.
CREATE TABLE credit_profile (
    chain_id        BIGINT      NOT NULL,
    wallet          TEXT        NOT NULL,
    -- History rows up to the cursor (folded, or skipped for want of an action or time).
    rows_folded     BIGINT      NOT NULL,
    cursor_time     TIMESTAMPTZ NOT NULL,
    -- A missing block or log index is stored as the largest value: it sorts last, as NULLS LAST.
    cursor_block    BIGINT      NOT NULL,
    cursor_log      BIGINT      NOT NULL,
    cursor_event_id TEXT        NOT NULL,
    -- The cursor row's block hash: if a reorg orphaned any folded row, it orphaned this one.
    cursor_block_hash TEXT,
    state           JSONB       NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, wallet)
);

-- The scorer reads a wallet's history in this order, from a cursor on.
CREATE INDEX lending_event_history_idx ON lending_event
    (chain_id, wallet, block_time, block_number, log_index, event_id);

-- The scorer prices a batch from the points of the last 30 days before its earliest trigger and
-- the one point before them: two range scans, whatever the length of the reserve's history.
CREATE INDEX oracle_update_asset_time_idx ON oracle_update
    (chain_id, asset, (coalesce(updated_at, block_time)));
CREATE INDEX lending_event_reserve_price_idx ON lending_event (chain_id, reserve, block_time, event_id)
    WHERE price_usd IS NOT NULL;
