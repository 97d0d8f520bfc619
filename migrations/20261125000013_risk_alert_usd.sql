-- What an alert is worth in USD where the detector can value it (a drain: the reserve lost at the
-- oracle price), so alerts can be ranked by USD.
ALTER TABLE risk_alert ADD COLUMN usd DOUBLE PRECISION;
CREATE INDEX risk_alert_usd_idx ON risk_alert (chain_id, usd DESC NULLS LAST, seq DESC);
