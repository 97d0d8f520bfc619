-- Roles safe to run as replicas (issue 13).
--
-- consumer_offset becomes a fenced claim. On every assignment a consumer CLAIMS its partitions:
-- the row's `epoch` goes up by one and `owner` names the claimant. Every later write of the
-- partition's offset is a compare-and-set inside the transaction of the rows it covers:
--
--     UPDATE consumer_offset SET next_offset = <end of batch>
--     WHERE … AND epoch = <the epoch claimed> AND next_offset = <start of batch>
--
-- so a member whose partition was reassigned (a newer claim raised the epoch) cannot commit,
-- and neither can one whose idea of the offset is not what Postgres holds (a lost commit after
-- a crash, a rebuild that reset the group). Either way the transaction rolls back with the rows
-- it would have written. The claim's UPDATE waits on the row lock of a commit in flight, so a
-- claim sees either all of a batch or none of it.
--
-- Every role that consumes (projector, scorer, risk worker) stores its offsets here, each under
-- its own group id.
ALTER TABLE consumer_offset
    ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    ADD COLUMN owner TEXT;

COMMENT ON COLUMN consumer_offset.epoch IS
    'raised by each claim of the partition; an offset write must name the current epoch';
COMMENT ON COLUMN consumer_offset.owner IS
    'the member (instance id and process) that made the current claim';

-- Outputs published to Kafka after a commit (scores, decisions, alerts) are written here in the
-- transaction of the rows they describe, then relayed: the relay publishes a row (idempotent
-- producer, acks=all), waits for the broker's acknowledgement and only then deletes it. A crash
-- before the delete republishes the row, so an output topic may hold a record twice, never
-- zero times; each carries its `output_id` (header `output_id` and in the payload) so readers
-- de-duplicate. Replicas relay concurrently with `FOR UPDATE SKIP LOCKED`.
CREATE TABLE outbox (
    seq        BIGSERIAL   PRIMARY KEY,
    -- Topic name without the deployment's prefix (`chainfold.scores.v1`).
    topic      TEXT        NOT NULL,
    record_key TEXT        NOT NULL,
    -- Deterministic: the same output computed again gets the same id (a replay after a crash).
    output_id  TEXT        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who holds which lease (see platform::lease): informational, the lock itself is a Postgres
-- advisory lock held by the leader's session, released by Postgres when that session ends.
CREATE TABLE role_lease (
    lease       TEXT        PRIMARY KEY,
    holder      TEXT        NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
