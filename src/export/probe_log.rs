//! The probe log text export (SPEC §6.4): one line per probe run, oldest first,
//! `[HH:mm:ss] OK 200 45ms` or `[HH:mm:ss] FAIL 502 120ms <error>`, times in
//! `analytics.time_zone`; `-` stands for a run without an HTTP status (TCP, no answer).
//! Pure: no I/O.

use std::fmt::Write as _;

use crate::calendar::Zone;
use crate::store::sql::probe::ProbeResult;

/// Default lines in one export.
pub const DEFAULT_LINES: u32 = 100;
/// Most lines in one export.
pub const MAX_LINES: u32 = 1000;

/// One line, without its newline.
pub fn line(r: &ProbeResult, zone: &Zone) -> String {
    let mut s = format!(
        "[{}] {} ",
        zone.time_of_day(r.ts_ms),
        if r.ok() { "OK" } else { "FAIL" }
    );
    if r.status == 0 {
        s.push('-');
    } else {
        let _ = write!(s, "{}", r.status);
    }
    let _ = write!(s, " {}ms", r.latency_ms);
    if !r.ok() {
        let error = r.error.as_deref().unwrap_or(r.outcome.as_str());
        s.push(' ');
        // One line per run, whatever the error text holds.
        s.extend(error.chars().map(|c| if c.is_control() { ' ' } else { c }));
    }
    s
}

/// The whole file: every result's line, each ending in `\n`.
pub fn render(results: &[ProbeResult], zone: &Zone) -> String {
    let mut out = String::with_capacity(results.len() * 40);
    for r in results {
        out.push_str(&line(r, zone));
        out.push('\n');
    }
    out
}

/// `probe-logs-YYYY-MM-DD.txt`, the date of `now_ms` in `zone`.
pub fn file_name(now_ms: i64, zone: &Zone) -> String {
    format!("probe-logs-{}.txt", zone.date_string(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::probe::ProbeOutcome;

    fn result(outcome: ProbeOutcome, status: u16, error: Option<&str>) -> ProbeResult {
        ProbeResult {
            // 2026-12-05T06:07:08.9Z
            ts_ms: 1_796_450_828_900,
            probe: "p".into(),
            provider: "anthropic".into(),
            outcome,
            status,
            latency_ms: 45,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn lines_as_the_seed_writes_them() {
        let utc = Zone::utc();
        assert_eq!(
            line(&result(ProbeOutcome::Ok, 200, None), &utc),
            "[06:07:08] OK 200 45ms"
        );
        assert_eq!(
            line(
                &result(ProbeOutcome::Fail, 502, Some("unexpected status 502")),
                &utc
            ),
            "[06:07:08] FAIL 502 45ms unexpected status 502"
        );
        assert_eq!(
            line(&result(ProbeOutcome::Timeout, 0, Some("a\nb")), &utc),
            "[06:07:08] FAIL - 45ms a b"
        );
        assert_eq!(
            line(&result(ProbeOutcome::Ok, 0, None), &utc),
            "[06:07:08] OK - 45ms"
        );
        let shanghai = Zone::named("Asia/Shanghai").expect("zone");
        assert_eq!(
            render(&[result(ProbeOutcome::Ok, 204, None)], &shanghai),
            "[14:07:08] OK 204 45ms\n"
        );
        assert_eq!(
            file_name(1_796_450_828_900, &shanghai),
            "probe-logs-2026-12-05.txt"
        );
    }
}
