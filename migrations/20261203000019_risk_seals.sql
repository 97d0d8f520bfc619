-- The risk worker evaluates sealed stretches of a chain from the read models (issue 13), so an
-- alert depends on the chain, never on which replica read which partition or when.
--
-- Each alert keeps the time of its block, which incidents are correlated by (the Kafka publish
-- time of an event differs from one run of the log to the next; its block's time does not).
ALTER TABLE risk_alert ADD COLUMN block_time TIMESTAMPTZ;

-- How far the risk worker of a group has read each chain: the cumulative bound of every seal it
-- evaluated (JSON array of {topic, partition, next_offset}), written in the transaction of the
-- alerts. A seal's new events are those between this bound and the seal's.
CREATE TABLE risk_progress (
    group_id   TEXT        NOT NULL,
    chain_id   BIGINT      NOT NULL,
    through    JSONB       NOT NULL,
    last_block BIGINT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, chain_id)
);

-- The seals the projector folded (domain::seal), one row per seal record: which blocks of a chain
-- are complete below which offsets. A consumer that reads across partitions (the scorer's
-- features, the risk worker's blocks) waits for a seal covering what it reads and for the
-- projector to have folded past it. Keyed by the seal record's Kafka coordinates, so a replay
-- stores nothing twice; which seals exist depends on how the ingest grouped its publishes.
CREATE TABLE chain_seal (
    kafka_topic     TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL,
    chain_id        BIGINT  NOT NULL,
    first_block     BIGINT,
    last_block      BIGINT,
    through         JSONB   NOT NULL,
    retracted       BOOLEAN NOT NULL,
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX chain_seal_block_idx ON chain_seal (chain_id, last_block);

-- Alerts an evaluation replaced or a reorg retracted are kept as retractions, like scores.
CREATE TRIGGER risk_alert_feed_lock_delete BEFORE DELETE ON risk_alert
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER risk_alert_feed_retract AFTER DELETE ON risk_alert
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_retract('seq');

-- The scorer replays an asset's marks from its canonical oracle rounds (`oracle_update`) instead
-- of keeping them: a mark a reorg orphaned, or one a replica saw first, can no longer move them.
DROP TABLE scorer_price_mark;
