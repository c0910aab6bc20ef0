//! The `probe_results` table (SPEC §3.3, §6.4): one row per probe run, written in batches by the
//! probe runner's writer task (`crate::probe`), read by the probe log export and by the
//! availability API, purged with the request log's retention.
//!
//! [`ProbeResult`] and [`ProbeOutcome`] are declared here, the lowest layer that needs them; the
//! probe runner produces them, the in-memory ring (no log store) and Redis (the fleet's last
//! result) hold them too.

use sqlx::{QueryBuilder, Row};

use super::{Backend, SqlLog, dispatch, unavailable};
use crate::store::StoreError;

label_enum! {
    /// How a probe run ended (the `outcome` label of `gatemeter_probe_results_total`).
    pub enum ProbeOutcome {
        /// Connected (TCP) or answered with an expected status (HTTP).
        Ok = "ok",
        /// Answered with a status that is not expected.
        Fail = "fail",
        /// No answer within the probe's timeout.
        Timeout = "timeout",
        /// The connection was refused.
        Refused = "refused",
        /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
        Tls = "tls",
        /// The host name did not resolve.
        Dns = "dns",
        /// Any other connection or protocol failure.
        Error = "error",
    }
}

impl ProbeOutcome {
    /// The outcome called `s` (its label value).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// When it started, epoch ms.
    pub ts_ms: i64,
    /// The probe's name.
    pub probe: String,
    /// The provider it stands for.
    pub provider: String,
    /// How it ended.
    pub outcome: ProbeOutcome,
    /// The HTTP status; 0 without one (TCP probe, no response).
    pub status: u16,
    /// From start to answer (or to failure), ms.
    pub latency_ms: u64,
    /// What went wrong, secrets redacted; `None` when it went well.
    pub error: Option<String>,
}

impl ProbeResult {
    /// Whether the run succeeded.
    pub fn ok(&self) -> bool {
        self.outcome == ProbeOutcome::Ok
    }

    /// One line, for Redis (`ts \t outcome \t status \t latency \t error`); see [`Self::decode`].
    pub fn encode(&self) -> String {
        let error = self
            .error
            .as_deref()
            .unwrap_or("")
            .replace(['\t', '\n'], " ");
        format!(
            "{}\t{}\t{}\t{}\t{error}",
            self.ts_ms,
            self.outcome.as_str(),
            self.status,
            self.latency_ms
        )
    }

    /// The result [`Self::encode`] wrote for `probe` of `provider`.
    pub fn decode(probe: &str, provider: &str, line: &str) -> Option<Self> {
        let mut f = line.splitn(5, '\t');
        let ts_ms = f.next()?.parse().ok()?;
        let outcome = ProbeOutcome::parse(f.next()?)?;
        let status = f.next()?.parse().ok()?;
        let latency_ms = f.next()?.parse().ok()?;
        let error = f.next().filter(|e| !e.is_empty()).map(str::to_string);
        Some(Self {
            ts_ms,
            probe: probe.to_string(),
            provider: provider.to_string(),
            outcome,
            status,
            latency_ms,
            error,
        })
    }
}

/// What the probe log export reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeLogFilter {
    /// One probe, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// Runs that started at or after this time (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Runs that started before this time (epoch ms, exclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// Only successes (`true`) or only failures (`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

impl ProbeLogFilter {
    /// Whether `r` passes the filter (the in-memory ring's reading of the same filter).
    pub fn matches(&self, r: &ProbeResult) -> bool {
        self.probe.as_ref().is_none_or(|p| *p == r.probe)
            && self.from_ms.is_none_or(|f| r.ts_ms >= f)
            && self.to_ms.is_none_or(|t| r.ts_ms < t)
            && self.ok.is_none_or(|ok| ok == r.ok())
    }
}

/// A probe's runs in a window, and its latest run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSummary {
    /// The probe's name.
    pub probe: String,
    /// Its provider.
    pub provider: String,
    /// Runs in the window.
    pub results: i64,
    /// Successful runs in the window.
    pub ok: i64,
    /// The latest run before the window's end (within 7 days).
    pub last: Option<ProbeResult>,
}

/// How far back a probe's latest run is looked for.
const LAST_LOOKBACK_MS: i64 = 7 * 86_400_000;

fn decode(row: &impl RowLike) -> Result<ProbeResult, sqlx::Error> {
    row.result()
}

/// A row of either dialect read into a [`ProbeResult`].
trait RowLike {
    fn result(&self) -> Result<ProbeResult, sqlx::Error>;
}

macro_rules! row_like {
    ($row:ty) => {
        impl RowLike for $row {
            fn result(&self) -> Result<ProbeResult, sqlx::Error> {
                let outcome: String = self.try_get("outcome")?;
                let status: i32 = self.try_get("status")?;
                let latency: i64 = self.try_get("latency_ms")?;
                Ok(ProbeResult {
                    ts_ms: self.try_get("ts_ms")?,
                    probe: self.try_get("probe")?,
                    provider: self.try_get("provider")?,
                    outcome: ProbeOutcome::parse(&outcome).unwrap_or(ProbeOutcome::Error),
                    status: u16::try_from(status).unwrap_or(0),
                    latency_ms: u64::try_from(latency).unwrap_or(0),
                    error: self.try_get("error")?,
                })
            }
        }
    };
}
row_like!(sqlx::sqlite::SqliteRow);
row_like!(sqlx::postgres::PgRow);

const COLUMNS: &str = "ts_ms, probe, provider, outcome, status, latency_ms, error";

impl SqlLog {
    /// Writes probe results, one statement per call.
    pub async fn insert_probe_results(&self, rows: &[ProbeResult]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        dispatch!(self.backend(), pool, DB => {
            let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO probe_results (ts_ms, probe, provider, ok, outcome, status, latency_ms, error) ",
            );
            qb.push_values(rows, |mut b, r| {
                b.push_bind(r.ts_ms)
                    .push_bind(r.probe.as_str())
                    .push_bind(r.provider.as_str())
                    .push_bind(r.ok())
                    .push_bind(r.outcome.as_str())
                    .push_bind(i32::from(r.status))
                    .push_bind(i64::try_from(r.latency_ms).unwrap_or(i64::MAX))
                    .push_bind(r.error.as_deref());
            });
            qb.build().execute(pool).await.map_err(unavailable)?;
            Ok(())
        })
    }

    /// The newest `limit` results passing `f`, returned oldest first (newest last).
    pub async fn probe_log(
        &self,
        f: &ProbeLogFilter,
        limit: u32,
    ) -> Result<Vec<ProbeResult>, StoreError> {
        let mut rows = dispatch!(self.backend(), pool, DB => {
            let mut qb = QueryBuilder::<DB>::new(format!("SELECT {COLUMNS} FROM probe_results WHERE 1=1"));
            if let Some(p) = &f.probe {
                qb.push(" AND probe = ").push_bind(p.as_str());
            }
            if let Some(v) = f.from_ms {
                qb.push(" AND ts_ms >= ").push_bind(v);
            }
            if let Some(v) = f.to_ms {
                qb.push(" AND ts_ms < ").push_bind(v);
            }
            if let Some(ok) = f.ok {
                qb.push(" AND ok = ").push_bind(ok);
            }
            qb.push(" ORDER BY ts_ms DESC, id DESC LIMIT ").push_bind(i64::from(limit));
            let rows = qb.build().fetch_all(pool).await.map_err(unavailable)?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>().map_err(unavailable)?
        });
        rows.reverse();
        Ok(rows)
    }

    /// Each probe's runs in `[from_ms, to_ms)` and its latest run before `to_ms`, by probe name.
    pub async fn probe_summaries(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ProbeSummary>, StoreError> {
        let backend = self.backend();
        let counts: Vec<(String, String, i64, i64)> = dispatch!(backend, pool, DB => {
            sqlx::query_as(
                "SELECT probe, provider, COUNT(*), SUM(CASE WHEN ok THEN 1 ELSE 0 END) \
                 FROM probe_results WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY probe, provider",
            )
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?
        });
        let latest: Vec<(String, i64)> = dispatch!(backend, pool, DB => {
            sqlx::query_as(
                "SELECT probe, MAX(ts_ms) FROM probe_results WHERE ts_ms >= $1 AND ts_ms < $2 \
                 GROUP BY probe",
            )
            .bind(to_ms - LAST_LOOKBACK_MS)
            .bind(to_ms)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?
        });
        let mut out: Vec<ProbeSummary> = Vec::new();
        for (probe, ts) in latest {
            let last = last_at(backend, &probe, ts).await?;
            out.push(ProbeSummary {
                provider: last
                    .as_ref()
                    .map(|l| l.provider.clone())
                    .unwrap_or_default(),
                probe,
                results: 0,
                ok: 0,
                last,
            });
        }
        for (probe, provider, results, ok) in counts {
            match out
                .iter_mut()
                .find(|s| s.probe == probe && s.provider == provider)
            {
                Some(s) => (s.results, s.ok) = (results, ok),
                None => out.push(ProbeSummary {
                    probe,
                    provider,
                    results,
                    ok,
                    last: None,
                }),
            }
        }
        out.sort_by(|a, b| (&a.provider, &a.probe).cmp(&(&b.provider, &b.probe)));
        Ok(out)
    }
}

/// The run of `probe` at `ts_ms` (the latest written, if several).
async fn last_at(
    backend: &Backend,
    probe: &str,
    ts_ms: i64,
) -> Result<Option<ProbeResult>, StoreError> {
    dispatch!(backend, pool, DB => {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM probe_results WHERE probe = $1 AND ts_ms = $2 \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(probe)
        .bind(ts_ms)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(decode).transpose().map_err(unavailable)
    })
}

/// Deletes probe results that started before `cutoff_ms` (the request log's retention).
pub(crate) async fn purge_before(backend: &Backend, cutoff_ms: i64) -> Result<u64, StoreError> {
    dispatch!(backend, pool, DB => {
        Ok(sqlx::query("DELETE FROM probe_results WHERE ts_ms < $1")
            .bind(cutoff_ms)
            .execute(pool)
            .await
            .map_err(unavailable)?
            .rows_affected())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_survives_its_redis_line() {
        let r = ProbeResult {
            ts_ms: 1_700_000_000_123,
            probe: "p".into(),
            provider: "anthropic".into(),
            outcome: ProbeOutcome::Fail,
            status: 502,
            latency_ms: 120,
            error: Some("unexpected\tstatus".into()),
        };
        let back = ProbeResult::decode("p", "anthropic", &r.encode()).expect("decodes");
        assert_eq!(back.error.as_deref(), Some("unexpected status"));
        assert_eq!(
            (back.ts_ms, back.outcome, back.status, back.latency_ms),
            (r.ts_ms, r.outcome, 502, 120)
        );
        let ok = ProbeResult {
            error: None,
            outcome: ProbeOutcome::Ok,
            ..r
        };
        assert_eq!(
            ProbeResult::decode("p", "a", &ok.encode())
                .expect("ok")
                .error,
            None
        );
        assert_eq!(ProbeResult::decode("p", "a", "garbage"), None);
    }
}
