-- Push feeds for the API's subscriptions. Each pushed table has a monotonic sequence (credit_score.id,
-- risk_alert.seq, credit_decision.seq) that a subscriber's cursor names. Two triggers per table:
--
-- * before each INSERT statement, a transaction-scoped advisory lock per table, so writers that
--   insert into one table take their sequence numbers one transaction at a time: sequence order is
--   commit order, and a subscriber that resumes after cursor N cannot miss a row numbered below N
--   that committed later. (Writers insert a batch per statement, so this costs one lock per batch.)
-- * after each INSERT statement, one NOTIFY on `chainfold_<table>` carrying the range of sequence
--   numbers inserted ("lo,hi"). Postgres delivers notifications only after the commit, in commit
--   order; the API reads the range once and fans it out to every subscriber.

CREATE FUNCTION chainfold_feed_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('chainfold_feed_' || TG_TABLE_NAME));
    RETURN NULL;
END $$;

CREATE FUNCTION chainfold_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo BIGINT;
    hi BIGINT;
BEGIN
    -- TG_ARGV[0] names the sequence column.
    EXECUTE format('SELECT min(%1$I), max(%1$I) FROM new_rows', TG_ARGV[0]) INTO lo, hi;
    IF lo IS NOT NULL THEN
        PERFORM pg_notify('chainfold_' || TG_TABLE_NAME, lo || ',' || hi);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER credit_score_feed_lock BEFORE INSERT ON credit_score
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER credit_score_feed_notify AFTER INSERT ON credit_score
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_notify('id');

CREATE TRIGGER risk_alert_feed_lock BEFORE INSERT ON risk_alert
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER risk_alert_feed_notify AFTER INSERT ON risk_alert
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_notify('seq');

CREATE TRIGGER credit_decision_feed_lock BEFORE INSERT ON credit_decision
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_lock();
CREATE TRIGGER credit_decision_feed_notify AFTER INSERT ON credit_decision
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chainfold_feed_notify('seq');

-- API keys: only a SHA-256 of the key is stored; the key itself is shown once by
-- `chainfold apikey create`. A key is needed for subscriptions, mutations and books.
CREATE TABLE api_key (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT        NOT NULL,
    key_sha256      TEXT        NOT NULL UNIQUE,
    -- requests per minute this key may make (its own bucket)
    rate_per_minute INTEGER     NOT NULL DEFAULT 600 CHECK (rate_per_minute > 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at      TIMESTAMPTZ
);

-- A lender's watch lists: wallets a key follows (scores, decisions, health factors). A key sees
-- and subscribes to its own books only.
CREATE TABLE book (
    id         BIGSERIAL PRIMARY KEY,
    api_key_id BIGINT      NOT NULL REFERENCES api_key (id),
    name       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (api_key_id, name)
);
CREATE TABLE book_wallet (
    book_id  BIGINT NOT NULL REFERENCES book (id) ON DELETE CASCADE,
    chain_id BIGINT NOT NULL,
    wallet   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (book_id, chain_id, wallet)
);
