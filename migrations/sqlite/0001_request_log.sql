-- The request log (SPEC §2, §5). Times are epoch milliseconds; money is integer micro-USD.
-- Secrets are never stored: the record's `request` object (headers/body) is not kept.
-- request_id is NULL when the record carried none (NULLs never conflict in the unique index).
CREATE TABLE request_log (
    id                    INTEGER PRIMARY KEY,
    request_id            TEXT,
    ts_ms                 INTEGER NOT NULL,
    namespace             TEXT    NOT NULL,
    instance              TEXT,
    user_ref              TEXT,
    user_name             TEXT,
    user_id               TEXT,
    key_name              TEXT,
    key_id                TEXT,
    provider              TEXT    NOT NULL,
    model                 TEXT    NOT NULL,
    original_model        TEXT,
    endpoint              TEXT    NOT NULL,
    api_type              TEXT    NOT NULL,
    method                TEXT    NOT NULL,
    status                INTEGER NOT NULL,
    duration_ms           INTEGER NOT NULL,
    ttfb_ms               INTEGER,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_write_5m_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cost_micros           INTEGER NOT NULL,
    cost_source           TEXT    NOT NULL,
    session_id            TEXT,
    retry_count           INTEGER NOT NULL,
    provider_chain        TEXT    NOT NULL,
    is_streaming          BOOLEAN NOT NULL,
    error                 TEXT,
    blocked_by            TEXT,
    block_reason          TEXT,
    user_agent            TEXT,
    client_ip             TEXT,
    messages_count        INTEGER,
    trace_id              TEXT
);
CREATE UNIQUE INDEX request_log_request_id ON request_log (request_id);
CREATE INDEX request_log_ts ON request_log (ts_ms, id);
CREATE INDEX request_log_user_ts ON request_log (user_ref, ts_ms);
CREATE INDEX request_log_key_ts ON request_log (key_name, ts_ms);
CREATE INDEX request_log_provider_ts ON request_log (provider, ts_ms);
CREATE INDEX request_log_model_ts ON request_log (model, ts_ms);
CREATE INDEX request_log_session ON request_log (session_id, ts_ms);

-- Every export, who asked for it and how it ended (SPEC §6.4).
CREATE TABLE export_audit (
    id         INTEGER PRIMARY KEY,
    ts_ms      INTEGER NOT NULL,
    role       TEXT    NOT NULL,
    actor      TEXT,
    action     TEXT    NOT NULL,
    filters    TEXT    NOT NULL,
    row_count  INTEGER NOT NULL,
    outcome    TEXT    NOT NULL
);
CREATE INDEX export_audit_ts ON export_audit (ts_ms, id);
