//! A query by `valid_time` over a forecast table opens only the files of
//! the months it names (`src/session/step_months.rs`), and only where the
//! table's folders say which month a file holds.

use std::path::Path;

use crate::{sql_csv, synth_from, uqcast};

/// Steps from 2020-01-31T12:00Z, six hours apart.
const STEPS: [(&str, &str); 4] = [
    ("2020-01-31T12:00:00Z", "t2m_20200131T1200"),
    ("2020-01-31T18:00:00Z", "t2m_20200131T1800"),
    ("2020-02-01T00:00:00Z", "t2m_20200201T0000"),
    ("2020-02-01T06:00:00Z", "t2m_20200201T0600"),
];

const FEBRUARY: &str = "SELECT valid_time, count(*) AS n, min(t2m) AS lo, max(t2m) AS hi FROM f \
     WHERE valid_time >= TIMESTAMP '2020-02-01T00:00:00Z' \
     GROUP BY valid_time ORDER BY valid_time";
const JANUARY: &str = "SELECT valid_time, count(*) AS n, min(t2m) AS lo, max(t2m) AS hi FROM f \
     WHERE valid_time < TIMESTAMP '2020-02-01T00:00:00Z' \
     GROUP BY valid_time ORDER BY valid_time";

/// Filters on a function of `valid_time` that name a month, each with
/// the month's number.
const BY_FUNCTIONS: [(&str, &str); 4] = [
    (
        "date_trunc('month', valid_time) = TIMESTAMP '2020-02-01T00:00:00Z'",
        "02",
    ),
    (
        "date_trunc('day', valid_time) < TIMESTAMP '2020-02-01T00:00:00Z'",
        "01",
    ),
    ("EXTRACT(MONTH FROM valid_time) = 1", "01"),
    (
        "date_part('year', valid_time) = 2020 AND date_part('month', valid_time) IN (2, 3)",
        "02",
    ),
];

/// Writes each step of the `era5` table at `data` to its file below
/// `table`, in its month's folder, as `uqcast run` lays a forecast out.
fn write_steps(data: &Path, table: &Path) {
    let era5 = format!("era5={}", data.display());
    for (time, name) in STEPS {
        let month = &time[5..7];
        let folder = table.join(format!("year=2020/month={month}"));
        std::fs::create_dir_all(&folder).unwrap();
        let file = folder.join(format!("{name}.parquet"));
        let query = format!("SELECT * FROM era5 WHERE valid_time = TIMESTAMP '{time}'");
        let o = uqcast(&[
            "sql",
            &query,
            "--table",
            &era5,
            "--output",
            file.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", crate::stderr(&o));
    }
}

/// The file names `EXPLAIN` of `query` over `table` says the scan opens.
fn files_scanned(table: &str, query: &str) -> Vec<String> {
    let plan = sql_csv(table, &format!("EXPLAIN {query}"));
    let groups = plan
        .split("file_groups={")
        .nth(1)
        .unwrap_or_else(|| panic!("no file groups in {plan}"));
    let groups = groups.split("]]}").next().unwrap();
    let mut names: Vec<String> = groups
        .split(['[', ']', ',', ' '])
        .filter(|s| s.ends_with(".parquet"))
        .map(|s| s.rsplit("forecast/").next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_query_by_valid_time_opens_only_its_months_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth_from(&data, "2020-01-31T12:00Z", STEPS.len(), "nc4", 7, &[]);
    let table = dir.path().join("forecast");
    write_steps(&data, &table);
    let era5 = format!("f={}", data.display());
    let f = format!("f={}", table.display());

    // The rows are the source's, and only the month's files are opened.
    let by_functions = BY_FUNCTIONS.map(|(filter, month)| {
        let query = format!(
            "SELECT valid_time, count(*) AS n, min(t2m) AS lo, max(t2m) AS hi FROM f \
             WHERE {filter} GROUP BY valid_time ORDER BY valid_time"
        );
        (query, month)
    });
    let by_range = [(FEBRUARY, "02"), (JANUARY, "01")].map(|(q, m)| (q.to_string(), m));
    for (query, month) in by_range.iter().chain(&by_functions) {
        let (query, month) = (query.as_str(), *month);
        let expected = sql_csv(&era5, query);
        assert_eq!(expected.lines().count(), 3, "{expected}");
        assert_eq!(sql_csv(&f, query), expected, "{query}");
        let opened = files_scanned(&f, query);
        let of_month = STEPS
            .iter()
            .filter(|(time, _)| &time[5..7] == month)
            .map(|(_, name)| format!("year=2020/month={month}/{name}.parquet"))
            .collect::<Vec<_>>();
        assert_eq!(opened, of_month, "{query}");
    }

    // A step file in another month's folder, then a file not named as a
    // step: the folders no longer say what a file holds, so every file is
    // opened and February's rows are all found.
    let expected = sql_csv(&era5, FEBRUARY);
    let february = table.join("year=2020/month=02/t2m_20200201T0600.parquet");
    for misplaced in ["t2m_20200201T0600.parquet", "part-0.parquet"] {
        let moved = table.join("year=2020/month=01").join(misplaced);
        std::fs::rename(&february, &moved).unwrap();
        assert_eq!(sql_csv(&f, FEBRUARY), expected, "{misplaced}");
        assert_eq!(
            files_scanned(&f, FEBRUARY).len(),
            STEPS.len(),
            "{misplaced}"
        );
        std::fs::rename(&moved, &february).unwrap();
    }
    assert_eq!(files_scanned(&f, FEBRUARY).len(), 2);
}
