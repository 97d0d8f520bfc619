-- `credit_score_hf_idx` (chain_id, wallet, id) WHERE health_factor IS NOT NULL is dropped: every
-- score row with a health factor paid for an entry in it (~1 µs of Postgres per score in the
-- scorer's binary `COPY`, BENCHMARKS.md), and its one reader does not need it. That reader,
-- `position.healthFactorHistory`, orders by a text key (`lpad(id::text, 19, '0')`), which no
-- index on `id` can deliver in order: it reads the wallet's rows and sorts them either way. The
-- (chain_id, wallet) prefix of `credit_score_wallet_idx` or of the unique key finds the same
-- rows, with `health_factor IS NOT NULL` checked on each.
DROP INDEX credit_score_hf_idx;
