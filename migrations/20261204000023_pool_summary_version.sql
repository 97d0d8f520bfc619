-- A pool's summary row carries a version that grows each time it changes (the projector's upsert,
-- or the delete-and-recompute of a retraction). One projector member at a time owns a pool (its
-- swaps sit on one partition), so per pool the version grows in commit order: the Redis copy the
-- API serves (`<prefix>latest:pool:…`) is written only when newer than what it holds.
CREATE SEQUENCE pool_summary_version;
ALTER TABLE pool_summary
    ADD COLUMN version BIGINT NOT NULL DEFAULT nextval('pool_summary_version');
