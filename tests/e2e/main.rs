//! End-to-end tests: the real `uqcast` binary on real files.

#![allow(clippy::unwrap_used)]

mod cluster;
mod default_pipeline;
mod demo;
mod dry_run;
mod errors;
mod eval;
mod flags;
mod parquet_readers;
mod pipeline;
mod pipeline_errors;
mod revisions;
mod s3;
mod sql;
mod step_filters;
mod toy;
mod train_pairs;
mod valid_time_months;

use std::path::Path;
use std::process::{Command, Output};

/// A port that was free a moment ago: bound, noted, released for a server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 20 s) until something accepts connections on `port`.
pub fn wait_until_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not start on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `uqcast` with `args`.
pub fn uqcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .args(args)
        .output()
        .expect("run uqcast")
}

/// `query` over `table` (`NAME=PATH`) as CSV; panics if the command fails.
pub fn sql_csv(table: &str, query: &str) -> String {
    let o = uqcast(&["sql", query, "--table", table, "--format", "csv"]);
    assert!(o.status.success(), "{query}: {}", stderr(&o));
    stdout(&o)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The value `EXPLAIN ANALYZE` printed for metric `name` of `operator`
/// (the first line naming it), as printed; panics if there is none.
pub fn plan_metric<'a>(plan: &'a str, operator: &str, name: &str) -> &'a str {
    let line = plan
        .lines()
        .find(|l| l.contains(&format!("{operator}:")))
        .unwrap_or_else(|| panic!("no {operator} in {plan}"));
    let metrics = line.split("metrics=[").nth(1).unwrap_or("");
    let metrics = metrics.split(']').next().unwrap_or("");
    metrics
        .split(", ")
        .find_map(|m| m.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{operator} has no metric {name}: {line}"))
}

/// Seconds in a duration as DataFusion prints one (`2.5s`, `3.10ms`,
/// `12.00µs`, `7ns`); panics on anything else, `NOT RECORDED` included.
pub fn printed_seconds(duration: &str) -> f64 {
    let (number, scale) = [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)]
        .into_iter()
        .find_map(|(unit, scale)| Some((duration.strip_suffix(unit)?, scale)))
        .unwrap_or_else(|| panic!("not a duration: {duration}"));
    number.parse::<f64>().unwrap() * scale
}

/// Synthesises `steps` steps on a small grid into `dir`; panics on failure.
pub fn synth(dir: &Path, steps: usize, encoding: &str, extra: &[&str]) {
    synth_seeded(dir, steps, encoding, 7, extra);
}

/// As [`synth`], with another seed: the same grid and times, other values.
pub fn synth_seeded(dir: &Path, steps: usize, encoding: &str, seed: u64, extra: &[&str]) {
    synth_from(dir, "2020-01-01T00:00Z", steps, encoding, seed, extra);
}

/// As [`synth_seeded`], from the time `start` on.
pub fn synth_from(
    dir: &Path,
    start: &str,
    steps: usize,
    encoding: &str,
    seed: u64,
    extra: &[&str],
) {
    let (steps, seed) = (steps.to_string(), seed.to_string());
    let mut args = vec![
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--start",
        start,
        "--steps",
        &steps,
        "--res",
        "2",
        "--encoding",
        encoding,
        "--seed",
        &seed,
    ];
    args.extend_from_slice(extra);
    let o = uqcast(&args);
    assert!(o.status.success(), "synth failed: {}", stderr(&o));
}
