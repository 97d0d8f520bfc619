-- An outbox row may name the source of its records instead of holding them: the scorer's
-- score records are rendered whole from the `credit_score` rows it commits in the same
-- transaction, so its row keeps the records' keys and output ids (to send, count and de-duplicate
-- them) and `source = 'credit_score'`, with no payloads. The scorer relays its rows from memory
-- right after the commit; a relay that takes a row its writer left (a crash, a failed relay)
-- rebuilds the records from the source's rows (`chainfold_platform::outbox::Sources`). Writing
-- a batch's ~10 MB of JSON a second time, compressed, cost ~2.5 µs of Postgres per score
-- (BENCHMARKS.md, "Score records named, not copied").
ALTER TABLE outbox ADD COLUMN source TEXT;
ALTER TABLE outbox DROP CONSTRAINT outbox_batch_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_outputs_check
    CHECK (cardinality(output_ids) > 0
           AND cardinality(record_keys) = cardinality(output_ids)
           AND (cardinality(payloads) = cardinality(output_ids)
                OR (source IS NOT NULL AND cardinality(payloads) = 0)));
