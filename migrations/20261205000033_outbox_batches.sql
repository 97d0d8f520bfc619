-- The outbox keeps one row per enqueue and topic, its outputs in order in three parallel
-- arrays, instead of one row per output: a scoring batch of 10,000 scores is one row inserted,
-- read and deleted, not 10,000, and the payloads are the exact bytes relayed (text, not JSONB
-- parsed on the way in and printed on the way out). Measured: BENCHMARKS.md, "Scoring at
-- volume". The arrays are stored out of line uncompressed (EXTERNAL): a batch's row is written
-- once and read once, so compressing it would cost more than it saves.
CREATE TABLE outbox_batch (
    seq         BIGSERIAL   PRIMARY KEY,
    -- Topic name with the deployment's prefix, as relayed.
    topic       TEXT        NOT NULL,
    record_keys TEXT[]      NOT NULL,
    -- Deterministic: the same output computed again gets the same id (a replay after a crash).
    output_ids  TEXT[]      NOT NULL,
    -- JSON text of each record (with its `outputId`).
    payloads    TEXT[]      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (cardinality(output_ids) > 0
           AND cardinality(record_keys) = cardinality(output_ids)
           AND cardinality(payloads) = cardinality(output_ids))
);
ALTER TABLE outbox_batch
    ALTER COLUMN record_keys SET STORAGE EXTERNAL,
    ALTER COLUMN output_ids SET STORAGE EXTERNAL,
    ALTER COLUMN payloads SET STORAGE EXTERNAL;

-- Outputs still pending when this runs are carried over, one row each, in their order.
INSERT INTO outbox_batch (topic, record_keys, output_ids, payloads, created_at)
SELECT topic, ARRAY[record_key], ARRAY[output_id], ARRAY[payload::text], created_at
FROM outbox ORDER BY seq;

DROP TABLE outbox;
ALTER TABLE outbox_batch RENAME TO outbox;
ALTER SEQUENCE outbox_batch_seq_seq RENAME TO outbox_seq_seq;
ALTER INDEX outbox_batch_pkey RENAME TO outbox_pkey;

COMMENT ON TABLE outbox IS
    'derived records committed and not yet relayed to Kafka: one row per enqueue and topic (platform/src/outbox.rs)';
