-- The API's full query surface (issue 7): health factors stored with scores, SAFE finality,
-- block-hash lookups for time travel, and retractions pushed to subscribers after a reorg.

-- The account's Aave-style health factor at the score's event (collateral × liquidation
-- threshold / debt at the oracle prices of that time); NULL without debt or when a held reserve
-- had no price. `healthFactorBelow` and `position.healthFactorHistory` read it.
ALTER TABLE credit_score ADD COLUMN health_factor DOUBLE PRECISION;
CREATE INDEX credit_score_hf_idx ON credit_score (chain_id, wallet, id) WHERE health_factor IS NOT NULL;

-- SAFE: at least half the chain's confirmations below its head (FINALIZED needs all of them, see
-- chainfold_is_final). Rows without a block, or of a chain without a head, are history: safe.
CREATE FUNCTION chainfold_is_safe(chain BIGINT, block BIGINT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT block IS NULL OR NOT EXISTS (SELECT 1 FROM chain_head h WHERE h.chain_id = chain)
        OR block <= (SELECT h.number - (h.confirmations + 1) / 2 FROM chain_head h WHERE h.chain_id = chain)
$$;

-- The number of a block known by its hash: the head, the ingest's recent blocks, or any stored
-- event's block. NULL for a hash chainfold never saw or whose block a reorg orphaned.
CREATE FUNCTION chainfold_block_number(chain BIGINT, wanted TEXT) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT n FROM (
        SELECT h.number AS n FROM chain_head h WHERE h.chain_id = chain AND h.hash = wanted
        UNION ALL
        SELECT b.number FROM ingest_block b WHERE b.chain_id = chain AND b.hash = wanted
        UNION ALL
        (SELECT e.block_number FROM lending_event e WHERE e.chain_id = chain AND e.block_hash = wanted LIMIT 1)
        UNION ALL
        (SELECT s.block_number FROM pool_sync s WHERE s.chain_id = chain AND s.block_hash = wanted LIMIT 1)
        UNION ALL
        (SELECT s.block_number FROM swap s WHERE s.chain_id = chain AND s.block_hash = wanted LIMIT 1)
        UNION ALL
        (SELECT o.block_number FROM oracle_update o WHERE o.chain_id = chain AND o.block_hash = wanted LIMIT 1)
    ) known
    WHERE n IS NOT NULL
    LIMIT 1
$$;

-- Retractions. When a reorg deletes rows a subscriber may have been sent (a pool's reserves, a
-- score computed from an orphaned event), each deleted row is kept here with a NEW number drawn
-- from its table's own sequence: the retraction sits in the same cursor order as the feed's
-- inserts, so `after: cursor` replays it like any update and a subscriber sees insert, then
-- retraction, in commit order. `row` is the deleted row as JSON (the update it retracts).
CREATE TABLE feed_retraction (
    feed         TEXT        NOT NULL,
    seq          BIGINT      NOT NULL,
    -- the cursor of the update retracted
    retracts     BIGINT      NOT NULL,
    chain_id     BIGINT      NOT NULL,
    row          JSONB       NOT NULL,
    retracted_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (feed, seq)
);

CREATE FUNCTION chainfold_feed_retract() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo BIGINT;
    hi BIGINT;
BEGIN
    -- TG_ARGV[0] names the sequence column. Numbers are drawn in the deleted rows' order.
    EXECUTE format(
        'WITH ins AS (
             INSERT INTO feed_retraction (feed, seq, retracts, chain_id, row)
             SELECT %1$L, nextval(pg_get_serial_sequence(%1$L, %2$L)), o.%2$I, o.chain_id, to_jsonb(o)
             FROM (SELECT * FROM old_rows ORDER BY %2$I) o
             RETURNING seq)
         SELECT min(seq), max(seq) FROM ins', TG_TABLE_NAME, TG_ARGV[0]) INTO lo, hi;
    IF lo IS NOT NULL THEN
        PERFORM pg_notify('chainfold_' || TG_TABLE_NAME, lo || ',' || hi);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER pool_sync_feed_lock_delete BEFORE DELETE ON pool_sync
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER pool_sync_feed_retract AFTER DELETE ON pool_sync
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_retract('seq');

CREATE TRIGGER credit_score_feed_lock_delete BEFORE DELETE ON credit_score
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER credit_score_feed_retract AFTER DELETE ON credit_score
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_retract('id');

GRANT EXECUTE ON FUNCTION chainfold_is_safe(BIGINT, BIGINT) TO chainfold_analyst;
GRANT EXECUTE ON FUNCTION chainfold_block_number(BIGINT, TEXT) TO chainfold_analyst;

-- The API caches key lookups; a revocation (or any change to a key) tells it to forget the key.
CREATE FUNCTION chainfold_api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chainfold_api_key', OLD.key_sha256);
    RETURN NULL;
END $$;
CREATE TRIGGER api_key_changed AFTER UPDATE OR DELETE ON api_key
    FOR EACH ROW EXECUTE FUNCTION chainfold_api_key_changed();
