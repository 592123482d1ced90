//! `uqcast run --dry-run` through the real binary: it says which steps a
//! run would forecast and flag, the run then does just that, and the dry
//! run itself writes nothing.

use std::path::Path;
use std::time::SystemTime;

use crate::errors::fails_with;
use crate::pipeline::{run_over, run_over_unchecked, trained, walk_all};
use crate::{stderr, stdout};

/// Every file below `out` with its modification time, in path order.
fn listing(out: &Path) -> Vec<(String, SystemTime)> {
    let mut files: Vec<(String, SystemTime)> = walk_all(out)
        .into_iter()
        .map(|p| {
            let at = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p.display().to_string(), at)
        })
        .collect();
    files.sort();
    files
}

/// The lines of a dry run's stderr that name steps.
fn said_steps(o: &std::process::Output) -> Vec<String> {
    let err = stderr(o);
    err.lines()
        .filter(|l| l.starts_with("would forecast"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_dry_run_says_what_the_run_then_does_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 2);
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let dry = |extra: &[&str]| run_over(&config, &data, &out, &[&["--dry-run"], extra].concat());

    // A first run: every step, one month of flags; nothing is made.
    let o = dry(&[]);
    assert!(
        stdout(&o).starts_with(
            "uqcast run --dry-run: ok would_forecast=12 would_revise=0 existing_steps=0 \
             flag_months=1 flag_months_removed=0 device=cpu output="
        ),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        said_steps(&o),
        ["would forecast: valid 2020-01-01T06:00Z … 2020-01-04T00:00Z, every 6 h (12 steps)"]
    );
    assert!(!out.exists(), "a dry run made the output folder");
    let o = run_over(&config, &data, &out, &[]);
    assert!(
        stdout(&o).starts_with("uqcast run: ok new_steps=12 existing_steps=0"),
        "{}",
        stdout(&o)
    );

    // Nothing new: nothing to do, and no file of the output touched.
    let before = listing(&out);
    let o = dry(&[]);
    assert!(
        stdout(&o).starts_with(
            "uqcast run --dry-run: ok would_forecast=0 would_revise=0 existing_steps=12 \
             flag_months=0 flag_months_removed=0"
        ),
        "{}",
        stdout(&o)
    );
    assert!(said_steps(&o).is_empty(), "{}", stderr(&o));
    assert_eq!(listing(&out), before, "a dry run wrote into the output");

    // Two steps lost: those two, each on its own line (a day apart in a
    // 6-hourly table), their month's flags made again; --since narrows as
    // it narrows the run (initial times).
    let month = out.join("forecast/year=2020/month=01");
    for step in ["20200101T1800", "20200102T1800"] {
        std::fs::remove_file(month.join(format!("t2m_{step}.parquet"))).unwrap();
    }
    let o = dry(&[]);
    assert!(
        stdout(&o).contains(
            "would_forecast=2 would_revise=0 existing_steps=10 flag_months=1 flag_months_removed=0"
        ),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        said_steps(&o),
        [
            "would forecast: valid 2020-01-01T18:00Z",
            "would forecast: valid 2020-01-02T18:00Z"
        ]
    );
    let o = dry(&["--since", "2020-01-02T00:00Z"]);
    assert!(stdout(&o).contains("would_forecast=1 "), "{}", stdout(&o));

    // A source query that drops a step by its time: its steps are not the
    // input's, and are found by running it.
    let source = dir.path().join("source.sql");
    let query = std::fs::read_to_string(&source).unwrap();
    std::fs::write(
        &source,
        format!("{query} WHERE valid_time <> to_timestamp('2020-01-01T12:00:00Z')"),
    )
    .unwrap();
    let o = dry(&[]);
    assert_eq!(
        said_steps(&o),
        ["would forecast: valid 2020-01-02T18:00Z"],
        "{}",
        stderr(&o)
    );
    std::fs::write(&source, query).unwrap();

    // A run holds the output: the dry run still reads it; a run is refused.
    let lock = std::fs::File::open(out.join(".uqcast-run.lock")).unwrap();
    lock.lock().unwrap();
    let o = dry(&[]);
    assert!(stdout(&o).contains("would_forecast=2 "), "{}", stdout(&o));
    let o = run_over_unchecked(&config, &data, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another uqcast run"), "{}", stderr(&o));
    drop(lock);

    // The run does what the dry run said.
    let o = run_over(&config, &data, &out, &[]);
    assert!(
        stdout(&o).starts_with("uqcast run: ok new_steps=2 existing_steps=10 revised_steps=0"),
        "{}",
        stdout(&o)
    );
    let mut forecast: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("forecast "))
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    // Written as each step's sampling ends, in no fixed order.
    forecast.sort();
    assert_eq!(
        forecast,
        ["t2m_20200101T1800.parquet", "t2m_20200102T1800.parquet"]
    );

    // Settings the table was not written with: the run's own error.
    let other = std::fs::read_to_string(&config)
        .unwrap()
        .replace("members = 3", "members = 4");
    std::fs::write(&config, other).unwrap();
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--input",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--dry-run",
    ];
    fails_with(&args, &["members = 3", "this run uses 4"]);
}
