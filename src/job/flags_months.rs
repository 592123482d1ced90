//! The `flags` table is one Parquet file a month of valid times, under the
//! forecast table's Hive partitions:
//!
//! ```text
//! DIR/flags/year=2020/month=01/flags_202001.parquet
//! ```
//!
//! so a run that flags one new step rewrites that month's file, not the
//! table's whole history (one file over 10 years of steps: 0.6 GB peak for
//! a run forecasting one step), and a dashboard or query that filters on
//! `year`/`month` opens only those months. Each file's footer identifies
//! the SQL and the steps its rows flag, and counts its tiles
//! ([`super::flags_refresh`]).
//!
//! Earlier versions wrote the table as one file, `DIR/flags/flags.parquet`
//! (the *legacy* file here); the first run that flags by month splits its
//! rows into the months' files (where this SQL made them) and removes it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::store::step_name;

/// The name of the one-file flags table earlier runs wrote, in the flags
/// folder.
pub const LEGACY_FILE: &str = "flags.parquet";

/// The files the flags folder holds: the months with a file, and whether
/// the legacy one-file table is there too. Other files are not the job's.
#[derive(Debug, Default)]
pub struct Files {
    pub months: BTreeSet<String>,
    pub legacy: bool,
}

impl Files {
    /// Sorts paths below the flags folder (`/` separated).
    pub fn of<S: AsRef<str>>(relative: impl IntoIterator<Item = S>) -> Self {
        let mut files = Self::default();
        for path in relative {
            let path = path.as_ref();
            if path == LEGACY_FILE {
                files.legacy = true;
            } else if let Some(month) = month_of_file(path) {
                files.months.insert(month);
            }
        }
        files
    }
}

/// The Hive partition of valid time `t`: `year=YYYY/month=MM`, as the
/// forecast step's.
pub fn month_of(valid_time: i64) -> Result<String> {
    Ok(step_name(valid_time)?.1)
}

/// Valid times grouped by their month.
pub fn by_month(times: &BTreeSet<i64>) -> Result<BTreeMap<String, BTreeSet<i64>>> {
    let mut months: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for &t in times {
        months.entry(month_of(t)?).or_default().insert(t);
    }
    Ok(months)
}

/// The path of a month's file below the flags folder
/// (`year=2020/month=01/flags_202001.parquet`).
pub fn file_of(month: &str) -> String {
    let digits: String = month.chars().filter(char::is_ascii_digit).collect();
    format!("{month}/flags_{digits}.parquet")
}

/// The month whose file `relative` (a path below the flags folder, `/`
/// separated) is; `None` for any other file.
pub fn month_of_file(relative: &str) -> Option<String> {
    let (month, _) = relative.rsplit_once('/')?;
    let (year, month_number) = month.split_once('/')?;
    let year = year.strip_prefix("year=")?;
    let month_number = month_number.strip_prefix("month=")?;
    let well_formed = year.len() == 4
        && month_number.len() == 2
        && year
            .chars()
            .chain(month_number.chars())
            .all(|c| c.is_ascii_digit());
    (well_formed && file_of(month) == relative).then(|| month.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2020-01-31T18:00Z and 2020-02-01T00:00Z, in microseconds.
    const JAN_31_18: i64 = 1_580_493_600_000_000;
    const FEB_1_00: i64 = JAN_31_18 + 6 * 3_600_000_000;

    #[test]
    fn steps_fall_in_their_utc_month() {
        let months = by_month(&[FEB_1_00, JAN_31_18].into()).unwrap();
        let names: Vec<&str> = months.keys().map(String::as_str).collect();
        assert_eq!(names, ["year=2020/month=01", "year=2020/month=02"]);
        assert_eq!(months["year=2020/month=02"], [FEB_1_00].into());
    }

    #[test]
    fn a_months_file_names_its_month_and_only_it_parses_back() {
        let file = file_of("year=2020/month=01");
        assert_eq!(file, "year=2020/month=01/flags_202001.parquet");
        assert_eq!(month_of_file(&file).as_deref(), Some("year=2020/month=01"));
        for other in [
            LEGACY_FILE,
            "year=2020/month=01/flags_202002.parquet",
            "year=2020/month=01/.flags_202001.parquet.tmp-7",
            "year=2020/month=1/flags_20201.parquet",
            "year=20a0/month=01/flags_20a001.parquet",
            "x/year=2020/month=01/flags_202001.parquet",
        ] {
            assert_eq!(month_of_file(other), None, "{other}");
        }
    }
}
