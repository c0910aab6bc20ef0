-- Issue 20: the upstream provider's request id (Claude Code's `request_id`, kept apart from the
-- idempotency key `request_id`), searchable; a cost sent in another currency as sent (amount
-- as exact decimal text, ISO 4217 code) beside its converted `cost_micros`.
ALTER TABLE request_log ADD COLUMN provider_request_id TEXT;
ALTER TABLE request_log ADD COLUMN cost_amount TEXT;
ALTER TABLE request_log ADD COLUMN currency TEXT;
CREATE INDEX request_log_provider_request_id ON request_log (provider_request_id)
    WHERE provider_request_id IS NOT NULL;
-- The fixed statistics (0002) cover the new index too: about one row per id.
INSERT INTO sqlite_stat1 (tbl, idx, stat)
    VALUES ('request_log', 'request_log_provider_request_id', '1000000 1');
