-- A wallet's summary rows carry a version that grows each time one of them changes (upsert, or
-- the delete-and-recompute of a retraction). One projector member at a time owns a wallet (its
-- events sit on one partition), so per wallet the version grows in commit order: the Redis copy
-- the API serves (`<prefix>latest:wallet:…`) is written only when newer than what it holds.
CREATE SEQUENCE wallet_lending_summary_version;
ALTER TABLE wallet_lending_summary
    ADD COLUMN version BIGINT NOT NULL DEFAULT nextval('wallet_lending_summary_version');

-- The version of a wallet's latest score counts the newest retraction of its scores too (a reorg
-- that deleted the latest one makes an older score the latest, under a newer version).
CREATE INDEX feed_retraction_wallet_idx ON feed_retraction (feed, chain_id, (row->>'wallet'));
