-- Issue 20 (as migrations/sqlite/0007): the upstream provider's request id, searchable and kept
-- apart from the idempotency key; a cost sent in another currency as sent (amount, ISO code).
ALTER TABLE request_log
    ADD COLUMN provider_request_id TEXT COLLATE "C",
    ADD COLUMN cost_amount TEXT,
    ADD COLUMN currency TEXT;
CREATE INDEX request_log_provider_request_id ON request_log (provider_request_id)
    WHERE provider_request_id IS NOT NULL;
