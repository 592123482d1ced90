//! A filter on a function of `valid_time` alone (`date_trunc`, `EXTRACT`,
//! `date_part`) makes a NetCDF scan read only the steps it keeps
//! (`operators/netcdf/src/step_filters.rs`), with the rows a scan of every
//! step gives.

use crate::{sql_csv, synth_from};

const SELECT: &str = "SELECT valid_time, count(*) AS n, min(t2m) AS lo, max(t2m) AS hi FROM era5";
const BY_STEP: &str = "GROUP BY valid_time ORDER BY valid_time";

/// Whether a step's row (its valid time first) is one a filter keeps.
type Keeps = fn(&str) -> bool;

/// Each filter, and which of the steps (2020-01-31T00:00Z to
/// 2020-02-01T18:00Z, six hours apart) it keeps.
const FILTERS: [(&str, Keeps); 4] = [
    ("EXTRACT(MONTH FROM valid_time) = 2", |t| {
        t.starts_with("2020-02")
    }),
    (
        "date_trunc('day', valid_time) = TIMESTAMP '2020-01-31T00:00:00Z'",
        |t| t.starts_with("2020-01-31"),
    ),
    ("date_part('hour', valid_time) IN (6, 18)", |t| {
        t.contains("T06:") || t.contains("T18:")
    }),
    (
        "date_part('hour', valid_time) = 12 AND date_part('day', valid_time) = 1",
        |t| t.starts_with("2020-02-01T12:"),
    ),
];

#[test]
fn filters_on_a_function_of_valid_time_read_only_the_steps_they_keep() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A file a day: the filters keep steps of one file, of the other, and
    // of both.
    synth_from(
        &data,
        "2020-01-31T00:00Z",
        8,
        "nc3",
        11,
        &["--files-per-day"],
    );
    let era5 = format!("era5={}", data.display());

    // Every step's rows, read without a filter: what each filter's answer
    // is checked against.
    let all = sql_csv(&era5, &format!("{SELECT} {BY_STEP}"));
    let mut lines = all.lines();
    let header = lines.next().unwrap();
    let steps: Vec<&str> = lines.collect();
    assert_eq!(steps.len(), 8, "{all}");

    for (filter, keeps) in FILTERS {
        let query = format!("{SELECT} WHERE {filter} {BY_STEP}");
        let kept: Vec<&str> = steps.iter().copied().filter(|row| keeps(row)).collect();
        assert!(!kept.is_empty() && kept.len() < steps.len(), "{filter}");
        let expected = std::iter::once(header)
            .chain(kept.iter().copied())
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        assert_eq!(sql_csv(&era5, &query), expected, "{filter}");
        // The scan reads only those steps, and applies the filter itself.
        let plan = sql_csv(&era5, &format!("EXPLAIN {query}"));
        let read = format!("steps={}/{}", kept.len(), steps.len());
        assert!(plan.contains(&read), "{filter}: not {read} in {plan}");
        assert!(!plan.contains("FilterExec"), "{filter}: {plan}");
    }
}
