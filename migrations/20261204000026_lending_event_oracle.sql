-- Lending events priced at the oracle round in force at them (issue 15): live RPC events carry
-- no USD price, so this view joins each event to the latest answer of its reserve's feed before
-- it in (block, log) order. `oracle_amount_usd` is exact (NUMERIC): amount / 10^decimals ×
-- price. `oracle_quote` says what the price is in (the feed's description, e.g. `ETH / USD`;
-- Aave V2 mainnet feeds quote in ETH). NULL where no feed of the reserve had answered yet.
CREATE INDEX oracle_update_asset_idx ON oracle_update (chain_id, asset, block_number DESC, log_index DESC)
    WHERE asset IS NOT NULL;

CREATE VIEW lending_event_oracle AS
SELECT e.event_id, e.chain_id, e.pool, e.wallet, e.action, e.reserve, e.symbol, e.decimals,
       e.amount, e.block_number, e.log_index, e.block_time,
       o.price AS oracle_price,
       o.description AS oracle_quote,
       o.block_number AS oracle_block,
       e.amount * o.price / power(10::numeric, e.decimals) AS oracle_amount_usd
FROM lending_event e
LEFT JOIN LATERAL (
    SELECT u.price, u.description, u.block_number
    FROM oracle_update u
    WHERE u.chain_id = e.chain_id AND u.asset = e.reserve
      AND (u.block_number, coalesce(u.log_index, 0)) < (e.block_number, coalesce(e.log_index, 0))
    ORDER BY u.block_number DESC, u.log_index DESC
    LIMIT 1
) o ON true;
