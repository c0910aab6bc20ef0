-- Rollup rows are updated in place at every merge (the current hour's, day's and month's rows of
-- every active user, key, provider, ...), never by their key. With pages filled to 100 % each
-- update wrote its new version to another page, with an entry in both indexes; with half of
-- each page left free the new version stays on its page, a HOT update with no index entry
-- (`bench-log --profile live`, 1,000,000 rows: 30,755 of 30,756 updates HOT, against none;
-- 70 %: 13,820). Rows no longer updated keep their pages half full: at most twice the table's
-- size, which is a few % of the log's. Session rows change `last_ms`, which both of their
-- indexes hold, so their updates cannot be HOT: their table is left as it was.
ALTER TABLE rollup SET (fillfactor = 50);
