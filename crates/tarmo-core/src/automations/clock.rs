//! Times in the person's own zone: the next birthday at a local time,
//! the end of quiet hours, the next firing of a cron schedule. Pure: the
//! time zone database is bundled (jiff), so a send time never depends on
//! the host's files.

use jiff::civil::{Date, Time};
pub use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// A time zone by IANA name (`Europe/Helsinki`); `None` when unknown.
pub fn zone(name: &str) -> Option<TimeZone> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    TimeZone::get(name).ok()
}

/// A wall-clock time `HH:MM` as minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn zoned(ms: i64, tz: &TimeZone) -> Option<Zoned> {
    Some(Timestamp::from_millisecond(ms).ok()?.to_zoned(tz.clone()))
}

fn at_local(date: Date, minutes: u16, tz: &TimeZone) -> Option<i64> {
    let t = Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).ok()?;
    // A time that does not exist that day (a DST gap) is taken as the
    // first moment after it, the usual compatible rule.
    let z = date.to_datetime(t).to_zoned(tz.clone()).ok()?;
    Some(z.timestamp().as_millisecond())
}

/// Month and day of a birthday trait (`YYYY-MM-DD` or `MM-DD`).
pub fn birthday_md(s: &str) -> Option<(i8, i8)> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    let (m, d) = match parts.as_slice() {
        [y, m, d] if y.len() == 4 => (m, d),
        [m, d] => (m, d),
        _ => return None,
    };
    let (m, d): (i8, i8) = (m.parse().ok()?, d.parse().ok()?);
    // The day must exist in some year (29 February does, 31 April not).
    Date::new(2000, m, d).ok()?;
    Some((m, d))
}

/// The birthday's date in `year`: 29 February in a common year is 28 February.
fn birthday_in(year: i16, (m, d): (i8, i8)) -> Option<Date> {
    Date::new(year, m, d).ok().or_else(|| {
        (m == 2 && d == 29)
            .then(|| Date::new(year, 2, 28).ok())
            .flatten()
    })
}

/// The next birthday greeting at or after `from_ms` - `grace_ms` (a greeting
/// a little late, after a restart, still goes out that day): its year (the
/// occurrence) and its time.
pub fn next_birthday(
    birthday: &str,
    tz: &TimeZone,
    local_minutes: u16,
    from_ms: i64,
) -> Option<(i16, i64)> {
    let md = birthday_md(birthday)?;
    let today = zoned(from_ms, tz)?.date();
    for year in [today.year(), today.year() + 1, today.year() + 2] {
        let date = birthday_in(year, md)?;
        let at = at_local(date, local_minutes, tz)?;
        // The whole local day of the birthday still counts: a greeting due
        // at 09:00 and found at 15:00 (the server was down) goes out then.
        let end_of_day = at_local(date.tomorrow().ok()?, 0, tz)?;
        if end_of_day > from_ms {
            return Some((year, at));
        }
    }
    None
}

/// Quiet hours `[start, end)` in local minutes; they may wrap midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    pub start: u16,
    pub end: u16,
}

impl Quiet {
    /// `None` when start equals end: quiet all day, which nothing could pass.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start != end).then_some(Self { start, end })
    }

    fn inside(&self, m: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// When a send due at `now_ms` may go: `None` when outside quiet hours,
    /// else the end of the quiet hours in the person's zone.
    pub fn until(&self, tz: &TimeZone, now_ms: i64) -> Option<i64> {
        let z = zoned(now_ms, tz)?;
        let m = z.hour() as u16 * 60 + z.minute() as u16;
        if !self.inside(m) {
            return None;
        }
        let date = if m >= self.end {
            z.date().tomorrow().ok()?
        } else {
            z.date()
        };
        at_local(date, self.end, tz).map(|t| t.max(now_ms + 1000))
    }
}

/// A cron schedule (five fields, or six with seconds).
#[derive(Debug, Clone)]
pub struct Schedule(croner::Cron);

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > 200 {
            return Err("a cron expression is at most 200 characters".into());
        }
        let c = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(s)
            .map_err(|e| format!("`{s}` is not a cron expression: {e}"))?;
        Ok(Self(c))
    }

    /// The first firing after `after_ms` in `tz`.
    pub fn next_after(&self, tz: &TimeZone, after_ms: i64) -> Option<i64> {
        let z = zoned(after_ms, tz)?;
        let n = self.0.find_next_occurrence(&z, false).ok()?;
        Some(n.timestamp().as_millisecond())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn birthdays_at_local_time() {
        let hel = zone("Europe/Helsinki").unwrap();
        // 09:00 in Helsinki in June is 06:00 UTC.
        let (y, at) =
            next_birthday("1990-06-15", &hel, 9 * 60, ms("2026-06-01T00:00:00Z")).unwrap();
        assert_eq!((y, at), (2026, ms("2026-06-15T06:00:00Z")));
        // Later the same local day it is still today's greeting.
        let (_, at2) = next_birthday("06-15", &hel, 9 * 60, ms("2026-06-15T12:00:00Z")).unwrap();
        assert_eq!(at2, at);
        // The day after, next year's.
        let (y, _) = next_birthday("06-15", &hel, 9 * 60, ms("2026-06-15T21:30:00Z")).unwrap();
        assert_eq!(y, 2027);
        // 29 February in a common year: 28 February.
        let utc = zone("UTC").unwrap();
        let (y, at) =
            next_birthday("2000-02-29", &utc, 9 * 60, ms("2027-01-01T00:00:00Z")).unwrap();
        assert_eq!((y, at), (2027, ms("2027-02-28T09:00:00Z")));
        let (_, at) = next_birthday("02-29", &utc, 9 * 60, ms("2028-01-01T00:00:00Z")).unwrap();
        assert_eq!(at, ms("2028-02-29T09:00:00Z"));
        assert!(next_birthday("04-31", &utc, 0, 0).is_none());
        assert!(next_birthday("nonsense", &utc, 0, 0).is_none());
    }

    #[test]
    fn quiet_hours_wait_for_their_end_in_local_time() {
        let hel = zone("Europe/Helsinki").unwrap();
        let q = Quiet::new(21 * 60, 8 * 60).unwrap();
        // 23:00 local (20:00 UTC, summer) is quiet until 08:00 local = 05:00 UTC.
        assert_eq!(
            q.until(&hel, ms("2026-06-15T20:00:00Z")),
            Some(ms("2026-06-16T05:00:00Z"))
        );
        // 03:00 local (00:00 UTC) waits the same night.
        assert_eq!(
            q.until(&hel, ms("2026-06-16T00:00:00Z")),
            Some(ms("2026-06-16T05:00:00Z"))
        );
        assert_eq!(q.until(&hel, ms("2026-06-16T09:00:00Z")), None);
        assert!(Quiet::new(480, 480).is_none());
    }

    #[test]
    fn cron_schedules() {
        let utc = zone("UTC").unwrap();
        let s = Schedule::parse("0 9 * * MON").unwrap();
        // 2026-06-15 is a Monday.
        assert_eq!(
            s.next_after(&utc, ms("2026-06-14T00:00:00Z")),
            Some(ms("2026-06-15T09:00:00Z"))
        );
        assert!(Schedule::parse("not cron").is_err());
        let never = Schedule::parse("0 0 31 2 *").unwrap();
        assert_eq!(never.next_after(&utc, ms("2026-06-14T00:00:00Z")), None);
    }
}
