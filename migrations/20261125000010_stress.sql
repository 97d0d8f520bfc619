-- Stress tests and VaR on a chain's live lending positions (`chainfold stress`, and the risk
-- worker when an oracle price moves). Each run stores its inputs: the prices it used, the block
-- the positions are as of, the history it bootstrapped from.
CREATE TABLE stress_run (
    id            BIGSERIAL PRIMARY KEY,
    chain_id      BIGINT      NOT NULL,
    computed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    as_of_block   BIGINT,
    trigger       TEXT        NOT NULL,
    positions     INTEGER     NOT NULL,
    -- {symbol: USD price used}
    prices        JSONB       NOT NULL,
    rules         JSONB       NOT NULL,
    history_hours INTEGER     NOT NULL,
    paths         INTEGER     NOT NULL,
    horizon_hours INTEGER     NOT NULL,
    var95_usd     DOUBLE PRECISION,
    evar99_usd    DOUBLE PRECISION,
    lar95_usd     DOUBLE PRECISION,
    elapsed_ms    DOUBLE PRECISION NOT NULL
);
CREATE INDEX stress_run_chain_idx ON stress_run (chain_id, id DESC);

CREATE TABLE stress_scenario (
    run_id            BIGINT  NOT NULL REFERENCES stress_run (id) ON DELETE CASCADE,
    asset             TEXT    NOT NULL,
    shock             DOUBLE PRECISION NOT NULL,
    correlated        BOOLEAN NOT NULL,
    liquidatable      INTEGER NOT NULL,
    debt_at_risk_usd  DOUBLE PRECISION NOT NULL,
    bad_debt_usd      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, asset, shock, correlated)
);
