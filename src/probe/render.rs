//! The probe families of `/metrics` (`gatemeter_probe_*`), from [`super::Probes::snapshot`].

use super::{ProbeOutcome, ProbeSnapshot};
use crate::budget::Grant;
use crate::catalog as c;
use crate::exposition::{Encoder, Value};

/// Writes the three probe families (headers always; series for the configured probes, as far
/// as the series budget granted them).
pub(crate) fn write(e: &mut Encoder, probes: &[ProbeSnapshot]) {
    let probes: Vec<&ProbeSnapshot> = probes.iter().filter(|p| p.grant != Grant::Folded).collect();
    e.header(&c::PROBE_UP);
    for p in &probes {
        if let Some(up) = p.up {
            e.sample(
                &c::PROBE_UP,
                &[&p.name, &p.provider],
                Value::U(u64::from(up)),
            );
        }
    }
    e.header(&c::PROBE_DURATION);
    for p in probes.iter().filter(|p| p.grant == Grant::Full) {
        e.histogram(
            &c::PROBE_DURATION,
            &[&p.name, &p.provider],
            c::PROBE_BUCKETS,
            &p.cumulative,
            p.count,
            Value::F(p.sum_seconds),
        );
    }
    e.header(&c::PROBE_RESULTS);
    for p in &probes {
        for o in ProbeOutcome::ALL {
            let n = p.outcomes.get(o as usize).copied().unwrap_or(0);
            e.sample(
                &c::PROBE_RESULTS,
                &[&p.name, &p.provider, o.as_str()],
                Value::U(n),
            );
        }
    }
}
