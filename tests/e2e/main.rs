//! End-to-end tests: the real `uqcast` binary on real files.

#![allow(clippy::unwrap_used)]

mod default_pipeline;
mod errors;
mod pipeline;
mod s3;
mod sql;
mod toy;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `uqcast` with `args`.
pub fn uqcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .args(args)
        .output()
        .expect("run uqcast")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Synthesises `steps` steps on a small grid into `dir`; panics on failure.
pub fn synth(dir: &Path, steps: usize, encoding: &str, extra: &[&str]) {
    synth_seeded(dir, steps, encoding, 7, extra);
}

/// As [`synth`], with another seed: the same grid and times, other values.
pub fn synth_seeded(dir: &Path, steps: usize, encoding: &str, seed: u64, extra: &[&str]) {
    let (steps, seed) = (steps.to_string(), seed.to_string());
    let mut args = vec![
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--start",
        "2020-01-01T00:00Z",
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
