-- The span id of a record read from an OpenTelemetry GenAI span (issue 21), so a record is found
-- from a trace: `trace` and `span` filters of the log. The index is partial: records without a
-- trace id (most native records) cost the writer nothing.
ALTER TABLE request_log ADD COLUMN span_id TEXT;
CREATE INDEX request_log_trace ON request_log (trace_id, span_id) WHERE trace_id IS NOT NULL;
