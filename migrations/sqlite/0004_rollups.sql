-- Rollups the request-log writer keeps in the same transaction as the rows they count (SPEC §5):
-- the analytics API reads these, so its cost follows the range asked for, not the size of the log.
-- Only rows actually inserted are counted (a repeated request_id is skipped in both), so the
-- rollups stay exact against request_log; `gatemeter rollup rebuild` recomputes them from it.
--
-- tier: 0 = minute, 1 = hour, 2 = day (UTC); bucket_ms: the bucket's start, epoch ms.
-- dim: 0 = all (value ''), 1 = user, 2 = key, 3 = provider (detail: model; the only dimension
-- with minute buckets), 4 = requested model (value: original_model or model; detail: the model
-- used), 5 = namespace, 6 = endpoint. dist: the duration histogram and the failed requests by
-- status code (src/store/sql/rollup.rs), NULL for users and keys.
CREATE TABLE rollup (
    dim                   INTEGER NOT NULL,
    tier                  INTEGER NOT NULL,
    bucket_ms             INTEGER NOT NULL,
    value                 TEXT    NOT NULL,
    detail                TEXT    NOT NULL,
    requests              INTEGER NOT NULL,
    successes             INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_write_5m_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cost_micros           INTEGER NOT NULL,
    duration_ms_sum       INTEGER NOT NULL,
    dist                  BLOB,
    PRIMARY KEY (dim, tier, bucket_ms, value, detail)
) WITHOUT ROWID;
-- One user's or key's line of a leaderboard.
CREATE INDEX rollup_value ON rollup (dim, value, tier, bucket_ms);

-- One row per session (and user: a session id is not trusted to be one user's).
CREATE TABLE session_rollup (
    session_id            TEXT    NOT NULL,
    user_ref              TEXT    NOT NULL,
    namespace             TEXT    NOT NULL,
    first_ms              INTEGER NOT NULL,
    last_ms               INTEGER NOT NULL,
    requests              INTEGER NOT NULL,
    successes             INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_write_5m_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cost_micros           INTEGER NOT NULL,
    duration_ms_sum       INTEGER NOT NULL,
    PRIMARY KEY (session_id, user_ref)
) WITHOUT ROWID;
CREATE INDEX session_rollup_last ON session_rollup (last_ms, session_id);
CREATE INDEX session_rollup_user_last ON session_rollup (user_ref, last_ms, session_id);
