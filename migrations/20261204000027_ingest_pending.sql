-- Write-ahead record of what `ingest rpc` is about to publish (found by the chaos test): events
-- were journaled for reorg retraction only after Kafka acknowledged them, so an ingest killed
-- (or failing) between the publish and the checkpoint forgot them; if the chain reorganised
-- before it came back, those events stayed in the log and the read models without a retraction.
-- Rows here are written before the publish and deleted with the checkpoint that covers them;
-- what a pass finds here was published and never checkpointed, and is retracted before the pass
-- publishes anything (a canonical event retracted this way is published again by the pass).
CREATE TABLE ingest_pending (
    chain_id     BIGINT  NOT NULL,
    block_number BIGINT  NOT NULL,
    log_index    INTEGER NOT NULL,
    payload      BYTEA   NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);
