//! The shipped default pipeline and model on 0.25° input, as the Climate
//! Data Store serves it: its source SQL coarsens to the model's 1° grid, so
//! either CDS encoding at either resolution runs with `--input` alone.

use std::path::Path;

use crate::{stderr, stdout, uqcast};

const DEFAULT_PIPELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/era5_t2m_6h.toml");
/// The default model grid: lat 7..83 × lon 191..325 at 1°.
const MODEL_CELLS: u64 = 77 * 135;

fn sql_json(query: &str, tables: &[String]) -> serde_json::Value {
    let mut args = vec!["sql", query, "--format", "json"];
    for t in tables {
        args.extend(["--table", t.as_str()]);
    }
    let o = uqcast(&args);
    assert!(o.status.success(), "{query}: {}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

/// Two 6-hour steps at 0.25° on a box wider than the model's region.
fn quarter_degree(dir: &Path, encoding: &str) {
    let o = uqcast(&[
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--start",
        "2021-07-01T00:00Z",
        "--steps",
        "2",
        "--res",
        "0.25",
        "--bbox",
        "4,86,188,328",
        "--encoding",
        encoding,
        "--seed",
        "11",
    ]);
    assert!(o.status.success(), "synth: {}", stderr(&o));
}

#[test]
fn default_pipeline_runs_quarter_degree_files_in_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    for encoding in ["nc3", "nc4"] {
        let data = dir.path().join(encoding).join("data");
        let out = dir.path().join(encoding).join("out");
        quarter_degree(&data, encoding);
        let o = uqcast(&[
            "run",
            "--config",
            DEFAULT_PIPELINE,
            "--input",
            data.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{encoding}: {}", stderr(&o));

        let tables = [
            format!("f={}", out.join("forecast").display()),
            format!("era5={}", data.display()),
        ];
        // Every step forecast on exactly the model's 1° grid.
        let grid = sql_json(
            "SELECT count(*) AS n, count(DISTINCT init_time) AS steps,
                    min(latitude) AS south, max(latitude) AS north,
                    min(longitude) AS west, max(longitude) AS east,
                    sum(CASE WHEN latitude % 1 = 0 AND longitude % 1 = 0 THEN 1 ELSE 0 END) AS on_1deg
             FROM f",
            &tables,
        );
        assert_eq!(grid["n"], 2 * MODEL_CELLS, "{encoding}: {grid}");
        assert_eq!(grid["on_1deg"], 2 * MODEL_CELLS, "{encoding}: {grid}");
        assert_eq!(grid["steps"], 2, "{encoding}: {grid}");
        for (key, want) in [
            ("south", 7.0),
            ("north", 83.0),
            ("west", 191.0),
            ("east", 325.0),
        ] {
            assert_eq!(grid[key].as_f64(), Some(want), "{encoding} {key}: {grid}");
        }

        // The input passes through unchanged (int16 unpacking included), and
        // the forecast beats persistence against the next 0.25° step.
        let skill = sql_json(
            "SELECT count(*) AS matched,
                    max(abs(f.t2m - now.t2m)) AS passthrough_error,
                    sqrt(avg((f.t2m_mean - next.t2m) * (f.t2m_mean - next.t2m))) AS rmse,
                    sqrt(avg((f.t2m - next.t2m) * (f.t2m - next.t2m))) AS persistence
             FROM f
             JOIN era5 now ON now.valid_time = f.init_time
                 AND now.latitude = f.latitude AND now.longitude = f.longitude
             JOIN era5 next ON next.valid_time = f.valid_time
                 AND next.latitude = f.latitude AND next.longitude = f.longitude",
            &tables,
        );
        assert_eq!(skill["matched"], MODEL_CELLS, "{encoding}: {skill}");
        assert_eq!(
            skill["passthrough_error"].as_f64(),
            Some(0.0),
            "{encoding}: {skill}"
        );
        let (rmse, persistence) = (
            skill["rmse"].as_f64().unwrap(),
            skill["persistence"].as_f64().unwrap(),
        );
        assert!(rmse < 0.6 * persistence, "{encoding}: {skill}");
        if encoding == "nc3" {
            shipped_queries_answer(&out, &data);
        }
    }
}

/// The query files in `queries/`, run as an analyst runs them over a run's
/// output and its input: every one answers, with figures that make sense.
fn shipped_queries_answer(out: &Path, data: &Path) {
    let run = |file: &str, tables: &[(&str, &Path)]| -> Vec<serde_json::Value> {
        let path = format!("{}/queries/{file}", env!("CARGO_MANIFEST_DIR"));
        let mut args = vec!["sql".to_string(), "--file".into(), path];
        for (name, location) in tables {
            args.extend(["--table".into(), format!("{name}={}", location.display())]);
        }
        args.extend(["--format".into(), "json".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = uqcast(&args);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (forecast, flags) = (out.join("forecast"), out.join("flags"));

    // Two steps forecast; the analysis holds the valid time of the first.
    let scores = run(
        "score_against_era5.sql",
        &[("forecast", &forecast), ("era5", data)],
    );
    assert_eq!(scores.len(), 1, "{scores:?}");
    let score = &scores[0];
    assert_eq!(score["cells"], MODEL_CELLS, "{score}");
    let figure = |key: &str| score[key].as_f64().unwrap();
    assert!(
        figure("rmse_k") < 0.6 * figure("persistence_rmse_k"),
        "{score}"
    );
    assert!(
        figure("crps_k") > 0.0 && figure("crps_k") < figure("rmse_k"),
        "{score}"
    );
    assert!((0.5..2.0).contains(&figure("spread_skill")), "{score}");

    let regions = run("high_eu_regions.sql", &[("flags", &flags)]);
    assert!(!regions.is_empty() && regions.len() <= 20, "{regions:?}");
    assert!(
        regions[0]["flagged_steps"].as_u64().unwrap() >= 1,
        "{regions:?}"
    );
    assert_eq!(regions[0]["steps"], 2, "{regions:?}");

    // Two steps: neither can peak at three times the median of the two.
    let outliers = run("eu_outlier_steps.sql", &[("flags", &flags)]);
    assert!(outliers.is_empty(), "{outliers:?}");

    let months = run("uncertainty_by_month.sql", &[("forecast", &forecast)]);
    assert_eq!(months.len(), 1, "{months:?}");
    let month = &months[0];
    assert_eq!(
        (&month["year"], &month["month"]),
        (&"2021".into(), &"07".into()),
        "{month}"
    );
    assert_eq!(month["steps"], 2, "{month}");
    let share = month["eu_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{month}");
}
