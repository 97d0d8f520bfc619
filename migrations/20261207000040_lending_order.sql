-- Per wallet: the last key of its timed lending history (the scorer's fold order: block time,
-- block, log index, event id, a missing block or log index sorting last) and a `mark` that
-- changes whenever that history changes other than by rows after the last key.
--
-- The scorer resumes a stored credit profile only if the mark it read with the profile's rows is
-- still the mark: then no row has since arrived at or before any key the profile folded, and
-- none was deleted or changed. It used to count, per wallet and batch, the rows after the batch's
-- latest trigger to compare a total instead; during a catch-up that count grew with the rows
-- projected ahead (34 of the 54 ms of a batch's stored-profiles read with 90 rows ahead per
-- wallet), so a backfill's cost grew with the history still to score.
--
-- Triggers keep it, so every path that writes `lending_event` keeps it (the projector, a reorg's
-- retraction, a chain's reset, `chainfold rebuild`, an operator's hand):
--  * an insert of timed rows moves the last key forward and draws a new mark for a wallet if one
--    of its new rows sorts before the last key it had;
--  * an update or a delete draws a new mark for every wallet it touched and reads its last key
--    again (a wallet left without a timed row loses its row);
--  * a truncate empties the table; rows made again draw new marks.
-- Marks come from one sequence, so a mark is never seen twice, even across a truncate.
CREATE SEQUENCE lending_order_mark;

CREATE TABLE lending_order (
    chain_id      BIGINT           NOT NULL,
    wallet        TEXT COLLATE "C" NOT NULL,
    last_time     TIMESTAMPTZ      NOT NULL,
    last_block    BIGINT           NOT NULL,
    last_log      BIGINT           NOT NULL,
    last_event_id TEXT COLLATE "C" NOT NULL,
    mark          BIGINT           NOT NULL DEFAULT nextval('lending_order_mark'),
    PRIMARY KEY (chain_id, wallet)
);

-- The rows' keys in the fold's order, a missing block or log index as the largest value.
CREATE FUNCTION lending_order_key_block(block BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce(block, 9223372036854775807) $$;
CREATE FUNCTION lending_order_key_log(log INTEGER) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce(log::int8, 9223372036854775807) $$;

INSERT INTO lending_order (chain_id, wallet, last_time, last_block, last_log, last_event_id)
SELECT DISTINCT ON (chain_id, wallet) chain_id, wallet, block_time,
       lending_order_key_block(block_number), lending_order_key_log(log_index), event_id
FROM lending_event
WHERE block_time IS NOT NULL
ORDER BY chain_id, wallet, block_time DESC, lending_order_key_block(block_number) DESC,
         lending_order_key_log(log_index) DESC, event_id DESC;

-- An append compares under the wallet's row lock: `ON CONFLICT DO UPDATE` locks the row and reads
-- its latest committed version, so of two writers appending to one wallet at once, the second
-- compares with the first's last key. (A comparison in a statement of its own would read the key
-- as it was before the first writer committed, and let a row landing behind it through.) The
-- proposed row carries the wallet's first new key, which is the last key of a wallet new here.
CREATE FUNCTION lending_order_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lending_order AS o (chain_id, wallet, last_time, last_block, last_log, last_event_id)
    SELECT DISTINCT ON (chain_id, wallet) chain_id, wallet, block_time,
           lending_order_key_block(block_number), lending_order_key_log(log_index), event_id
    FROM appended WHERE block_time IS NOT NULL
    ORDER BY chain_id, wallet, 3, 4, 5, 6
    ON CONFLICT (chain_id, wallet) DO UPDATE SET mark = CASE
        WHEN (EXCLUDED.last_time, EXCLUDED.last_block, EXCLUDED.last_log, EXCLUDED.last_event_id)
           < (o.last_time, o.last_block, o.last_log, o.last_event_id)
        THEN nextval('lending_order_mark') ELSE o.mark END;
    -- Every wallet's last key moved forward (its row locked above).
    UPDATE lending_order o SET last_time = n.t, last_block = n.b, last_log = n.l,
                               last_event_id = n.id
    FROM (SELECT DISTINCT ON (chain_id, wallet) chain_id, wallet, block_time AS t,
                 lending_order_key_block(block_number) AS b,
                 lending_order_key_log(log_index) AS l, event_id AS id
          FROM appended WHERE block_time IS NOT NULL
          ORDER BY chain_id, wallet, 3 DESC, 4 DESC, 5 DESC, 6 DESC) n
    WHERE o.chain_id = n.chain_id AND o.wallet = n.wallet
      AND (n.t, n.b, n.l, n.id) > (o.last_time, o.last_block, o.last_log, o.last_event_id);
    RETURN NULL;
END
$$;

-- Wallets whose rows were deleted or changed: a new mark, and the last key read again from the
-- history index (one backward probe per wallet), so the rows that replace a retracted stretch
-- are appends again; a wallet with no timed row left loses its row (a new one draws a new mark).
CREATE FUNCTION lending_order_redraw(chains BIGINT[], wallets TEXT[]) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM lending_order o
    USING UNNEST(chains, wallets) AS w(chain_id, wallet)
    WHERE o.chain_id = w.chain_id AND o.wallet = w.wallet
      AND NOT EXISTS (SELECT 1 FROM lending_event e WHERE e.chain_id = w.chain_id
                      AND e.wallet = w.wallet AND e.block_time IS NOT NULL);
    INSERT INTO lending_order AS o (chain_id, wallet, last_time, last_block, last_log, last_event_id)
    SELECT w.chain_id, w.wallet, l.block_time, lending_order_key_block(l.block_number),
           lending_order_key_log(l.log_index), l.event_id
    FROM (SELECT DISTINCT * FROM UNNEST(chains, wallets)) AS w(chain_id, wallet)
    CROSS JOIN LATERAL (
        SELECT e.block_time, e.block_number, e.log_index, e.event_id FROM lending_event e
        WHERE e.chain_id = w.chain_id AND e.wallet = w.wallet AND e.block_time IS NOT NULL
        ORDER BY e.block_time DESC, e.block_number DESC NULLS FIRST, e.log_index DESC NULLS FIRST,
                 e.event_id DESC
        LIMIT 1) l
    ORDER BY 1, 2
    ON CONFLICT (chain_id, wallet) DO UPDATE SET
        last_time = EXCLUDED.last_time, last_block = EXCLUDED.last_block,
        last_log = EXCLUDED.last_log, last_event_id = EXCLUDED.last_event_id,
        mark = nextval('lending_order_mark');
$$;

CREATE FUNCTION lending_order_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lending_order_redraw(array_agg(chain_id), array_agg(wallet))
    FROM (SELECT DISTINCT chain_id, wallet FROM removed) c;
    RETURN NULL;
END
$$;

-- An update: every wallet a row left or joined.
CREATE FUNCTION lending_order_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lending_order_redraw(array_agg(chain_id), array_agg(wallet))
    FROM (SELECT chain_id, wallet FROM before_update
          UNION SELECT chain_id, wallet FROM after_update) c;
    RETURN NULL;
END
$$;

CREATE FUNCTION lending_order_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM lending_order;
    RETURN NULL;
END
$$;

CREATE TRIGGER lending_order_insert AFTER INSERT ON lending_event
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION lending_order_append();
CREATE TRIGGER lending_order_delete AFTER DELETE ON lending_event
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION lending_order_deleted();
CREATE TRIGGER lending_order_update AFTER UPDATE ON lending_event
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION lending_order_updated();
CREATE TRIGGER lending_order_truncate AFTER TRUNCATE ON lending_event
    FOR EACH STATEMENT EXECUTE FUNCTION lending_order_truncated();

-- The mark a stored profile's rows were read under; NULL (a profile stored before this
-- migration) is never resumed.
ALTER TABLE credit_profile ADD COLUMN order_mark BIGINT;
