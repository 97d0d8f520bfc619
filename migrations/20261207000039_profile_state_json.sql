-- A credit profile's state is stored as `json` (the text as the scorer wrote it, checked to be
-- JSON), no longer `jsonb`, as the scores' reasons were (20261206000036). The scorer writes each
-- batch's ~1,000 profiles whole and reads them back whole as text; nothing searches inside them,
-- so converting each to jsonb's binary form on write and back to text on read bought nothing.
-- Measured in `psql` on 1,008 Polygon profiles (~820 bytes each): `::jsonb` 7.8 ms against
-- `::json` 2.1–2.4 ms, and reading jsonb as text another ~5 ms: both sit on the scorer's path
-- once per batch (the write's upsert, the next batch's stored-profiles read). `->` and `->>` still
-- work; `jsonb_set` and containment need `state::jsonb`.
ALTER TABLE credit_profile ALTER COLUMN state TYPE json USING state::json;
