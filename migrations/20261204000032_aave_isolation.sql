-- Aave V3 isolation mode (issue 15) in lending_market_event:
--   debt_ceiling    DebtCeilingChanged: `reserve`'s new ceiling in `amount` (USD, 2 decimals;
--                   0: no longer isolated)
--   isolation_debt  IsolationModeTotalDebtUpdated: what isolated borrowers against `reserve` owe
--                   in total, in `amount` (USD, 2 decimals)
-- A wallet whose only collateral is a reserve with a ceiling is isolated (V3's
-- getIsolationModeState); `aaveAccount.isolation` reports it with the ceiling and the total.
ALTER TABLE lending_market_event ADD COLUMN amount NUMERIC(78,0);
ALTER TABLE lending_market_event DROP CONSTRAINT lending_market_event_kind_check;
ALTER TABLE lending_market_event ADD CONSTRAINT lending_market_event_kind_check CHECK (kind IN (
    'reserve_update', 'reserve_config', 'collateral_enabled', 'collateral_disabled',
    'emode_category', 'emode_asset', 'user_emode', 'debt_ceiling', 'isolation_debt'));
