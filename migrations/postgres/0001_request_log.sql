-- The request log (SPEC §2, §5). Times are epoch milliseconds; money is integer micro-USD.
-- Secrets are never stored: the record's `request` object (headers/body) is not kept.
-- request_id is NULL when the record carried none (NULLs never conflict in the unique index).
CREATE TABLE request_log (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id            TEXT,
    ts_ms                 BIGINT  NOT NULL,
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
    status                BIGINT  NOT NULL,
    duration_ms           BIGINT  NOT NULL,
    ttfb_ms               BIGINT,
    input_tokens          BIGINT  NOT NULL,
    output_tokens         BIGINT  NOT NULL,
    cache_write_5m_tokens BIGINT  NOT NULL,
    cache_write_1h_tokens BIGINT  NOT NULL,
    cache_read_tokens     BIGINT  NOT NULL,
    cost_micros           BIGINT  NOT NULL,
    cost_source           TEXT    NOT NULL,
    session_id            TEXT,
    retry_count           BIGINT  NOT NULL,
    provider_chain        TEXT    NOT NULL,
    is_streaming          BOOLEAN NOT NULL,
    error                 TEXT,
    blocked_by            TEXT,
    block_reason          TEXT,
    user_agent            TEXT,
    client_ip             TEXT,
    messages_count        BIGINT,
    trace_id              TEXT
);
-- Indexes end with id, like SQLite's (which end with the rowid implicitly): they then serve
-- ORDER BY ts_ms DESC, id DESC and the keyset cursor (ts_ms, id) < (…) without a sort.
CREATE UNIQUE INDEX request_log_request_id ON request_log (request_id);
CREATE INDEX request_log_ts ON request_log (ts_ms, id);
CREATE INDEX request_log_user_ts ON request_log (user_ref, ts_ms, id);
CREATE INDEX request_log_key_ts ON request_log (key_name, ts_ms, id);
CREATE INDEX request_log_provider_ts ON request_log (provider, ts_ms, id);
CREATE INDEX request_log_model_ts ON request_log (model, ts_ms, id);
CREATE INDEX request_log_session ON request_log (session_id, ts_ms, id);

-- Every export, who asked for it and how it ended (SPEC §6.4).
CREATE TABLE export_audit (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms      BIGINT  NOT NULL,
    role       TEXT    NOT NULL,
    actor      TEXT,
    action     TEXT    NOT NULL,
    filters    TEXT    NOT NULL,
    row_count  BIGINT  NOT NULL,
    outcome    TEXT    NOT NULL
);
CREATE INDEX export_audit_ts ON export_audit (ts_ms, id);
