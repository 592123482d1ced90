//! CF time coordinates → UTC microseconds since 1970-01-01.
//!
//! ERA5 from the CDS uses `hours since 1900-01-01 00:00:00.0` (legacy NetCDF3,
//! int32) and `seconds since 1970-01-01` (NetCDF4, int64), both with the
//! standard calendar. Calendars whose dates are all real Gregorian dates are
//! accepted (`standard`, `gregorian`, `proleptic_gregorian`, `noleap`/`365_day`);
//! the others (`360_day`, `all_leap`, `julian`) have dates a UTC timestamp cannot
//! hold and are rejected rather than silently shifted.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};

/// Microseconds in one second.
const MICROS: i64 = 1_000_000;

/// Calendars uqcast can map onto UTC timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calendar {
    /// Mixed Julian/Gregorian; identical to proleptic Gregorian after 1582-10-15.
    Standard,
    ProlepticGregorian,
    /// 365-day years (no 29 February).
    NoLeap,
}

impl Calendar {
    /// Parses a CF `calendar` attribute (case-insensitive). `None` → standard.
    pub fn parse(attr: Option<&str>) -> Result<Self, String> {
        match attr.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("standard") | Some("gregorian") => Ok(Self::Standard),
            Some("proleptic_gregorian") => Ok(Self::ProlepticGregorian),
            Some("noleap") | Some("365_day") => Ok(Self::NoLeap),
            Some(other) => Err(format!(
                "calendar '{other}' has dates that are not UTC dates; supported: standard, gregorian, proleptic_gregorian, noleap, 365_day"
            )),
        }
    }
}

/// A decoded CF time axis definition: value × `unit_seconds` after `epoch`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeAxis {
    unit_seconds: f64,
    epoch: NaiveDateTime,
    calendar: Calendar,
}

impl TimeAxis {
    /// Parses `units` such as `hours since 1900-01-01 00:00:00.0` or
    /// `seconds since 1970-01-01T00:00:00Z` with an optional `calendar`.
    pub fn parse(units: &str, calendar: Option<&str>) -> Result<Self, String> {
        let calendar = Calendar::parse(calendar)?;
        let lower = units.trim().to_ascii_lowercase();
        let (unit, epoch) = lower
            .split_once(" since ")
            .ok_or_else(|| format!("'{units}' is not CF time units ('<unit> since <date>')"))?;
        let unit_seconds = match unit.trim() {
            "days" | "day" | "d" => 86_400.0,
            "hours" | "hour" | "hr" | "h" => 3_600.0,
            "minutes" | "minute" | "min" => 60.0,
            "seconds" | "second" | "sec" | "s" => 1.0,
            "milliseconds" | "millisecond" | "msec" | "ms" => 1e-3,
            "microseconds" | "microsecond" | "usec" | "us" => 1e-6,
            other => return Err(format!("unknown time unit '{other}' in '{units}'")),
        };
        let epoch = parse_epoch(epoch.trim())
            .ok_or_else(|| format!("cannot parse the date in '{units}'"))?;
        if calendar == Calendar::Standard && epoch.date() < gregorian_reform() {
            return Err(format!(
                "epoch {epoch} is before the 1582 Gregorian reform; the mixed 'standard' calendar is not supported there"
            ));
        }
        Ok(Self {
            unit_seconds,
            epoch,
            calendar,
        })
    }

    /// Converts one stored value to UTC microseconds since 1970-01-01.
    pub fn to_micros(&self, value: f64) -> Result<i64, String> {
        if !value.is_finite() {
            return Err(format!("time value {value} is not finite"));
        }
        let offset_micros = (value * self.unit_seconds * MICROS as f64).round();
        if offset_micros.abs() > 9.0e18 {
            return Err(format!("time value {value} is out of range"));
        }
        let offset = TimeDelta::microseconds(offset_micros as i64);
        let when = match self.calendar {
            Calendar::Standard | Calendar::ProlepticGregorian => {
                self.epoch.checked_add_signed(offset)
            }
            Calendar::NoLeap => noleap_add(self.epoch, offset),
        }
        .ok_or_else(|| format!("time value {value} is out of range"))?;
        Ok(when.and_utc().timestamp_micros())
    }
}

fn gregorian_reform() -> NaiveDate {
    NaiveDate::from_ymd_opt(1582, 10, 15).unwrap_or(NaiveDate::MIN)
}

/// Accepts `YYYY-M-D`, optionally followed by ` ` or `T` and `h:m[:s[.frac]]`,
/// optionally followed by `Z`, `UTC` or a `+00:00`-style offset.
fn parse_epoch(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim_end_matches('z').trim();
    let s = s.strip_suffix("utc").unwrap_or(s).trim();
    let (date, rest) = match s.find([' ', 't']) {
        Some(i) => (&s[..i], s[i + 1..].trim()),
        None => (s, ""),
    };
    let mut ymd = date.split('-');
    let year: i32 = ymd.next()?.parse().ok()?;
    let month: u32 = ymd.next()?.parse().ok()?;
    let day: u32 = ymd.next()?.parse().ok()?;
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    if rest.is_empty() {
        return Some(date.and_time(NaiveTime::MIN));
    }
    // Split off a trailing UTC offset (`+hh:mm`, `-hh:mm`, `+hhmm`, `+h`).
    let (clock, offset_minutes) = match rest.rfind(['+', '-']) {
        Some(i) => (rest[..i].trim(), parse_offset_minutes(&rest[i..])?),
        None => (rest, 0),
    };
    let mut hms = clock.split(':');
    let h: u32 = hms.next()?.trim().parse().ok()?;
    let m: u32 = hms
        .next()
        .map(|m| m.trim().parse().ok())
        .unwrap_or(Some(0))?;
    let secs: f64 = hms
        .next()
        .map(|s| s.trim().parse().ok())
        .unwrap_or(Some(0.0))?;
    let whole = secs.trunc() as u32;
    let micro = ((secs - secs.trunc()) * 1e6).round() as u32;
    let time = NaiveTime::from_hms_micro_opt(h, m, whole, micro)?;
    date.and_time(time)
        .checked_sub_signed(TimeDelta::minutes(offset_minutes))
}

fn parse_offset_minutes(s: &str) -> Option<i64> {
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let digits = s[1..].replace(':', "");
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i64>().ok()?, 0),
        4 => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    Some(sign * (h * 60 + m))
}

/// Adds an offset in the 365-day calendar, then names the resulting date in
/// the Gregorian calendar (every no-leap date exists there).
fn noleap_add(epoch: NaiveDateTime, offset: TimeDelta) -> Option<NaiveDateTime> {
    const DAY: i64 = 86_400 * MICROS;
    let start_day = noleap_day_number(epoch.date())?;
    let micros_in_day = (epoch.time() - NaiveTime::MIN).num_microseconds()?;
    let total = micros_in_day.checked_add(offset.num_microseconds()?)?;
    let day = start_day + total.div_euclid(DAY);
    let rem = total.rem_euclid(DAY);
    let year = day.div_euclid(365);
    let mut doy = day.rem_euclid(365) as u32;
    let mut month = 1;
    for len in NOLEAP_MONTHS {
        if doy < len {
            break;
        }
        doy -= len;
        month += 1;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, doy + 1)?;
    Some(date.and_time(NaiveTime::MIN) + TimeDelta::microseconds(rem))
}

const NOLEAP_MONTHS: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

fn noleap_day_number(date: NaiveDate) -> Option<i64> {
    if date.month() == 2 && date.day() == 29 {
        return None;
    }
    let before: u32 = NOLEAP_MONTHS[..date.month0() as usize].iter().sum();
    Some(i64::from(date.year()) * 365 + i64::from(before + date.day0()))
}

/// Formats UTC microseconds as ISO 8601 for messages.
pub fn format_micros(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{micros} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_micros())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn legacy_cds_hours_since_1900() {
        let axis = TimeAxis::parse("hours since 1900-01-01 00:00:00.0", Some("gregorian")).unwrap();
        // 2020-01-01T00:00Z is 43,829 days = 1,051,896 hours after 1900-01-01.
        assert_eq!(
            axis.to_micros(1_051_896.0).unwrap(),
            micros("2020-01-01T00:00:00Z")
        );
        assert_eq!(
            axis.to_micros(1_051_902.0).unwrap(),
            micros("2020-01-01T06:00:00Z")
        );
    }

    #[test]
    fn current_cds_seconds_since_1970() {
        let axis = TimeAxis::parse("seconds since 1970-01-01", None).unwrap();
        assert_eq!(
            axis.to_micros(1_577_836_800.0).unwrap(),
            micros("2020-01-01T00:00:00Z")
        );
    }

    #[test]
    fn epoch_forms_and_offsets() {
        for units in [
            "days since 2000-01-01T00:00:00Z",
            "days since 2000-1-1",
            "days since 2000-01-01 00:00:00 UTC",
            "days since 2000-01-01 01:30:00+01:30",
            "DAYS SINCE 2000-01-01T00:00",
        ] {
            let axis = TimeAxis::parse(units, None).unwrap();
            assert_eq!(
                axis.to_micros(1.5).unwrap(),
                micros("2000-01-02T12:00:00Z"),
                "{units}"
            );
        }
    }

    #[test]
    fn noleap_skips_february_29() {
        let axis = TimeAxis::parse("days since 2000-01-01", Some("noleap")).unwrap();
        // Day 59 after 1 Jan in a 365-day calendar is 1 March, even in a leap year.
        assert_eq!(
            axis.to_micros(59.0).unwrap(),
            micros("2000-03-01T00:00:00Z")
        );
        assert_eq!(
            axis.to_micros(365.0).unwrap(),
            micros("2001-01-01T00:00:00Z")
        );
        assert_eq!(
            axis.to_micros(-1.0).unwrap(),
            micros("1999-12-31T00:00:00Z")
        );
    }

    #[test]
    fn rejects_what_it_cannot_represent() {
        assert!(TimeAxis::parse("hours", None).is_err());
        assert!(TimeAxis::parse("fortnights since 2000-01-01", None).is_err());
        assert!(TimeAxis::parse("days since 2000-01-01", Some("360_day")).is_err());
        assert!(TimeAxis::parse("days since 1500-01-01", Some("standard")).is_err());
        assert!(TimeAxis::parse("days since 1500-01-01", Some("proleptic_gregorian")).is_ok());
        assert!(TimeAxis::parse("days since 2000-13-01", None).is_err());
        let axis = TimeAxis::parse("days since 2000-01-01", None).unwrap();
        assert!(axis.to_micros(f64::NAN).is_err());
    }
}
