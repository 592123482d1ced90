//! Times on the command line: RFC 3339, or `YYYY-MM-DD[THH[:MM[:SS]]]` in UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// For clap: a time argument, or a message saying what is accepted.
pub fn parse_utc_arg(s: &str) -> Result<i64, String> {
    parse_utc(s).ok_or_else(|| {
        format!("'{s}' is not a time (use RFC 3339 or YYYY-MM-DD[THH[:MM]][Z], UTC)")
    })
}

/// Parses a command-line time to UTC microseconds since 1970-01-01.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    let s = s.trim_end_matches(['Z', 'z']);
    // chrono needs minutes: `2020-01-01T06` → `2020-01-01T06:00`.
    let s = if s.len() == 13 {
        format!("{s}:00")
    } else {
        s.to_string()
    };
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&s, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(&s, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_micros())
}

/// Refuses `--since` after `--until`: the span would hold no time, and a
/// job that silently does nothing looks like one with nothing to do.
pub fn check_span(since: Option<i64>, until: Option<i64>) -> anyhow::Result<()> {
    if let (Some(a), Some(b)) = (since, until)
        && a > b
    {
        let iso = |t: i64| {
            DateTime::from_timestamp_micros(t)
                .map(|d| d.format("%Y-%m-%dT%H:%MZ").to_string())
                .unwrap_or_else(|| t.to_string())
        };
        anyhow::bail!(
            "--since {} is after --until {}: no time is in between",
            iso(a),
            iso(b)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let midnight = 1_577_836_800_000_000;
        for s in [
            "2020-01-01",
            "2020-01-01T00:00Z",
            "2020-01-01T00:00:00Z",
            "2020-01-01 00:00",
            "2020-01-01T00",
            "2020-01-01T01:00:00+01:00",
        ] {
            assert_eq!(parse_utc(s), Some(midnight), "{s}");
        }
        assert_eq!(parse_utc("yesterday"), None);
    }
}
