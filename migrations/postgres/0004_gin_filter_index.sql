-- Key, provider, model and session filters share one GIN index (btree_gin's equality operator
-- classes) instead of four B-trees. A row's four values go to the index's pending list, an
-- append; once the list passes gin_pending_list_limit (4 MB by default) the writer that
-- overflowed it (or autovacuum) merges it into the index sorted, in one pass. Four B-trees took
-- four descents of the tree per row. Write benchmark of issue #4 (1,000,000 rows, every other
-- index in place): about 101,000 → 127,000 rows/s.
--
-- Queries read it as they read the B-trees, for a value with few rows: a bitmap of the matching
-- rows, sorted by time (the pending list is scanned as well, at most 4 MB). A common value is
-- still found by walking the time index newest first, chosen from the column statistics as
-- before. The user filter keeps its ordered (user_ref, ts_ms, id) B-tree: every query of a user
-- token carries it, and a page must cost the same however many rows the user has.
--
-- btree_gin ships with PostgreSQL (contrib) and is a trusted extension from PostgreSQL 13 on:
-- the owner of the database, or any role with CREATE on it, may create it. Where it cannot be
-- created (contrib not installed: feature_not_supported on PostgreSQL 15, undefined_file on
-- some others; no privilege: insufficient_privilege), the B-trees stay: every query gives the
-- same answers, only writes are slower. A warning says so here, and gatemeter warns again at
-- every start while the GIN index is missing.
--
-- The GIN index is built before the B-trees are dropped: the build holds a SHARE lock, which
-- lets reads go on (writes wait), and the ACCESS EXCLUSIVE lock of DROP INDEX is then held
-- only from the drop to the commit.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS btree_gin;
EXCEPTION WHEN undefined_file OR insufficient_privilege OR feature_not_supported THEN
    RAISE WARNING 'gatemeter: extension btree_gin is not available (%); the request log keeps one B-tree per filter column (writes are about 20%% slower)', SQLERRM;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin') THEN
        CREATE INDEX IF NOT EXISTS request_log_filters ON request_log
            USING gin (key_name, provider, model, session_id);
        DROP INDEX IF EXISTS request_log_key, request_log_provider, request_log_model,
            request_log_session;
    END IF;
END
$$;
