-- Rollups the request-log writer keeps in the same transaction as the rows they count (SPEC §5);
-- the layout is SQLite's (migrations/sqlite/0004_rollups.sql, which explains the columns).
-- Writers update them one transaction at a time (an advisory lock), so the histogram blobs can be
-- merged in the writer.
CREATE TABLE rollup (
    dim                   SMALLINT NOT NULL,
    tier                  SMALLINT NOT NULL,
    bucket_ms             BIGINT   NOT NULL,
    value                 TEXT COLLATE "C" NOT NULL,
    detail                TEXT COLLATE "C" NOT NULL,
    requests              BIGINT   NOT NULL,
    successes             BIGINT   NOT NULL,
    input_tokens          BIGINT   NOT NULL,
    output_tokens         BIGINT   NOT NULL,
    cache_write_5m_tokens BIGINT   NOT NULL,
    cache_write_1h_tokens BIGINT   NOT NULL,
    cache_read_tokens     BIGINT   NOT NULL,
    cost_micros           BIGINT   NOT NULL,
    duration_ms_sum       BIGINT   NOT NULL,
    dist                  BYTEA,
    PRIMARY KEY (dim, tier, bucket_ms, value, detail)
);
CREATE INDEX rollup_value ON rollup (dim, value, tier, bucket_ms);

CREATE TABLE session_rollup (
    session_id            TEXT COLLATE "C" NOT NULL,
    user_ref              TEXT COLLATE "C" NOT NULL,
    namespace             TEXT   NOT NULL,
    first_ms              BIGINT NOT NULL,
    last_ms               BIGINT NOT NULL,
    requests              BIGINT NOT NULL,
    successes             BIGINT NOT NULL,
    input_tokens          BIGINT NOT NULL,
    output_tokens         BIGINT NOT NULL,
    cache_write_5m_tokens BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL,
    cache_read_tokens     BIGINT NOT NULL,
    cost_micros           BIGINT NOT NULL,
    duration_ms_sum       BIGINT NOT NULL,
    PRIMARY KEY (session_id, user_ref)
);
CREATE INDEX session_rollup_last ON session_rollup (last_ms, session_id);
CREATE INDEX session_rollup_user_last ON session_rollup (user_ref, last_ms, session_id);
