-- The request ids the log holds move from a unique index on request_log into a table of their
-- own, which the writer fills in id order while it inserts the rows in session order
-- (src/store/sql/sqlite_insert.rs). Random ids (UUIDs) land anywhere in that key space: as an
-- index of request_log they were added in the rows' order, one random page per row, and once the
-- index outgrew the writer's page cache nearly every row read a page in and wrote one out. Sorted,
-- a batch sweeps the table once. `bench-log --profile live`, 1,000,000 rows: 91,000–93,000 →
-- 111,000–113,000 rows/s (docs/benchmarks.md, 2026-12-05).
--
-- Each id is stored as request_log holds it (a canonical UUID as its 16 bytes, anything else as
-- text; no column affinity, so neither form is converted), with the id of its row. A row deleted
-- from request_log (retention) takes its id with it, so an id sent again after its row was
-- deleted is stored again, as before. The database no longer refuses a repeated id by itself:
-- only gatemeter's writer inserts into request_log, and it keeps request_ids.
CREATE TABLE request_ids (
    request_id PRIMARY KEY NOT NULL,
    log_id     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO request_ids (request_id, log_id)
SELECT request_id, id FROM request_log WHERE request_id IS NOT NULL ORDER BY request_id;
DROP INDEX request_log_request_id;
CREATE TRIGGER request_log_forget_request_id AFTER DELETE ON request_log
WHEN OLD.request_id IS NOT NULL
BEGIN
    DELETE FROM request_ids WHERE request_id = OLD.request_id AND log_id = OLD.id;
END;
