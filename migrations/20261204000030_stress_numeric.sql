-- Stress money in exact decimals (issue 15). The shock grid's debt at risk and bad debt are
-- computed from whole-token amounts and oracle prices as decimals (domain::stress::exact_impact);
-- the Monte Carlo VaR/EVaR/LaR are sampled estimates, stored rounded to cents. Older float
-- values convert as they were (the grid's to their full double precision, VaR to cents).
ALTER TABLE stress_scenario
    ALTER COLUMN debt_at_risk_usd TYPE NUMERIC USING debt_at_risk_usd::numeric,
    ALTER COLUMN bad_debt_usd TYPE NUMERIC USING bad_debt_usd::numeric;
ALTER TABLE stress_run
    ALTER COLUMN var95_usd TYPE NUMERIC(38,2) USING round(var95_usd::numeric, 2),
    ALTER COLUMN evar99_usd TYPE NUMERIC(38,2) USING round(evar99_usd::numeric, 2),
    ALTER COLUMN lar95_usd TYPE NUMERIC(38,2) USING round(lar95_usd::numeric, 2);
