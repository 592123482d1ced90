//! `uqcast toy` through the binary: the JSON report's shape and sanity.

use crate::{stderr, stdout, uqcast};

#[test]
fn toy_au_reports_json() {
    let o = uqcast(&[
        "toy",
        "au",
        "--sigma2",
        "0.04",
        "--iterations",
        "300",
        "--m",
        "2",
        "--n",
        "40",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
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
}
