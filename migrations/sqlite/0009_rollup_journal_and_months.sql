-- The rollup journal: the log writer adds, in each batch's own transaction, one row holding that
-- batch's rollup increments (src/store/sql/rollup.rs `Batch::encode`); a merge step folds the
-- pending rows into `rollup` and `session_rollup` and deletes them, in one transaction. So the
-- rollups stay exact against the rows stored (a crash leaves the journal, merged at the next
-- start), and a merge that covers many batches upserts each rollup row once, not once per batch.
CREATE TABLE rollup_pending (
    id    INTEGER PRIMARY KEY,
    rows  INTEGER NOT NULL,
    delta BLOB    NOT NULL
);

-- Month buckets (tier 3, UTC calendar months) of users (dim 1) and keys (dim 2), summed from
-- their day buckets: a month leaderboard reads one row per user instead of one per user and day.
INSERT INTO rollup (dim, tier, bucket_ms, value, detail, requests, successes, input_tokens,
                    output_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
                    cache_read_tokens, cost_micros, duration_ms_sum, dist)
SELECT dim, 3,
       CAST(strftime('%s', bucket_ms / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000,
       value, detail, sum(requests), sum(successes), sum(input_tokens), sum(output_tokens),
       sum(cache_write_5m_tokens), sum(cache_write_1h_tokens), sum(cache_read_tokens),
       sum(cost_micros), sum(duration_ms_sum), NULL
FROM rollup
WHERE tier = 2 AND dim IN (1, 2)
GROUP BY 1, 2, 3, 4, 5;
