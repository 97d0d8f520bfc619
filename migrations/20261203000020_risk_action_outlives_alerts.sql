-- An action `chainfold actuate --heal` took is a fact about the chain, not derived from the log:
-- it must outlive its alert being retracted (reorg) or rebuilt (`chainfold rebuild` empties and
-- recomputes risk_alert; alert ids are deterministic, so the rebuilt alert finds its action and
-- the actuator does not act twice).
ALTER TABLE risk_action DROP CONSTRAINT IF EXISTS risk_action_alert_id_fkey;
