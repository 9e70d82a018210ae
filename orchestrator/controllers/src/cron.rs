//! Standard cron schedules as upstream's CronJob controller reads them (robfig/cron's
//! `ParseStandard`): five fields — minute, hour, day of month, month, day of week (0 or 7 =
//! Sunday, names JAN–DEC and SUN–SAT) — with `*`, `?`, lists, ranges and steps, the
//! descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and
//! `@hourly`, and a leading `TZ=` / `CRON_TZ=`. When both day fields are restricted a day
//! matching either one fires (Vixie cron's rule). Times are evaluated in a time zone.
//!
//! Written here rather than taken from a crate: the maintained ones read six or seven fields
//! with seconds, number Sunday 1, or AND the two day fields, so none fits upstream's meaning.

use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{self, Timestamp, ToSpan};

/// Why a schedule does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("expected exactly 5 fields, found {0}: {1:?}")]
    Fields(usize, String),
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse {0:?}: {1}")]
    Field(String, String),
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Whether the day fields were `*`/`?` (unrestricted).
    dom_star: bool,
    dow_star: bool,
    /// A `TZ=`/`CRON_TZ=` prefix.
    pub tz: Option<String>,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    let l = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == l) {
        return Ok(i as u32 + offset);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// One field into a bit set; returns (bits, star).
fn field(
    expr: &str,
    min: u32,
    max: u32,
    names: &[&str],
    offset: u32,
) -> Result<(u64, bool), Error> {
    let mut bits = 0u64;
    let mut star = false;
    let err = |m: String| Error::Field(expr.to_string(), m);
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(s.parse::<u32>().map_err(|_| err(format!("bad step {s}")))?),
            ),
            None => (part, None),
        };
        let (lo, hi, is_star) = if range == "*" || range == "?" {
            (min, max, true)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, names, offset).map_err(err)?,
                value(b, names, offset).map_err(err)?,
                false,
            )
        } else {
            let v = value(range, names, offset).map_err(err)?;
            // `N/step` runs from N to the end of the range.
            (v, if step.is_some() { max } else { v }, false)
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(err("step of range should be a positive number".into()));
        }
        if lo < min || hi > max || lo > hi {
            return Err(err(format!("{lo}-{hi} is outside {min}-{max}")));
        }
        if is_star && step == 1 {
            star = true;
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, Error> {
        let mut spec = spec.trim();
        let mut tz = None;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let (head, rest) = spec.split_once(char::is_whitespace).unwrap_or((spec, ""));
            tz = head.split_once('=').map(|(_, z)| z.to_string());
            spec = rest.trim();
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(Error::Descriptor(s.to_string())),
            s => s,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(Error::Fields(f.len(), spec.to_string()));
        }
        let (minute, _) = field(f[0], 0, 59, &[], 0)?;
        let (hour, _) = field(f[1], 0, 23, &[], 0)?;
        let (dom, dom_star) = field(f[2], 1, 31, &[], 0)?;
        let (month, _) = field(f[3], 1, 12, MONTHS, 1)?;
        let (mut dow, dow_star) = field(f[4], 0, 7, DAYS, 0)?;
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star,
            dow_star,
            tz,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time strictly after `after` that the schedule fires in `tz` (None if none
    /// in the next five years, as robfig gives up).
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let mut day = local.date();
        let limit = day.checked_add(5.years()).ok()?;
        while day <= limit {
            if self.month & (1 << day.month()) != 0 && self.day_matches(day) {
                for h in 0..24i8 {
                    if self.hour & (1 << h) == 0 {
                        continue;
                    }
                    for m in 0..60i8 {
                        if self.minute & (1 << m) == 0 {
                            continue;
                        }
                        let dt = DateTime::from_parts(day, jiff::civil::time(h, m, 0, 0));
                        // A local time skipped by a DST gap fires after the gap; one that
                        // repeats fires once, at its first occurrence.
                        let Ok(z) = tz.to_ambiguous_zoned(dt).compatible() else {
                            continue;
                        };
                        if z.timestamp() > after {
                            return Some(z.timestamp());
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

/// The time zone a CronJob's schedule runs in: `spec.timeZone`, else a `TZ=` prefix, else
/// the controller's own (UTC here, as kube-controller-manager in a container).
pub fn time_zone(spec_tz: Option<&str>, schedule: &Schedule) -> Result<TimeZone, Error> {
    match spec_tz.or(schedule.tz.as_deref()) {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|_| Error::TimeZone(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec)
            .unwrap()
            .next(ts(after), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn five_fields_with_steps_ranges_lists_and_names() {
        assert_eq!(
            next("*/15 * * * *", "2024-01-01T00:07:00Z"),
            "2024-01-01T00:15:00Z"
        );
        assert_eq!(
            next("0 9 * * 1-5", "2024-01-05T10:00:00Z"),
            "2024-01-08T09:00:00Z",
            "Friday after nine: next is Monday"
        );
        assert_eq!(
            next("30 4 1,15 * *", "2024-01-02T00:00:00Z"),
            "2024-01-15T04:30:00Z"
        );
        assert_eq!(
            next("0 0 * FEB SUN", "2024-01-01T00:00:00Z"),
            "2024-02-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2024-01-01T00:00:00Z"),
            "2024-01-07T00:00:00Z",
            "7 is Sunday too"
        );
        assert_eq!(
            next("5/20 * * * *", "2024-01-01T00:06:00Z"),
            "2024-01-01T00:25:00Z"
        );
        assert_eq!(
            next("@hourly", "2024-01-01T00:00:00Z"),
            "2024-01-01T01:00:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-01-01T00:00:30Z"),
            "2024-01-01T00:01:00Z",
            "strictly after"
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 13th, or any Friday: 2024-01-05 is a Friday before the 13th.
        assert_eq!(
            next("0 0 13 * 5", "2024-01-01T00:00:00Z"),
            "2024-01-05T00:00:00Z"
        );
        // With a star in day of week only the 13th counts.
        assert_eq!(
            next("0 0 13 * *", "2024-01-01T00:00:00Z"),
            "2024-01-13T00:00:00Z"
        );
    }

    #[test]
    fn schedules_run_in_their_time_zone() {
        let s = Schedule::parse("0 9 * * *").unwrap();
        let tz = time_zone(Some("America/New_York"), &s).unwrap();
        // 09:00 in New York in January is 14:00 UTC.
        assert_eq!(
            s.next(ts("2024-01-10T00:00:00Z"), &tz).unwrap().to_string(),
            "2024-01-10T14:00:00Z"
        );
        let prefixed = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *").unwrap();
        let tz = time_zone(None, &prefixed).unwrap();
        assert_eq!(
            prefixed
                .next(ts("2024-01-10T00:00:00Z"), &tz)
                .unwrap()
                .to_string(),
            "2024-01-11T00:00:00Z"
        );
        assert_eq!(
            time_zone(Some("Mars/Olympus"), &s).unwrap_err(),
            Error::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn a_time_skipped_by_daylight_saving_fires_after_the_gap() {
        // 2024-03-10 02:30 does not exist in New York; it fires at 03:30 EDT (07:30 UTC).
        let s = Schedule::parse("30 2 * * *").unwrap();
        let tz = TimeZone::get("America/New_York").unwrap();
        assert_eq!(
            s.next(ts("2024-03-10T05:00:00Z"), &tz).unwrap().to_string(),
            "2024-03-10T07:30:00Z"
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(matches!(
            Schedule::parse("* * * *"),
            Err(Error::Fields(4, _))
        ));
        assert!(matches!(
            Schedule::parse("60 * * * *"),
            Err(Error::Field(..))
        ));
        assert!(matches!(
            Schedule::parse("*/0 * * * *"),
            Err(Error::Field(..))
        ));
        assert!(matches!(
            Schedule::parse("@fortnightly"),
            Err(Error::Descriptor(_))
        ));
        assert!(matches!(
            Schedule::parse("0 0 * * FUN"),
            Err(Error::Field(..))
        ));
    }
}
