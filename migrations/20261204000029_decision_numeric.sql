-- Decisions carry exact money (issue 15): the amount asked, the collateral the policy saw, the
-- ratio (whole basis points) and the collateral required (amount × ratio, exact). Rows stored as
-- DOUBLE PRECISION before keep the value the float had.
ALTER TABLE credit_decision
    ALTER COLUMN amount_usd TYPE NUMERIC USING amount_usd::numeric,
    ALTER COLUMN collateral_usd TYPE NUMERIC USING collateral_usd::numeric,
    ALTER COLUMN required_collateral_ratio TYPE NUMERIC USING required_collateral_ratio::numeric,
    ALTER COLUMN required_collateral_usd TYPE NUMERIC USING required_collateral_usd::numeric;
