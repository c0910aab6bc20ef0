-- The rollup journal's blobs are stored as they are, not compressed: a batch's blob (one to a
-- few MB) was compressed by pglz when each batch committed and decompressed again by the merge
-- that read it seconds later, ~30 ms of the server per batch (`log_min_duration_statement` of
-- `bench-log --profile live`: 614 ms of journal inserts per 1,000,000 rows). The rows live a few
-- seconds; their size on disk does not matter. Only rows written from now on are affected.
ALTER TABLE rollup_pending ALTER COLUMN delta SET STORAGE EXTERNAL;
