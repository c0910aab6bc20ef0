-- Results of the active provider probes (SPEC §3.3): one row per probe run, kept like the
-- request log (log_retention_days). status 0: no HTTP status (TCP probe, or no response).
CREATE TABLE probe_results (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms      BIGINT  NOT NULL,
    probe      TEXT    COLLATE "C" NOT NULL,
    provider   TEXT    COLLATE "C" NOT NULL,
    ok         BOOLEAN NOT NULL,
    outcome    TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    latency_ms BIGINT  NOT NULL,
    error      TEXT
);
CREATE INDEX probe_results_probe_ts ON probe_results (probe, ts_ms);
CREATE INDEX probe_results_ts ON probe_results (ts_ms);
