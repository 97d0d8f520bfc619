-- What analysts query (docs/sql.md): finalized views, as-of-block functions, and a read-only
-- role. A row is final when its block is at least `confirmations` below its chain's head
-- (`chain_head`); rows of recorded data sets (no chain head, or no block) are history, so final.

CREATE FUNCTION chainfold_is_final(chain BIGINT, block BIGINT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT block IS NULL OR NOT EXISTS (SELECT 1 FROM chain_head h WHERE h.chain_id = chain)
        OR block <= (SELECT h.number - h.confirmations FROM chain_head h WHERE h.chain_id = chain)
$$;

CREATE VIEW lending_event_finalized AS
    SELECT * FROM lending_event WHERE chainfold_is_final(chain_id, block_number);
CREATE VIEW swap_finalized AS
    SELECT * FROM swap WHERE chainfold_is_final(chain_id, block_number);
CREATE VIEW pool_sync_finalized AS
    SELECT * FROM pool_sync WHERE chainfold_is_final(chain_id, block_number);
CREATE VIEW liquidity_event_finalized AS
    SELECT * FROM liquidity_event WHERE chainfold_is_final(chain_id, block_number);
CREATE VIEW flash_loan_finalized AS
    SELECT * FROM flash_loan WHERE chainfold_is_final(chain_id, block_number);
CREATE VIEW oracle_update_finalized AS
    SELECT * FROM oracle_update WHERE chainfold_is_final(chain_id, block_number);
CREATE VIEW credit_score_finalized AS
    SELECT * FROM credit_score WHERE chainfold_is_final(chain_id, block_number);

-- Positions (principal flows) of a chain as of the end of `block`.
CREATE FUNCTION lending_position_as_of(chain BIGINT, block BIGINT)
RETURNS TABLE (protocol TEXT, wallet TEXT, reserve TEXT, symbol TEXT, decimals SMALLINT,
               collateral NUMERIC, variable_debt NUMERIC, last_block BIGINT)
LANGUAGE sql STABLE AS $$
    WITH flow AS (
        SELECT protocol, wallet, reserve, symbol, decimals, block_number,
               CASE action WHEN 'deposit' THEN amount WHEN 'redeem' THEN -amount ELSE 0 END AS collateral,
               CASE action WHEN 'borrow' THEN amount WHEN 'repay' THEN -amount
                           WHEN 'liquidation' THEN -amount ELSE 0 END AS debt
        FROM lending_event WHERE chain_id = chain AND block_number <= block
        UNION ALL
        SELECT protocol, wallet, collateral_reserve, collateral_symbol, collateral_decimals,
               block_number, -collateral_amount, 0
        FROM lending_event
        WHERE chain_id = chain AND block_number <= block AND action = 'liquidation'
    )
    SELECT protocol, wallet, reserve, max(symbol), max(decimals), sum(collateral), sum(debt),
           max(block_number)
    FROM flow GROUP BY protocol, wallet, reserve
$$;

-- Each constant-product pool's reserves after the last Sync at or before `block`.
CREATE FUNCTION pool_state_as_of(chain BIGINT, block BIGINT)
RETURNS TABLE (pool TEXT, token0 TEXT, token1 TEXT, reserve0 NUMERIC, reserve1 NUMERIC,
               block_number BIGINT)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (s.pool) s.pool, s.token0, s.token1, s.reserve0, s.reserve1, s.block_number
    FROM pool_sync s
    WHERE s.chain_id = chain AND s.block_number <= block
    ORDER BY s.pool, s.block_number DESC, s.log_index DESC
$$;

-- Each wallet's latest credit score computed from events at or before `block`.
CREATE FUNCTION credit_score_as_of(chain BIGINT, block BIGINT)
RETURNS TABLE (wallet TEXT, score INTEGER, band TEXT, probability_of_liquidation DOUBLE PRECISION,
               model_version TEXT, computed_at TIMESTAMPTZ, block_number BIGINT, id BIGINT)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (c.wallet) c.wallet, c.score, c.band, c.probability_of_liquidation,
           c.model_version, c.computed_at, c.block_number, c.id
    FROM credit_score c
    WHERE c.chain_id = chain AND c.block_number <= block
    ORDER BY c.wallet, c.id DESC
$$;

-- The analysts' role: reads everything in the public schema, writes nothing. It cannot log in
-- until an operator gives it a password or a pg_hba rule (`ALTER ROLE chainfold_analyst LOGIN
-- PASSWORD '…'`). Roles are cluster-wide: created once, granted in every chainfold database.
DO $$
BEGIN
    CREATE ROLE chainfold_analyst NOLOGIN;
EXCEPTION
    -- another database's migration created it first (also concurrently)
    WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO chainfold_analyst', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO chainfold_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO chainfold_analyst;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO chainfold_analyst;
-- Tables a later migration adds are readable too (when that migration runs as this owner).
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO chainfold_analyst;
-- No writes, explicitly, whatever PUBLIC may have been granted.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM chainfold_analyst;
-- API keys are credentials: not for analysts even hashed.
REVOKE SELECT ON api_key FROM chainfold_analyst;
