-- The outbox's arrays are now stored compressed with lz4 (they were stored uncompressed,
-- EXTERNAL, since 20261205000033). Their writer relays its own rows from memory
-- (`chainfold_platform::outbox::relay_holding`), so a row is written and deleted but read only
-- when its writer could not relay it (a crash, a failed relay). Writing less then pays: a
-- scoring batch's ~10 MB of JSON records is ~1.5 MB in lz4, in the table and in the WAL.
-- Measured: a binary COPY of one row of 10,000 records, median of 4: 62 ms as it was, 42 ms
-- with lz4 (BENCHMARKS.md, "Scoring at volume").
ALTER TABLE outbox
    ALTER COLUMN record_keys SET STORAGE EXTENDED,
    ALTER COLUMN record_keys SET COMPRESSION lz4,
    ALTER COLUMN output_ids SET STORAGE EXTENDED,
    ALTER COLUMN output_ids SET COMPRESSION lz4,
    ALTER COLUMN payloads SET STORAGE EXTENDED,
    ALTER COLUMN payloads SET COMPRESSION lz4;
