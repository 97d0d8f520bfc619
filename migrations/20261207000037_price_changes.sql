-- The scorer keeps each reserve's lending price points across batches (scoring/src/worker.rs,
-- `LendingPrices`): points of sealed blocks do not change, so a batch reads only the points
-- after the ones it holds. What can change them anyway is a delete (a reorg's retraction, a
-- chain's reset), an update (none in the code; an operator's hand) or a truncate (a rebuild),
-- and a reorg, whose replacement blocks land at heights already sealed. Each of these appends a
-- row here in its own transaction, so it becomes visible exactly when the change does; the
-- scorer reads the count and the last id before its reads and drops what it holds when either
-- moved. Append-only: concurrent writers never wait on one another, and the ids come from a
-- sequence, so a count that fell (a truncate of this table) never looks like the old state.
CREATE TABLE price_change (
    id         BIGSERIAL PRIMARY KEY,
    source     TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION price_change_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO price_change (source) VALUES (TG_TABLE_NAME || ' ' || lower(TG_OP));
    RETURN NULL;
END
$$;

CREATE TRIGGER lending_event_price_change AFTER DELETE OR UPDATE OR TRUNCATE ON lending_event
    FOR EACH STATEMENT EXECUTE FUNCTION price_change_note();
CREATE TRIGGER oracle_update_price_change AFTER DELETE OR UPDATE OR TRUNCATE ON oracle_update
    FOR EACH STATEMENT EXECUTE FUNCTION price_change_note();
-- A reorg's retraction seal: its orphaned blocks are replaced by blocks at the same heights.
CREATE TRIGGER chain_seal_price_change AFTER INSERT ON chain_seal
    FOR EACH ROW WHEN (NEW.retracted) EXECUTE FUNCTION price_change_note();
