-- The scorer's price windows (`chainfold_store::prices::window`) read every priced lending event
-- of a reserve between a batch's earliest trigger (less 30 days) and its latest one. A backfill
-- batch spans years of history, ~20,000 points of a busy reserve; with the index as it was the
-- planner read them by a sequential scan of the whole table and a sort, because fetching that
-- many rows from the heap in index order cost more. Carrying the two columns the window returns
-- in the index makes it an index-only scan already in the window's order, no sort, no heap
-- (once VACUUM has marked the pages all-visible, as autovacuum does after inserts).
-- Measured on the scoring bench's data (BENCHMARKS.md, "Scoring at volume"): 38–40 ms → 13–15 ms
-- for one reserve's window of 22,199 points.
CREATE INDEX lending_event_price_window_idx ON lending_event (chain_id, reserve, block_time, event_id)
    INCLUDE (block_number, price_usd)
    WHERE price_usd IS NOT NULL;
DROP INDEX lending_event_reserve_price_idx;
