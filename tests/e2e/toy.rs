//! `uqcast toy` through the binary: the JSON report's shape and sanity.

use crate::{stderr, stdout, uqcast};

/// Runs `uqcast toy ARGS --json`, which must succeed, and parses its report.
fn toy_report(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["toy"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = uqcast(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).expect("one JSON object")
}

#[test]
fn toy_au_reports_json() {
    let report = toy_report(&[
        "au",
        "--sigma2",
        "0.04",
        "--iterations",
        "300",
        "--m",
        "2",
        "--n",
        "40",
    ]);
    assert_eq!(report["experiment"], "au");
    let row = &report["rows"][0];
    assert_eq!(row["sigma2"], 0.04);
    let (au, eu) = (row["au"].as_f64().unwrap(), row["eu"].as_f64().unwrap());
    assert!(au > 0.0 && eu >= 0.0 && au.is_finite(), "{row}");
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn toy_rejects_bad_options() {
    let o = uqcast(&["toy", "gap", "--band", "2,1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("band"), "{}", stderr(&o));
    let o = uqcast(&["toy", "au", "--sampler", "euler"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects an unknown sampler");
    // More steps than the toy model's 100, refused before training.
    let o = uqcast(&["toy", "au", "--sampler", "ddim-500"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("toy option 'sampler': ddim-500 asks for 500 steps"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("iteration 1/"),
        "trained first: {}",
        stderr(&o)
    );
    let o = uqcast(&["toy", "eu", "--z-per-step", "0"]);
    assert_eq!(o.status.code(), Some(2), "an update needs at least one z");
    assert!(stderr(&o).contains("z-per-step"), "{}", stderr(&o));
    let o = uqcast(&["toy", "eu", "--batch-size", "0"]);
    assert_eq!(o.status.code(), Some(2), "an update needs at least one row");
    assert!(stderr(&o).contains("batch-size"), "{}", stderr(&o));
    // Each fails before training, naming the option and the value.
    for (option, value) in [
        ("z-init", "-0.5"),
        ("final-lr-fraction", "1.5"),
        ("m", "0"),
        ("n", "1"),
        // A mistyped count: 10⁸ members were taken, and sampled one by one.
        ("m", "100000000"),
        ("n", "102401"),
        ("iterations", "0"),
        ("epochs", "0"),
        ("lr", "nan"),
        ("anchor", "-1"),
        ("sigma2", "-0.01"),
        ("sizes", "100,0"),
    ] {
        let flag = format!("--{option}={value}");
        let mut args = vec!["toy", "eu", &flag];
        if !matches!(option, "iterations" | "epochs") {
            args.extend(["--iterations", "1"]);
        }
        let o = uqcast(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{flag}: {err}");
        assert!(!err.contains("iteration 1/"), "{flag} trained: {err}");
        let named = format!("toy option '{option}'");
        assert!(err.contains(&named), "{flag}: {err}");
    }
    // The toy trains on minibatches of 256 rows: 200 antithetic pairs do not fit.
    let o = uqcast(&["toy", "au", "--z-per-step", "200", "--iterations", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("z_per_step"), "{}", stderr(&o));
    // A learning rate that makes the loss NaN: stopped at the first loss
    // read (update 3 of 60), not trained to the end and sampled as NaN.
    let o = uqcast(&[
        "toy",
        "au",
        "--sigma2",
        "0.04",
        "--lr",
        "1e6",
        "--iterations",
        "60",
        "--m",
        "2",
        "--n",
        "4",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("train.lr: training diverged, the loss is NaN after update 3 of 60"),
        "{err}"
    );
    assert!(!err.contains("iteration 60/60"), "{err}");
}

/// `toy eu` defaults to M = 200 × N = 50 (EU is a variance over members),
/// 24,000 updates of 1,024 rows; `--m`, `--iterations`, `--epochs` and
/// `--batch-size` still override them, and `toy au` keeps 256 rows. Tiny
/// runs: only the report is checked.
#[test]
fn toy_eu_defaults_to_many_members_and_long_training() {
    let eu = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eu", "--sizes", "20", "--sampler", "ddim-2"];
        args.extend_from_slice(extra);
        toy_report(&args)
    };
    let report = eu(&["--iterations", "20"]);
    assert_eq!(
        (report["m"].as_u64(), report["n"].as_u64()),
        (Some(200), Some(50))
    );
    assert_eq!(report["iterations"], 20);
    assert_eq!(report["batch_size"], 1024);
    assert_eq!(report["rows"][0]["train_size"], 20);
    let report = eu(&["--m", "3", "--epochs", "2"]);
    assert_eq!(
        (report["m"].as_u64(), report["n"].as_u64()),
        (Some(3), Some(50))
    );
    // Two passes over 20 pairs in minibatches of 1,024: one update.
    assert_eq!(report["rows"][0]["iterations"], 1);
    // 100 passes in minibatches of 64: 32 updates.
    let report = eu(&["--m", "3", "--epochs", "100", "--batch-size", "64"]);
    assert_eq!(report["batch_size"], 64);
    assert_eq!(report["rows"][0]["iterations"], 32);
    let report = toy_report(&[
        "au",
        "--sigma2",
        "0.04",
        "--iterations",
        "2",
        "--m",
        "2",
        "--n",
        "4",
        "--sampler",
        "ddim-2",
    ]);
    assert_eq!(
        report["batch_size"], 256,
        "only eu trains on bigger minibatches"
    );
}
