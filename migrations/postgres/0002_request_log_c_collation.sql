-- The text columns that are indexed compare bytewise (collation "C"): every request-log filter on
-- them is an equality, which gives the same answers under any deterministic collation, and an
-- index insert then compares keys with memcmp instead of the database's locale (strcoll), the
-- largest single cost of writing a row with seven indexes. Changing only the collation keeps the
-- table as it is; the indexes on these columns are rebuilt.
ALTER TABLE request_log
    ALTER COLUMN request_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_ref   TYPE TEXT COLLATE "C",
    ALTER COLUMN key_name   TYPE TEXT COLLATE "C",
    ALTER COLUMN provider   TYPE TEXT COLLATE "C",
    ALTER COLUMN model      TYPE TEXT COLLATE "C",
    ALTER COLUMN session_id TYPE TEXT COLLATE "C";
