//! The forecast pipeline through the real binary: train, run, kill and
//! resume, flags, the SQL table function, plots, and its error paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::errors::fails_with;
use crate::{stderr, stdout, synth, synth_seeded, uqcast};

/// A small pipeline: the whole (small) grid, a tiny cell model, slow enough
/// sampling (`samples`) that a run can be killed between steps.
pub(crate) fn write_pipeline(dir: &Path, samples: usize, extra_source: &str) -> PathBuf {
    std::fs::write(
        dir.join("source.sql"),
        format!("SELECT valid_time, latitude, longitude, t2m FROM era5 {extra_source}"),
    )
    .unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/flag_high_eu.sql"),
        dir.join("flags.sql"),
    )
    .unwrap();
    let toml = format!(
        r#"name = "test"
[source]
path = "data"
query = "source.sql"
[model]
checkpoint = "model/m.safetensors"
lead_hours = 6
[train]
iterations = 150
batch_size = 256
lr = 3e-3
weight_decay = 0.0
seed = 0
patch = 3
hidden = [16, 16]
time_dim = 8
activation = "relu"
z_dim = 4
hyper_hidden = [8]
anchor = 0.01
diffusion_steps = 50
[inference]
members = 3
samples = {samples}
sampler = "ddpm"
seed = 0
[output]
dir = "out"
[flags]
sql = "flags.sql"
tile_degrees = 10.0
eu_threshold = {{ percentile = 0.9 }}
min_fraction = 0.3
"#
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Data (12 steps on a 2° grid, an OOD disk) and a trained model.
pub(crate) fn trained(dir: &Path, samples: usize) -> PathBuf {
    synth(
        &dir.join("data"),
        12,
        "nc4",
        &["--ood", "disk:2020-01-02T12:00Z,45,260,8,30"],
    );
    let config = write_pipeline(dir, samples, "");
    let o = uqcast(&["train", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    assert!(stdout(&o).contains("11 pairs"), "{}", stdout(&o));
    assert!(dir.join("model/m.safetensors").is_file());
    assert!(dir.join("model/m.json").is_file());
    config
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walk_all(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    out
}

/// The one row a query over `table` (`NAME=PATH`) returns, as JSON.
fn sql_row(table: &str, query: &str) -> serde_json::Value {
    let o = uqcast(&["sql", query, "--table", table, "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

/// The forecast table's rows as CSV, in a fixed order.
pub(crate) fn forecast_csv(out: &Path) -> String {
    let table = format!("f={}", out.join("forecast").display());
    let o = uqcast(&[
        "sql",
        "SELECT * FROM f ORDER BY valid_time, latitude, longitude",
        "--table",
        &table,
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

fn run(config: &Path, output: &Path) -> std::process::Output {
    uqcast(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ])
}

#[test]
fn killed_run_resumes_to_the_same_table_and_reruns_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 16);

    // Uninterrupted reference run.
    let whole = dir.path().join("whole");
    let o = run(&config, &whole);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stdout(&o);
    assert!(
        summary.starts_with("uqcast run: ok new_steps=12 existing_steps=0"),
        "{summary}"
    );
    // The device it forecast on (tests build without `cuda`).
    assert!(summary.contains(" device=cpu output="), "{summary}");
    assert_eq!(parquet_files(&whole.join("forecast")).len(), 12);
    assert!(whole.join("flags/flags.parquet").is_file());

    // Kill a second run once two steps are written.
    let resumed = dir.path().join("resumed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--output",
            resumed.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while parquet_files(&resumed.join("forecast")).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no steps written"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = parquet_files(&resumed.join("forecast")).len();
    assert!(
        (2..12).contains(&partial),
        "kill landed after {partial} steps"
    );

    let o = run(&config, &resumed);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stdout(&o);
    assert!(
        summary.contains(&format!(
            "new_steps={} existing_steps={partial}",
            12 - partial
        )),
        "{summary}"
    );
    assert_eq!(
        forecast_csv(&resumed),
        forecast_csv(&whole),
        "resumed table differs"
    );
    let leftovers: Vec<_> = walk_all(&resumed)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

    // Nothing new: nothing written.
    let before: Vec<_> = parquet_files(&resumed)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    let o = run(&config, &resumed);
    assert!(
        stdout(&o).contains("new_steps=0 existing_steps=12"),
        "{}",
        stdout(&o)
    );
    let after: Vec<_> = parquet_files(&resumed)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    assert_eq!(before, after, "a run with nothing new rewrote files");

    // A different sampling setting may not extend this table.
    let other = std::fs::read_to_string(&config)
        .unwrap()
        .replace("members = 3", "members = 4");
    std::fs::write(&config, other).unwrap();
    fails_with(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--output",
            resumed.to_str().unwrap(),
        ],
        &["members = 3", "this run uses 4"],
    );
}

/// Two synthetic steps into `dir` with every value rewritten in °C, still
/// labelled kelvin: found wrong only when read. Returns the file.
pub(crate) fn synth_in_celsius(dir: &Path) -> PathBuf {
    synth(dir, 2, "nc4", &[]);
    // The data file, not the truth maps in truth/.
    let nc = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "nc"))
        .unwrap();
    let mut file = netcdf::append(&nc).unwrap();
    let mut t2m = file.variable_mut("t2m").unwrap();
    let kelvin: Vec<f32> = t2m.get_values(..).unwrap();
    let degrees: Vec<f32> = kelvin.iter().map(|k| k - 273.15).collect();
    t2m.put_values(&degrees, ..).unwrap();
    file.close().unwrap();
    nc
}

pub(crate) fn walk_all(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn forecast_flags_sql_function_plot_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 4);
    let out = dir.path().join("out");
    let o = run(&config, &out);
    assert!(o.status.success(), "{}", stderr(&o));

    // The forecast contract: columns, units, valid time = init + 6 h, AU, EU ≥ 0.
    let table = format!("f={}", out.join("forecast").display());
    let row = sql_row(&table, "SELECT count(*) AS n, count(DISTINCT valid_time) AS steps,
                min(valid_time - init_time) = INTERVAL '6 hours' AND max(valid_time - init_time) = INTERVAL '6 hours' AS lead_ok,
                min(t2m_au) >= 0 AND min(t2m_eu) >= 0 AS variances_ok,
                max(abs(t2m_mean - t2m)) < 30 AS mean_plausible
         FROM f");
    // 2° grid over 7..83 × 191..325: 39 × 68 cells.
    assert_eq!(row["n"], 12 * 39 * 68, "{row}");
    assert_eq!(row["steps"], 12);
    assert_eq!(row["lead_ok"], true, "{row}");
    assert_eq!(row["variances_ok"], true, "{row}");
    assert_eq!(row["mean_plausible"], true, "{row}");

    // The flags contract.
    let flags = format!("g={}", out.join("flags").display());
    let row = sql_row(&flags, "SELECT * FROM g ORDER BY valid_time LIMIT 1");
    let contract: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/flags.json"))
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = contract["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let got: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(got, sorted, "{row}");
    assert!(
        row["flagged"].is_boolean() && row["cells"].as_u64().unwrap() > 0,
        "{row}"
    );

    // The run's output folder itself is not one table: DataFusion would
    // skip its non-partition subfolders and report no files at all.
    let whole = format!("w={}", out.display());
    fails_with(
        &["sql", "SELECT count(*) FROM w", "--table", &whole],
        &[
            "read only when named key=value",
            &out.join("flags").display().to_string(),
            &out.join("forecast").display().to_string(),
        ],
    );

    // The same forecast from SQL, with the operator's metrics.
    let era5 = format!("era5={}", dir.path().join("data").display());
    let model = dir.path().join("model/m.safetensors");
    let q = format!(
        "EXPLAIN ANALYZE SELECT count(*) FROM hyperdm_forecast('{}', 'SELECT * FROM era5 WHERE valid_time < ''2020-01-01T12:00:00Z''', 2, 2, 'ddim-5', 0)",
        model.display()
    );
    let o = uqcast(&["sql", &q, "--table", &era5]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    assert!(
        plan.contains("HyperdmExec") && plan.contains("steps_forecast=2"),
        "{plan}"
    );
    // One sample per weight draw leaves AU undefined: refused at planning.
    let q = format!(
        "SELECT count(*) FROM hyperdm_forecast('{}', 'SELECT * FROM era5', 3, 1)",
        model.display()
    );
    fails_with(
        &["sql", &q, "--table", &era5],
        &["hyperdm_forecast", "samples ≥ 2 (for AU)"],
    );
    // A fractional count is not rounded down, more samples than a pass holds
    // are refused, and a sampler longer than the model's 50 diffusion steps
    // is refused naming the model.
    for (args, needles) in [
        ("2.5, 2", vec!["hyperdm_forecast", "members", "2.5"]),
        (
            "2, 1000000000",
            vec!["hyperdm_forecast", "samples 1000000000 is above the 102400"],
        ),
        (
            "2, 2, 'ddim-80'",
            vec![
                "hyperdm_forecast",
                "sampler",
                "ddim-80",
                "trained with 50",
                "m.safetensors",
            ],
        ),
    ] {
        let q = format!(
            "SELECT count(*) FROM hyperdm_forecast('{}', 'SELECT * FROM era5', {args})",
            model.display()
        );
        fails_with(&["sql", &q, "--table", &era5], &needles);
    }

    // Maps, into a directory that does not exist yet.
    fn plot<'a>(input: &'a Path, time: &'a str, file: &'a Path) -> [&'a str; 7] {
        let (input, file) = (input.to_str().unwrap(), file.to_str().unwrap());
        ["plot", "--input", input, "--time", time, "--out", file]
    }
    let png = dir.path().join("maps/map.png");
    let o = uqcast(&plot(&out, "2020-01-02T18:00Z", &png));
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    // A time the table does not hold says which it does, and a failed plot
    // makes no folder; the table's own folder given as --input is named.
    let unmade = dir.path().join("unmade/map.png");
    fails_with(
        &plot(&out, "2021-01-01T00:00Z", &unmade),
        &[
            "no forecast valid at 2021-01-01T00:00Z",
            "the table holds 12 valid times from 2020-01-01T06:00Z to 2020-01-04T00:00Z",
        ],
    );
    assert!(!unmade.parent().unwrap().exists());
    fails_with(
        &plot(&out.join("forecast"), "2020-01-02T18:00Z", &png),
        &["the folder holding forecast/", out.to_str().unwrap()],
    );
    // A file name whose extension picks no image format fails before any work.
    let txt = dir.path().join("map.txt");
    fails_with(
        &plot(&out, "2020-01-02T18:00Z", &txt),
        &["map.txt", "--out", ".png"],
    );
    assert!(!txt.exists());

    // The science report runs on it (numbers of a 150-update model are not judged here).
    let data = dir.path().join("data");
    let eval = |option: &str| {
        let (out, data) = (out.to_str().unwrap(), data.to_str().unwrap());
        uqcast(&["eval", "--forecast", out, "--data", data, option])
    };
    let o = eval("--json");
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["forecast_steps"], 12, "{r}");
    assert!(r["ood_cells"].as_u64().unwrap() > 0, "{r}");
    let auroc = r["eu_auroc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auroc), "{r}");
    // As a gate for a scheduled job: the report, then exit 1 naming each
    // target this short-trained model misses (worked out here from the JSON).
    let field = |k: &str| r[k].as_f64().unwrap();
    let missed: Vec<&str> = [
        (field("au_correlation") < 0.8, "AU correlation"),
        (auroc < 0.9, "EU AUROC"),
        (field("rmse_mean") >= field("rmse_persistence"), "RMSE"),
    ]
    .into_iter()
    .filter_map(|(miss, name)| miss.then_some(name))
    .collect();
    assert!(!missed.is_empty(), "150 updates met every target: {r}");
    let o = eval("--require-targets");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(stdout(&o).contains("NOT met"), "{}", stdout(&o));
    assert!(err.contains("--require-targets: not met: "), "{err}");
    for name in ["AU correlation", "EU AUROC", "RMSE"] {
        assert_eq!(err.contains(name), missed.contains(&name), "{name}: {err}");
    }

    // Skill in one SQL query (forecast Parquet joined with era5 NetCDF)
    // equals the library's scores of the same rows.
    let join = "FROM f JOIN era5 e ON e.valid_time = f.valid_time AND e.latitude = f.latitude AND e.longitude = f.longitude";
    let q = format!(
        "SELECT weighted_rmse(f.t2m_mean, e.t2m, lat_weight(f.latitude)) AS wrmse,
                avg(crps_gaussian(e.t2m, f.t2m_mean, f.t2m_au + f.t2m_eu)) AS crps,
                spread_skill(e.t2m, f.t2m_mean, f.t2m_au + f.t2m_eu, 3 * 4) AS ssr, count(*) AS n {join}"
    );
    let o = uqcast(&[
        "sql", &q, "--table", &table, "--table", &era5, "--format", "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sql: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let q = format!("SELECT f.latitude, f.t2m_mean, e.t2m, f.t2m_au + f.t2m_eu AS var {join}");
    let o = uqcast(&[
        "sql", &q, "--table", &table, "--table", &era5, "--format", "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Vec<f64>> = stdout(&o)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    // 11 forecasts have a truth step (the last valid time is past the data).
    assert_eq!(rows.len(), 11 * 39 * 68);
    assert_eq!(sql["n"], rows.len());
    let (mean, truth, lat): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        rows.iter().map(|r| r[1]).collect(),
        rows.iter().map(|r| r[2]).collect(),
        rows.iter().map(|r| r[0]).collect(),
    );
    let wrmse =
        uqcast_skill::weighted_rmse(&mean, &truth, &lat, uqcast_skill::AreaWeight::CosLatitude)
            .unwrap();
    let crps = rows
        .iter()
        .map(|r| uqcast_skill::crps_gaussian(r[2], r[1], r[3]).unwrap())
        .sum::<f64>()
        / rows.len() as f64;
    // The run draws M = 3 members × N = 4 samples per cell.
    let variance: Vec<f64> = rows.iter().map(|r| r[3]).collect();
    let ssr = uqcast_skill::spread_skill(&mean, &variance, &truth, 12).unwrap();
    // CSV round-trips f32 values through decimal text: 1e-5 relative.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    assert!(
        close(sql["wrmse"].as_f64().unwrap(), wrmse),
        "{sql} vs {wrmse}"
    );
    assert!(
        close(sql["crps"].as_f64().unwrap(), crps),
        "{sql} vs {crps}"
    );
    assert!(close(sql["ssr"].as_f64().unwrap(), ssr), "{sql} vs {ssr}");
}

/// `uqcast eval --config`: the three methods trained on a small synthetic
/// benchmark, one JSON line each with every score; a second run loads the
/// cached models and repeats the numbers (seeded sampling), and a changed
/// training setting retrains.
#[test]
fn eval_compares_hyperdm_with_the_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_pipeline(dir.path(), 3, "");
    let work = dir.path().join("eval");
    let args = |methods: &str| {
        vec![
            "eval".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--methods".into(),
            methods.into(),
            "--m".into(),
            "2".into(),
            "--n".into(),
            "4".into(),
            "--iterations".into(),
            "30".into(),
            "--train-steps".into(),
            "8".into(),
            "--test-steps".into(),
            "4".into(),
            "--work".into(),
            work.display().to_string(),
            "--json".into(),
        ]
    };
    let run_with = |a: Vec<String>| {
        let o = uqcast(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        let lines: Vec<serde_json::Value> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, stderr(&o))
    };
    let run_eval = |methods: &str| run_with(args(methods));
    let (rows, log) = run_eval("hyperdm,mc-dropout,ensemble,single");
    // The progress lines say what is sampled: 3 forecasts from 4 test steps.
    for line in [
        "hyperdm sampling 3 steps at M=2 N=4",
        "single sampling 3 steps at M=1 N=4",
    ] {
        assert!(log.contains(line), "{line} in {log}");
    }
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["hyperdm", "mc-dropout", "ensemble", "single"]);
    for r in &rows {
        let single = r["method"] == "single";
        for key in [
            "ssim",
            "psnr",
            "crps",
            "crps_member",
            "rmse",
            "spread_skill",
            "eu_auroc",
            "eu_auprc",
            "train_seconds",
            "sample_seconds",
        ] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            if single && key.starts_with("eu_") {
                // One network has no EU to score.
                assert!(r[key].is_null(), "{key} in {r}");
            } else {
                assert!(v.is_finite(), "{key} in {r}");
            }
        }
        if single {
            // One network, sampled N = 4 times: its one member is the mixture.
            assert_eq!(
                (r["members"].as_u64(), r["samples"].as_u64()),
                (Some(1), Some(4))
            );
            assert_eq!(r["crps_member"], r["crps"], "{r}");
        } else {
            assert!(
                (0.0..=1.0).contains(&r["eu_auroc"].as_f64().unwrap()),
                "{r}"
            );
        }
        assert!(r["ssim"].as_f64().unwrap() <= 1.0 && r["crps"].as_f64().unwrap() > 0.0);
        let ranks: Vec<f64> = r["rank_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ranks.len(), 10, "{r}");
        assert!((ranks.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{r}");
    }
    assert!(work.join("models/ensemble-m2-i30.safetensors").is_file());
    assert!(work.join("models/ensemble-m1-i30.safetensors").is_file());
    // The baselines run behind the same operator: `uqcast run` forecasts
    // with the kept MC-Dropout and ensemble models, both uncertainties
    // present, and the table records which method made it. The pipeline's
    // three members are more than the two-network ensemble holds: refused
    // before any output, naming the model and the field.
    let ensemble = work.join("models/ensemble-m2-i30.safetensors");
    let refused = dir.path().join("run-refused");
    fails_with(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--model",
            ensemble.to_str().unwrap(),
            "--output",
            refused.to_str().unwrap(),
        ],
        &[
            "ensemble-m2-i30.safetensors",
            "inference.members",
            "an ensemble of 2 networks gives at most 2 members, 3 were asked for",
        ],
    );
    assert!(!refused.exists());
    let q = format!(
        "SELECT count(*) FROM hyperdm_forecast('{}', 'SELECT * FROM era5', 3, 2)",
        ensemble.display()
    );
    let era5 = format!("era5={}", work.join("test-seed0-4steps").display());
    fails_with(
        &["sql", &q, "--table", &era5],
        &["hyperdm_forecast: members: an ensemble of 2 networks"],
    );
    let two_members = dir.path().join("two-members.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&two_members, text.replace("members = 3", "members = 2")).unwrap();
    for method in ["mc-dropout-m1", "ensemble-m2"] {
        let model = work.join(format!("models/{method}-i30.safetensors"));
        let out = dir.path().join(format!("run-{method}"));
        let o = uqcast(&[
            "run",
            "--config",
            two_members.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--input",
            work.join("test-seed0-4steps").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let table = format!("f={}", out.join("forecast").display());
        let row = sql_row(
            &table,
            "SELECT count(DISTINCT valid_time) AS steps, min(t2m_au) > 0 AS au, \
             max(t2m_eu) > 0 AS eu FROM f",
        );
        assert_eq!(
            (row["steps"].as_u64(), &row["au"], &row["eu"]),
            (Some(4), &serde_json::json!(true), &serde_json::json!(true)),
            "{method}: {row}"
        );
        let file = std::fs::File::open(&parquet_files(&out.join("forecast"))[0]).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        let stored = parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .find(|kv| kv.key == "uqcast.method")
            .and_then(|kv| kv.value.clone());
        let name = method.rsplit_once("-m").unwrap().0;
        // e.g. "mc-dropout(p=0.3)": the method with its setting.
        assert!(
            stored.as_deref().is_some_and(|m| m.starts_with(name)),
            "{method}: {stored:?}"
        );
    }
    // Without --json, from the kept models: the table ends with the paper's
    // claims, decided from the same (seeded) scores as the JSON lines.
    let mut text_args = args("hyperdm,mc-dropout,ensemble,single");
    assert_eq!(text_args.pop().as_deref(), Some("--json"));
    let o = uqcast(&text_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let crps = |i: usize| rows[i]["crps"].as_f64().unwrap();
    let verdict = |holds: bool| if holds { "holds" } else { "does not hold" };
    for claim in [
        format!(
            "  HyperDM ≥ deep ensemble on CRPS: {} (hyperdm {:.4} K, ensemble {:.4} K)\n",
            verdict(crps(0) <= crps(2)),
            crps(0),
            crps(2)
        ),
        format!(
            "  deep ensemble > MC-Dropout on CRPS: {} (ensemble {:.4} K, mc-dropout {:.4} K)\n",
            verdict(crps(2) < crps(1)),
            crps(2),
            crps(1)
        ),
        "  HyperDM trains within 1.5× one network's time: ".to_string(),
        "  the deep ensemble trains in about M× one network's time (within 25 %): ".to_string(),
    ] {
        assert!(table.contains(&claim), "{claim} in {table}");
    }
    let (again, log) = run_eval("ensemble");
    assert!(log.contains("loaded from"), "{log}");
    assert_eq!(again[0]["crps"], rows[2]["crps"], "seeded sampling repeats");
    assert_eq!(again[0]["train_seconds"], rows[2]["train_seconds"]);
    // One weight draw has no EU either: HyperDM at M = 1, from its kept model.
    let mut one_draw = args("hyperdm");
    let at = one_draw.iter().position(|a| a == "--m").unwrap();
    one_draw[at + 1] = "1".into();
    let (one, log) = run_with(one_draw);
    assert!(log.contains("loaded from"), "{log}");
    let one = &one[0];
    assert!(
        one["eu_auroc"].is_null() && one["eu_auprc"].is_null(),
        "{one}"
    );
    assert_eq!(one["crps_member"], one["crps"], "{one}");
    // A changed training setting retrains instead of scoring the kept model.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("lr = 3e-3", "lr = 1e-3", 1)).unwrap();
    let (retrained, log) = run_eval("ensemble");
    assert!(!log.contains("loaded from"), "{log}");
    assert!(log.contains("training ensemble"), "{log}");
    assert_ne!(retrained[0]["crps"], rows[2]["crps"]);
    // So does another training span: the kept model learned from 8 steps.
    let mut shorter = args("ensemble");
    let at = shorter.iter().position(|a| a == "--train-steps").unwrap();
    shorter[at + 1] = "6".into();
    let (_, log) = run_with(shorter);
    assert!(log.contains("training ensemble"), "{log}");
    assert!(!log.contains("loaded from"), "{log}");

    fails_with(
        &[
            "eval",
            "--config",
            config.to_str().unwrap(),
            "--methods",
            "bayes",
        ],
        &[
            "--methods",
            "'bayes' is not one of hyperdm, mc-dropout, ensemble",
        ],
    );
    // Unusable options fail before any data is written or model trained.
    let fresh = dir.path().join("fresh");
    for (option, value, needle) in [
        ("--m", "0", "--m 0"),
        ("--n", "1", "--n 1: AU is the variance"),
        ("--iterations", "0", "--iterations 0"),
        (
            "--n",
            "20000",
            "--m 10 --n 20000: 200000 samples per cell; eval keeps every sample",
        ),
        ("--train-steps", "1", "--train-steps 1: at least 2 steps"),
        (
            "--methods",
            "hyperdm,ensemble,hyperdm",
            "'hyperdm' is named twice",
        ),
    ] {
        fails_with(
            &[
                "eval",
                "--config",
                config.to_str().unwrap(),
                "--work",
                fresh.to_str().unwrap(),
                option,
                value,
            ],
            &[needle],
        );
        assert!(
            !fresh.exists(),
            "{option} {value} wrote {}",
            fresh.display()
        );
    }
}

#[test]
fn bad_inputs_fail_clearly_and_keep_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 2);
    let out = dir.path().join("out");
    assert!(run(&config, &out).status.success());
    let snapshot = forecast_csv(&out);
    let c = config.to_str().unwrap();
    let o = out.to_str().unwrap();

    // A run while another holds the output's lock (a scheduled run
    // overlapping a slow one) is refused and writes nothing; the step it
    // would have added is written once the lock is free.
    let steps = parquet_files(&out.join("forecast"));
    std::fs::remove_file(&steps[0]).unwrap();
    {
        let lock = std::fs::File::options()
            .write(true)
            .open(out.join(".uqcast-run.lock"))
            .expect("a run leaves its lock file");
        lock.try_lock().unwrap();
        fails_with(
            &["run", "--config", c, "--output", o],
            &["another uqcast run", ".uqcast-run.lock", "another --output"],
        );
        assert!(
            !steps[0].exists(),
            "a refused run wrote {}",
            steps[0].display()
        );
    }
    let resumed = run(&config, &out);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).contains("new_steps=1 "),
        "{}",
        stdout(&resumed)
    );
    assert_eq!(forecast_csv(&out), snapshot);

    // A device that cannot be had (UQCAST_DEVICE) stops a run before any
    // work, naming the variable; `cpu` is honoured and named.
    let on_device = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_uqcast"))
            .env("UQCAST_DEVICE", value)
            .args(["run", "--config", c, "--output", o])
            .output()
            .unwrap()
    };
    let mut refused = vec![("gpu", "is not one of cpu, cuda, cuda:N")];
    if !cfg!(feature = "cuda") {
        refused.push(("cuda:0", "built without the `cuda` feature"));
    }
    for (value, needle) in refused {
        let run = on_device(value);
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        let named = format!("UQCAST_DEVICE={value}: ");
        assert!(err.contains(&named) && err.contains(needle), "{err}");
    }
    let on_cpu = on_device("cpu");
    assert!(on_cpu.status.success(), "{}", stderr(&on_cpu));
    assert!(
        stdout(&on_cpu).contains("new_steps=0 ") && stdout(&on_cpu).contains(" device=cpu "),
        "{}",
        stdout(&on_cpu)
    );
    assert_eq!(forecast_csv(&out), snapshot);

    // A flags query that fails (an edit gone wrong) is named; the forecast
    // steps stay, and the next run writes the flags without sampling again.
    let flags_sql = dir.path().join("flags.sql");
    let good_flags = std::fs::read_to_string(&flags_sql).unwrap();
    std::fs::write(&flags_sql, good_flags.replace("FROM cells", "FROM cels")).unwrap();
    let second = dir.path().join("second");
    let failed = run(&config, &second);
    let last = stderr(&failed)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(failed.status.code(), Some(1), "{last}");
    assert!(
        ["flags SQL", "flags.sql", "cels"]
            .iter()
            .all(|n| last.contains(n)),
        "{last}"
    );
    assert_eq!(forecast_csv(&second), snapshot);
    assert!(!second.join("flags").join("flags.parquet").exists());
    std::fs::write(&flags_sql, good_flags).unwrap();
    let mended = run(&config, &second);
    assert!(
        stdout(&mended).contains("new_steps=0 ") && stdout(&mended).contains("flagged_tiles="),
        "{}",
        stdout(&mended)
    );
    assert!(second.join("flags").join("flags.parquet").exists());

    // Input on another grid.
    let other = dir.path().join("other");
    let s = uqcast(&[
        "synth",
        "--out",
        other.to_str().unwrap(),
        "--start",
        "2020-02-01T00:00Z",
        "--steps",
        "2",
        "--res",
        "3",
    ]);
    assert!(s.status.success());
    fails_with(
        &[
            "run",
            "--config",
            c,
            "--output",
            o,
            "--input",
            other.to_str().unwrap(),
        ],
        &["not on the model's grid", "39×68"],
    );
    // Scoring against data the forecast was not run on: another seed on the
    // same grid and times, and data sharing no cell and time with it.
    let reseeded = dir.path().join("reseeded");
    synth_seeded(&reseeded, 12, "nc4", 8, &[]);
    fails_with(
        &[
            "eval",
            "--forecast",
            o,
            "--data",
            reseeded.to_str().unwrap(),
        ],
        &["reseeded", "not the ones it was run on"],
    );
    fails_with(
        &["eval", "--forecast", o, "--data", other.to_str().unwrap()],
        &["other", "no cell and initial time of the forecast"],
    );
    // The table's own folder instead of the run's output.
    fails_with(
        &[
            "eval",
            "--forecast",
            out.join("forecast").to_str().unwrap(),
            "--data",
            reseeded.to_str().unwrap(),
        ],
        &["--forecast is the output directory", "holding forecast/", o],
    );
    // Data without the synthetic truth (as real ERA5): said so, pointing to SQL.
    std::fs::remove_dir_all(other.join("truth")).unwrap();
    fails_with(
        &["eval", "--forecast", o, "--data", other.to_str().unwrap()],
        &["other: no truth/ folder", "SQL skill functions"],
    );
    // A span that holds no time: an empty run would look like one with
    // nothing new to do.
    for command in ["run", "train"] {
        fails_with(
            &[
                command,
                "--config",
                c,
                "--since",
                "2020-01-02T00:00Z",
                "--until",
                "2020-01-01",
            ],
            &["--since 2020-01-02T00:00Z is after --until 2020-01-01T00:00Z"],
        );
    }
    // A run into a new output that fails on its input leaves no output.
    let fresh = dir.path().join("fresh-out");
    let fails_into_fresh = |input: &str, needles: &[&str]| {
        let f = fresh.to_str().unwrap();
        fails_with(
            &["run", "--config", c, "--output", f, "--input", input],
            needles,
        );
        assert!(!fresh.exists(), "a failed run left {}", fresh.display());
    };
    // A missing input fails before the output directory is made.
    fails_into_fresh("/nonexistent/era5", &["/nonexistent/era5"]);
    // Values in °C under units "K" are named, and the run that fails on its
    // first step leaves no empty table (its output was opened by then).
    let celsius = dir.path().join("celsius");
    let nc = synth_in_celsius(&celsius);
    fails_into_fresh(
        celsius.to_str().unwrap(),
        &[
            nc.to_str().unwrap(),
            "t2m at 2020-01-01T",
            "outside the 150…350 K",
        ],
    );
    // Weights named .json would be overwritten by their own metadata:
    // refused before training, from --out or from the pipeline.
    let json_model = dir.path().join("json-model/m.json");
    fails_with(
        &[
            "train",
            "--config",
            c,
            "--out",
            json_model.to_str().unwrap(),
        ],
        &["json-model/m.json", "--out needs a .safetensors file name"],
    );
    assert!(!json_model.parent().unwrap().exists());
    // A missing model.
    fails_with(
        &[
            "run",
            "--config",
            c,
            "--output",
            o,
            "--model",
            "/nonexistent/m.safetensors",
        ],
        &["/nonexistent/m.safetensors", "no such model file"],
    );
    // An unwritable output (a regular file is in the way).
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let blocked = blocker.join("out");
    fails_with(
        &["run", "--config", c, "--output", blocked.to_str().unwrap()],
        &["blocker/out"],
    );
    // A query for 0…360 longitudes over data in −180…180 keeps no row: run
    // and train say so, with the data's extent, and make no output.
    let west = dir.path().join("west");
    synth(&west, 2, "nc4", &["--bbox", "7,83,-169,-35"]);
    std::fs::write(
        dir.path().join("source.sql"),
        "SELECT valid_time, latitude, longitude, t2m FROM era5 WHERE longitude BETWEEN 191 AND 325",
    )
    .unwrap();
    let model = dir.path().join("fresh-model/m.safetensors");
    let (w, f, m) = (
        west.to_str().unwrap(),
        fresh.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    for args in [
        ["run", "--config", c, "--input", w, "--output", f],
        ["train", "--config", c, "--input", w, "--out", m],
    ] {
        fails_with(
            &args,
            &[
                "source.sql returns no rows from these data; they hold latitude",
                "these data use −180…180 longitudes",
                "valid_time 2020-01-01T00:00:00Z … 2020-01-01T06:00:00Z",
            ],
        );
    }
    assert!(!fresh.exists() && !model.parent().unwrap().exists());
    // A source query without t2m.
    std::fs::write(
        dir.path().join("source.sql"),
        "SELECT valid_time, latitude, longitude FROM era5",
    )
    .unwrap();
    fails_with(
        &["run", "--config", c, "--output", o],
        &["column 't2m' is missing"],
    );
    // A copy of the pipeline with one edit must fail, naming the file and field.
    let edited_fails = |name: &str, from: &str, to: &str, field: &str| {
        let text = std::fs::read_to_string(&config).unwrap().replace(from, to);
        let bad = dir.path().join(name);
        std::fs::write(&bad, text).unwrap();
        fails_with(&["run", "--config", bad.to_str().unwrap()], &[name, field]);
    };
    // Unknown keys in the pipeline.
    edited_fails(
        "bad.toml",
        "lead_hours = 6",
        "lead_hours = 6\nlead_minutes = 0",
        "lead_minutes",
    );
    // A checkpoint the pipeline names that is not there.
    edited_fails(
        "no-model.toml",
        "checkpoint = \"model/m.safetensors\"",
        "checkpoint = \"model/none.safetensors\"",
        "model.checkpoint: ",
    );
    edited_fails(
        "json-checkpoint.toml",
        "checkpoint = \"model/m.safetensors\"",
        "checkpoint = \"model/m.json\"",
        "model.checkpoint: must name a .safetensors file",
    );
    // More samples per cell than one forward pass holds.
    edited_fails(
        "many-samples.toml",
        "samples = 2",
        "samples = 1000000000",
        "inference.samples",
    );
    // No z draw per minibatch.
    edited_fails(
        "no-draws.toml",
        "[train]",
        "[train]\nz_per_step = 0",
        "train.z_per_step",
    );
    // Networks cannot start a negative distance apart.
    edited_fails(
        "z-init.toml",
        "[train]",
        "[train]\nz_init = -0.1",
        "train.z_init",
    );
    // The z path cannot stand still.
    edited_fails("z-lr.toml", "[train]", "[train]\nz_lr = 0", "train.z_lr");
    // A hyper-network form that does not exist, and one that cannot be centred.
    edited_fails(
        "form.toml",
        "[train]",
        "[train]\nhyper_form = \"rank2\"",
        "hyper_form",
    );
    edited_fails(
        "rank1-centred.toml",
        "[train]",
        "[train]\nhyper_form = \"rank1\"\ncentred = true",
        "train.centred",
    );
    // A model needs at least one update, at a usable rate.
    edited_fails(
        "no-updates.toml",
        "iterations = 150",
        "iterations = 0",
        "train.iterations",
    );
    edited_fails("nan-lr.toml", "lr = 3e-3", "lr = nan", "train.lr");
    // AU is a variance over each weight draw's samples: one sample has none.
    edited_fails(
        "one-sample.toml",
        "samples = 2",
        "samples = 1",
        "inference.samples",
    );
    edited_fails(
        "pushed-away.toml",
        "anchor = 0.01",
        "anchor = -0.5",
        "train.anchor",
    );
    // Shapes no network can take: no z, a hyper-network layer of width 0,
    // a denoiser that cannot see its step.
    edited_fails("no-z.toml", "z_dim = 4", "z_dim = 0", "train.z_dim");
    edited_fails(
        "empty-layer.toml",
        "hyper_hidden = [8]",
        "hyper_hidden = [8, 0]",
        "train.hyper_hidden",
    );
    edited_fails(
        "blind.toml",
        "time_dim = 8",
        "time_dim = 1",
        "train.time_dim",
    );
    // More sampler steps than the model has: refused against the pipeline's
    // diffusion_steps, and against the checkpoint's (trained with 50) when
    // the pipeline claims more; before, the sampler ran 50 steps under
    // the name it was given.
    edited_fails(
        "long-sampler.toml",
        "sampler = \"ddpm\"",
        "sampler = \"ddim-51\"",
        "inference.sampler",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("sampler = \"ddpm\"", "sampler = \"ddim-400\"")
        .replace("diffusion_steps = 50", "diffusion_steps = 500");
    let claims_more = dir.path().join("claims-more.toml");
    std::fs::write(&claims_more, text).unwrap();
    fails_with(
        &["run", "--config", claims_more.to_str().unwrap()],
        &[
            "m.safetensors",
            "inference.sampler",
            "ddim-400",
            "trained with 50",
        ],
    );

    assert_eq!(
        forecast_csv(&out),
        snapshot,
        "a failed run changed the table"
    );
}

/// `hyper_form = "rank1"` in a pipeline trains a rank-1 hyper-network (the
/// checkpoint says so) whose members disagree: the forecast has EU > 0,
/// AU > 0 and plausible means in every one of its rows.
#[test]
fn rank1_pipeline_trains_and_forecasts_with_both_uncertainties() {
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("data"), 4, "nc4", &[]);
    let config = write_pipeline(dir.path(), 2, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[train]", "[train]\nhyper_form = \"rank1\"");
    std::fs::write(&config, text).unwrap();
    let o = uqcast(&["train", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    let meta = std::fs::read_to_string(dir.path().join("model/m.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["hyper"]["form"], "rank1", "{}", meta["hyper"]);

    let out = dir.path().join("out");
    let o = run(&config, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = format!("f={}", out.join("forecast").display());
    let row = sql_row(
        &table,
        "SELECT count(*) AS n,
                count(*) FILTER (WHERE t2m_eu > 0) AS with_eu,
                count(*) FILTER (WHERE t2m_au > 0) AS with_au,
                max(abs(t2m_mean - t2m)) < 30 AS mean_plausible
         FROM f",
    );
    assert_eq!(row["n"], 4 * 39 * 68, "{row}");
    assert_eq!(row["with_eu"], row["n"], "{row}");
    assert_eq!(row["with_au"], row["n"], "{row}");
    assert_eq!(row["mean_plausible"], true, "{row}");
}
