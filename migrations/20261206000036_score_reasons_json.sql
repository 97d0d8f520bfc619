-- A score's reasons are stored as `json` (the text as the scorer wrote it, checked to be JSON),
-- no longer `jsonb`. Every score writes them once and readers take them whole (the API, the
-- feeds, analysts reading the column); nothing searches inside them, so converting each one to
-- jsonb's binary form on insert bought nothing. Measured on the scoring bench's rows
-- (BENCHMARKS.md, "Scoring at volume"): a `COPY` of 10,000 scores 131–146 ms → 91–99 ms.
-- Analysts keep `->`, `->>` and `json_array_elements`; containment (`@>`) or comparing two
-- rows' reasons needs `reasons::jsonb`.
--
-- The two views over `credit_score` name its columns, so they are dropped and made again with
-- the same definitions; `SELECT *` now also takes `health_factor` (added after the views were
-- first made). The analysts' read grant is given again explicitly.
DROP VIEW credit_score_latest;
DROP VIEW credit_score_finalized;
ALTER TABLE credit_score ALTER COLUMN reasons TYPE json USING reasons::json;
CREATE VIEW credit_score_latest AS
SELECT DISTINCT ON (chain_id, wallet) *
FROM credit_score
ORDER BY chain_id, wallet, id DESC;
CREATE VIEW credit_score_finalized AS
    SELECT * FROM credit_score WHERE chainfold_is_final(chain_id, block_number);
GRANT SELECT ON credit_score_latest, credit_score_finalized TO chainfold_analyst;
