-- Stored requests (SPEC §2, §6.4): the record's `request` object, kept only with
-- `log_store.store_requests: true`, already redacted at validation (src/record/request.rs), keyed by
-- the record's request_id in the form request_log stores it (a canonical UUID as 16 bytes), written
-- in the row's transaction, `ON CONFLICT DO NOTHING` (a repeated request_id stores nothing twice),
-- pruned with the log's retention by ts_ms.
CREATE TABLE request_bodies (
    request_id     TEXT    PRIMARY KEY,
    ts_ms          INTEGER NOT NULL,
    request        TEXT    NOT NULL,
    truncated      BOOLEAN NOT NULL,
    original_bytes INTEGER NOT NULL
);
CREATE INDEX request_bodies_ts ON request_bodies (ts_ms);

-- The export audit trail says how much went out and why an export ended as it did:
-- outcome is one of ok, failed, aborted, conflict; detail carries the truncation or error gist.
ALTER TABLE export_audit ADD COLUMN byte_count INTEGER;
ALTER TABLE export_audit ADD COLUMN detail TEXT;
