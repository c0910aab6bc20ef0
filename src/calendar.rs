//! Calendar periods in an IANA time zone (`analytics.time_zone`): where today, this ISO week
//! (from Monday) and this month begin and end, as epoch milliseconds. Days are not always 24
//! hours long (DST): boundaries are computed from local midnights, never by adding 86,400 s.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A named calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// From local midnight to the next.
    Today,
    /// From Monday's local midnight, seven days.
    Week,
    /// From the first of the month's local midnight to the next month's.
    Month,
}

/// A validated IANA time zone.
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Zone {
    /// The zone called `name` (`UTC`, `Europe/Berlin`, `Asia/Shanghai`, …), or why not.
    pub fn named(name: &str) -> Result<Self, String> {
        let tz = TimeZone::get(name).map_err(|_| format!("{name:?} is not an IANA time zone"))?;
        Ok(Self {
            name: name.to_string(),
            tz,
        })
    }

    /// UTC.
    pub fn utc() -> Self {
        Self {
            name: "UTC".to_string(),
            tz: TimeZone::UTC,
        }
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn date(&self, ms: i64) -> Date {
        Timestamp::from_millisecond(ms)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
            .date()
    }

    /// The local midnight starting `date` (the first instant of that day, when a DST change
    /// skips midnight), as epoch ms.
    fn start_of(&self, date: Date) -> i64 {
        date.to_zoned(self.tz.clone())
            .map_or(0, |z| z.timestamp().as_millisecond())
    }

    /// `[start, end)` of the period containing `now_ms`.
    pub fn period(&self, period: Period, now_ms: i64) -> (i64, i64) {
        let today = self.date(now_ms);
        let (first, next) = match period {
            Period::Today => (today, today.tomorrow().unwrap_or(today)),
            Period::Week => {
                let back = i64::from(today.weekday().to_monday_zero_offset());
                let monday = today.checked_sub(back.days()).unwrap_or(today);
                (monday, monday.checked_add(7.days()).unwrap_or(monday))
            }
            Period::Month => {
                let first = today.first_of_month();
                (first, first.checked_add(1.month()).unwrap_or(first))
            }
        };
        (self.start_of(first), self.start_of(next))
    }

    /// The local time of day of `ms` as `HH:MM:SS`.
    pub fn time_of_day(&self, ms: i64) -> String {
        let t = Timestamp::from_millisecond(ms)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
            .time();
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    }

    /// The local date of `ms` as `YYYY-MM-DD`.
    pub fn date_string(&self, ms: i64) -> String {
        self.date(ms).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_millisecond()
    }

    #[test]
    fn time_of_day_is_local() {
        let z = Zone::named("Asia/Shanghai").expect("zone");
        assert_eq!(z.time_of_day(ms("2026-03-01T15:59:59.900Z")), "23:59:59");
        assert_eq!(
            Zone::utc().time_of_day(ms("2026-03-01T07:05:09Z")),
            "07:05:09"
        );
    }

    #[test]
    fn shanghai_days_start_at_16_utc() {
        let z = Zone::named("Asia/Shanghai").expect("zone");
        // 2026-03-01T15:59:59Z is still 2026-03-01 23:59:59 in Shanghai.
        let (a, b) = z.period(Period::Today, ms("2026-03-01T15:59:59Z"));
        assert_eq!(
            (a, b),
            (ms("2026-02-28T16:00:00Z"), ms("2026-03-01T16:00:00Z"))
        );
        let (a, _) = z.period(Period::Today, ms("2026-03-01T16:00:00Z"));
        assert_eq!(a, ms("2026-03-01T16:00:00Z"));
        // March 2026 in Shanghai; 2026-03-01 is a Sunday, so its ISO week began on Feb 23.
        let (a, b) = z.period(Period::Month, ms("2026-03-01T16:00:00Z"));
        assert_eq!(
            (a, b),
            (ms("2026-02-28T16:00:00Z"), ms("2026-03-31T16:00:00Z"))
        );
        let (a, b) = z.period(Period::Week, ms("2026-03-01T12:00:00Z"));
        assert_eq!(
            (a, b),
            (ms("2026-02-22T16:00:00Z"), ms("2026-03-01T16:00:00Z"))
        );
    }

    #[test]
    fn berlin_days_follow_daylight_saving() {
        let z = Zone::named("Europe/Berlin").expect("zone");
        // 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; that day has 23 hours.
        let (a, b) = z.period(Period::Today, ms("2026-03-29T12:00:00Z"));
        assert_eq!(
            (a, b),
            (ms("2026-03-28T23:00:00Z"), ms("2026-03-29T22:00:00Z"))
        );
        assert_eq!(b - a, 23 * 3_600_000);
        // 2026-10-25 has 25 hours.
        let (a, b) = z.period(Period::Today, ms("2026-10-25T12:00:00Z"));
        assert_eq!(b - a, 25 * 3_600_000);
        // The ISO week with the spring change: Monday 2026-03-23 00:00 CET to 2026-03-30 CEST.
        let (a, b) = z.period(Period::Week, ms("2026-03-29T12:00:00Z"));
        assert_eq!(
            (a, b),
            (ms("2026-03-22T23:00:00Z"), ms("2026-03-29T22:00:00Z"))
        );
    }

    #[test]
    fn utc_and_unknown_zones() {
        let z = Zone::utc();
        let (a, b) = z.period(Period::Month, ms("2024-02-29T23:59:59Z"));
        assert_eq!(
            (a, b),
            (ms("2024-02-01T00:00:00Z"), ms("2024-03-01T00:00:00Z"))
        );
        assert!(Zone::named("Mars/Olympus").is_err());
        assert_eq!(
            Zone::named("UTC").expect("utc").date_string(0),
            "1970-01-01"
        );
    }
}
