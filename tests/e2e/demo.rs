//! `uqcast demo`, the README's first command: the embedded pipeline and
//! shipped model run end to end on synthetic data, find the hot disk pasted
//! into one input, and meet the science targets; run again, it is a no-op.

use std::path::Path;
use std::process::{Command, Output};

use crate::{stderr, stdout};

fn demo(out: &Path, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .args(["demo", "--out", out.to_str().unwrap()])
        .env("UQCAST_CACHE_DIR", cache)
        .output()
        .expect("run uqcast demo")
}

/// The tile, EU peak and ratio of the demo's OOD sentence: "EU peaks at
/// 0.345 K² (tile 45N 265E), 6.9× the highest …".
fn ood_peak(said: &str) -> (f64, f64, f64, f64) {
    let line = said
        .lines()
        .find(|l| l.contains("stands out in the forecast valid at 2020-01-03T18:00Z"))
        .unwrap_or_else(|| panic!("no OOD sentence in {said}"));
    let after = |key: &str| {
        line.split(key)
            .nth(1)
            .unwrap_or_else(|| panic!("{key}: {line}"))
    };
    let number = |s: &str, end: char| s.split(end).next().unwrap().trim().parse::<f64>().unwrap();
    let peak = number(after("EU peaks at "), 'K');
    let tile = after("(tile ");
    let lat = number(tile, 'N');
    let lon = number(tile.split("N ").nth(1).unwrap(), 'E');
    let ratio = number(after("), "), '×');
    (peak, lat, lon, ratio)
}

#[test]
fn demo_runs_the_embedded_job_finds_the_ood_disk_and_meets_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("demo"), dir.path().join("cache"));
    let o = demo(&out, &cache);
    assert!(o.status.success(), "demo: {}\n{}", stderr(&o), stdout(&o));
    let said = stdout(&o);
    assert!(said.contains("uqcast run: ok new_steps=12 "), "{said}");
    // The run itself warns of that step, as the shipped query finds it.
    assert!(said.contains(" eu_outliers=1 "), "{said}");
    let warned = stderr(&o);
    assert_eq!(warned.matches("warning: ").count(), 1, "{warned}");
    assert!(
        warned.contains("warning: forecast valid at 2020-01-03T18:00Z: EU peaks at ")
            && warned.contains(" K² (tile 45N 265E), "),
        "{warned}"
    );
    // The disk (6° around 45N 260E) is where EU peaks, far above every other step.
    let (peak, lat, lon, ratio) = ood_peak(&said);
    assert!(
        (40.0..=50.0).contains(&lat) && (250.0..=265.0).contains(&lon),
        "{said}"
    );
    assert!(
        peak > 0.1 && ratio > 3.0,
        "EU peak {peak} K², {ratio}× the others: {said}"
    );
    for target in [
        "(target ≥ 0.8: met)",
        "(target ≥ 0.9: met)",
        "vs persistence",
    ] {
        assert!(said.contains(target), "{target}: {said}");
    }
    assert!(!said.contains("not met"), "{said}");
    for map in ["t2m_20200102T1200.png", "t2m_20200103T1800_ood.png"] {
        let png = std::fs::read(out.join("maps").join(map)).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{map} is not a PNG");
    }
    let rows = crate::sql_csv(
        &format!("f={}", out.join("output/forecast").display()),
        "SELECT count(*) AS n, count(DISTINCT valid_time) AS steps FROM f",
    );
    assert_eq!(rows.trim(), format!("n,steps\n{},12", 12 * 77 * 135));
    // The shipped query for steps whose EU peaks far above the usual finds
    // that one step alone.
    let o = crate::uqcast(&[
        "sql",
        "--file",
        concat!(env!("CARGO_MANIFEST_DIR"), "/queries/eu_outlier_steps.sql"),
        "--table",
        &format!("flags={}", out.join("output/flags").display()),
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "eu_outlier_steps.sql: {}", stderr(&o));
    let found = stdout(&o);
    let outliers: Vec<&str> = found.lines().skip(1).collect();
    assert_eq!(outliers.len(), 1, "{outliers:?}");
    assert!(
        outliers[0].starts_with("2020-01-03T18:00:00Z,45.0,265.0,"),
        "{outliers:?}"
    );

    // The README's command twice: the same data, nothing new to forecast.
    let again = demo(&out, &cache);
    assert!(again.status.success(), "again: {}", stderr(&again));
    let said_again = stdout(&again);
    assert!(
        said_again.contains("new_steps=0 existing_steps=12 "),
        "{said_again}"
    );
    assert!(
        said_again.contains(" eu_outliers=0 "),
        "nothing written, nothing warned of"
    );
    assert_eq!(
        ood_peak(&said_again),
        ood_peak(&said),
        "the same forecast, read again"
    );

    // The pipeline's `flags.eu_outliers` decides what a run warns of: at
    // 1.5× the median step's peak, among two steps forecast again after
    // their files were removed, those the flags table puts at 1.5× or more.
    let flags = format!("flags={}", out.join("output/flags").display());
    let peaks = crate::sql_csv(
        &flags,
        "SELECT valid_time, max(max_eu) AS peak FROM flags GROUP BY 1 ORDER BY 1",
    );
    let peaks: Vec<(String, f64)> = peaks
        .lines()
        .skip(1)
        .map(|l| {
            let (time, peak) = l.split_once(',').unwrap();
            (time.to_string(), peak.parse().unwrap())
        })
        .collect();
    let mut sorted: Vec<f64> = peaks.iter().map(|p| p.1).collect();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[5] + sorted[6]) / 2.0;
    // The hot disk's step and the highest of the others.
    let ood = "2020-01-03T18:00:00Z";
    let other = peaks
        .iter()
        .filter(|p| p.0 != ood)
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let other = other.unwrap();
    let written = [ood, other.0.as_str()];
    let expected = peaks
        .iter()
        .filter(|p| written.contains(&p.0.as_str()) && p.1 >= 1.5 * median)
        .count();
    assert_eq!(
        expected, 2,
        "the highest other step is below 1.5×: {peaks:?}"
    );
    let pipeline = out.join("pipelines/era5_t2m_6h.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let shipped = "eu_outliers = { times_median = 3.0, min_steps = 8 }";
    assert!(text.contains(shipped));
    let text = text.replace(shipped, "eu_outliers = { times_median = 1.5 }");
    std::fs::write(&pipeline, text).unwrap();
    let month = out.join("output/forecast/year=2020/month=01");
    for time in written {
        let name = time.replace(['-', ':'], "").replace("00Z", "");
        std::fs::remove_file(month.join(format!("t2m_{name}.parquet"))).unwrap();
    }
    let o = crate::uqcast(&[
        "run",
        "--config",
        pipeline.to_str().unwrap(),
        "--input",
        out.join("era5").to_str().unwrap(),
        "--output",
        out.join("output").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("new_steps=2 existing_steps=10 ")
            && stdout(&o).contains(" eu_outliers=2 "),
        "{}",
        stdout(&o)
    );
    assert_eq!(stderr(&o).matches("warning: forecast valid at").count(), 2);
}
