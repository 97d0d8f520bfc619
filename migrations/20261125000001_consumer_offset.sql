-- Kafka offsets of the projector, stored beside the rows they produced.
--
-- The projector writes a batch's rows and the next offset of every partition it consumed in
-- ONE transaction; on (re)assignment it seeks to what is stored here, not to what Kafka has.
-- A crash between the Postgres commit and the Kafka commit therefore replays nothing twice and
-- skips nothing ("storing offsets outside Kafka"). `next_offset` is the offset of the next
-- record to read (last folded + 1), Kafka's own convention.
CREATE TABLE consumer_offset (
    group_id     TEXT        NOT NULL,
    topic        TEXT        NOT NULL,
    partition_id INTEGER     NOT NULL CHECK (partition_id >= 0),
    next_offset  BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition_id)
);
