-- Request ids written as canonical UUIDs (lowercase, hyphenated) are stored as their 16 bytes:
-- the unique index, where random UUIDs land anywhere, is about half the size, and random-UUID
-- writes are faster (issue #4, see ARCHITECTURE.md). The writer does this for new rows; this
-- converts the rows written before. Only the exact canonical form is converted (GLOB is
-- case-sensitive), so the mapping stays one-to-one: an uppercase or unhyphenated id stays text,
-- a different id as it always was. The log's readers turn the bytes back into the same text.
UPDATE request_log
SET request_id = unhex(replace(request_id, '-', ''))
WHERE typeof(request_id) = 'text'
  AND request_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]';
