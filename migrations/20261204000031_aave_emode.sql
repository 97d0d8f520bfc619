-- Aave V3 efficiency mode (issue 15) in lending_market_event, beside the reserve events:
--   emode_category  EModeCategoryAdded: category `emode_category`'s ltv, liquidation_threshold,
--                   liquidation_bonus (basis points) and label; no reserve, no wallet
--   emode_asset     EModeAssetCategoryChanged: `reserve` is in `emode_category` (0: none)
--   user_emode      UserEModeSet: `wallet` is in `emode_category` (0: left e-mode); no reserve
-- `chainfold` folds them with the rest (domain::aave) so `aaveAccount` weighs collateral of a
-- user's category with the category's parameters, as the pool does.
ALTER TABLE lending_market_event
    ALTER COLUMN reserve DROP NOT NULL,
    ALTER COLUMN symbol DROP NOT NULL,
    ALTER COLUMN decimals DROP NOT NULL,
    ADD COLUMN emode_category SMALLINT,
    ADD COLUMN label TEXT;
ALTER TABLE lending_market_event DROP CONSTRAINT lending_market_event_kind_check;
ALTER TABLE lending_market_event ADD CONSTRAINT lending_market_event_kind_check CHECK (kind IN (
    'reserve_update', 'reserve_config', 'collateral_enabled', 'collateral_disabled',
    'emode_category', 'emode_asset', 'user_emode'));
CREATE INDEX lending_market_event_emode_idx ON lending_market_event (chain_id, pool, block_number)
    WHERE kind IN ('emode_category', 'emode_asset');
