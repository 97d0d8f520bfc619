-- Lending decisions (`requestCredit`, and the scorer when a requester's score crosses its
-- band). Each row keeps every input the policy saw and the policy version, so a decision can be
-- audited and replayed; `chainfold actuate` fills the transaction columns once it has applied
-- the decision to the lending pool on-chain.
CREATE TABLE credit_decision (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    seq                   BIGSERIAL NOT NULL UNIQUE,
    chain_id              BIGINT      NOT NULL,
    wallet                TEXT COLLATE "C" NOT NULL,
    trigger               TEXT        NOT NULL CHECK (trigger IN ('REQUEST', 'BAND_CHANGE')),
    request_id            TEXT COLLATE "C" REFERENCES credit_decision (id),
    outcome               TEXT        NOT NULL CHECK (outcome IN ('APPROVE', 'REJECT', 'ADJUST_COLLATERAL')),
    amount_usd            DOUBLE PRECISION NOT NULL,
    collateral_asset      TEXT        NOT NULL,
    collateral_usd        DOUBLE PRECISION,
    collateral_daily_volatility DOUBLE PRECISION,
    required_collateral_ratio DOUBLE PRECISION,
    required_collateral_usd DOUBLE PRECISION,
    score                 INTEGER     NOT NULL,
    band                  TEXT        NOT NULL,
    probability_of_liquidation DOUBLE PRECISION,
    reason                TEXT        NOT NULL,
    policy_version        TEXT        NOT NULL,
    model_version         TEXT        NOT NULL,
    score_event_id        TEXT COLLATE "C" NOT NULL,
    -- the whole DecisionRecord as published on chainfold.decisions.v1
    record                JSONB       NOT NULL,
    decided_at            TIMESTAMPTZ NOT NULL,
    -- set by `chainfold actuate`
    tx_hash               TEXT,
    tx_block              BIGINT,
    actuated_at           TIMESTAMPTZ,
    actuation_error       TEXT
);
CREATE INDEX credit_decision_wallet_idx ON credit_decision (chain_id, wallet, seq DESC);

-- The oracle price per asset at which the scorer last rescored the asset's holders: a new
-- round rescores them when it moves beyond the threshold from this mark. Kept here (not in the
-- scorer's memory) so a restarted scorer continues from the same marks.
CREATE TABLE scorer_price_mark (
    group_id  TEXT   NOT NULL,
    chain_id  BIGINT NOT NULL,
    asset     TEXT COLLATE "C" NOT NULL,
    price     DOUBLE PRECISION NOT NULL,
    event_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (group_id, chain_id, asset)
);

-- `chainfold backtest`: a chosen model version scoring a replayed time window, kept apart from
-- the live scores (credit_score is never written by a backtest). One row per run, labelled.
CREATE TABLE backtest_run (
    id             TEXT COLLATE "C" PRIMARY KEY,
    label          TEXT,
    model_version  TEXT        NOT NULL,
    model_sha256   TEXT        NOT NULL,
    from_time      TIMESTAMPTZ NOT NULL,
    to_time        TIMESTAMPTZ NOT NULL,
    -- the lending topic's end offsets per partition the replay read up to
    log_end        JSONB       NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ,
    events_read    BIGINT      NOT NULL DEFAULT 0,
    scored         BIGINT      NOT NULL DEFAULT 0
);

CREATE TABLE backtest_score (
    run_id          TEXT COLLATE "C" NOT NULL REFERENCES backtest_run (id) ON DELETE CASCADE,
    chain_id        BIGINT      NOT NULL,
    wallet          TEXT COLLATE "C" NOT NULL,
    event_id        TEXT COLLATE "C" NOT NULL,
    score           INTEGER     NOT NULL,
    band            TEXT        NOT NULL,
    probability_of_liquidation DOUBLE PRECISION,
    reasons         JSONB       NOT NULL,
    computed_at     TIMESTAMPTZ NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    PRIMARY KEY (run_id, chain_id, wallet, event_id)
);
