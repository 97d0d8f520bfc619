-- `poolUpdated` subscriptions: pool_sync rows get a sequence number and the same push feed as
-- scores, alerts and decisions (see 20261125000014_live_feeds.sql).
ALTER TABLE pool_sync ADD COLUMN seq BIGSERIAL;
CREATE UNIQUE INDEX pool_sync_seq_idx ON pool_sync (seq);

CREATE TRIGGER pool_sync_feed_lock BEFORE INSERT ON pool_sync
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER pool_sync_feed_notify AFTER INSERT ON pool_sync
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_notify('seq');
