//! The forecast pipeline through the real binary: train, run, kill and
//! resume, flags, the SQL table function, plots, the rank-1 form; the helpers
//! the other pipeline tests (`eval`, `pipeline_errors`) share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::errors::fails_with;
use crate::{plan_metric, printed_seconds, sql_csv, stderr, stdout, synth, uqcast};

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
    trained_over(dir, samples, 12)
}

/// As [`trained`], over `steps` 6-hourly steps of data: a run of it writes
/// `steps` forecast steps.
pub(crate) fn trained_over(dir: &Path, samples: usize, steps: usize) -> PathBuf {
    synth(
        &dir.join("data"),
        steps,
        "nc4",
        &["--ood", "disk:2020-01-02T12:00Z,45,260,8,30"],
    );
    let config = write_pipeline(dir, samples, "");
    let o = uqcast(&["train", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    let pairs = format!("{} pairs", steps - 1);
    assert!(stdout(&o).contains(&pairs), "{}", stdout(&o));
    assert!(dir.join("model/m.safetensors").is_file());
    assert!(dir.join("model/m.json").is_file());
    config
}

pub(crate) fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walk_all(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    out
}

/// The one row a query over `table` (`NAME=PATH`) returns, as JSON.
pub(crate) fn sql_row(table: &str, query: &str) -> serde_json::Value {
    let o = uqcast(&["sql", query, "--table", table, "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

/// The forecast table's rows as CSV, in a fixed order.
pub(crate) fn forecast_csv(out: &Path) -> String {
    let table = format!("f={}", out.join("forecast").display());
    sql_csv(
        &table,
        "SELECT * FROM f ORDER BY valid_time, latitude, longitude",
    )
}

/// `uqcast run` of `config` over `input` into `output`, with `extra`
/// arguments; panics unless it succeeds.
pub(crate) fn run_over(
    config: &Path,
    input: &Path,
    output: &Path,
    extra: &[&str],
) -> std::process::Output {
    let o = run_over_unchecked(config, input, output, extra);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// As [`run_over`], succeeding or not.
pub(crate) fn run_over_unchecked(
    config: &Path,
    input: &Path,
    output: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    uqcast(&args)
}

pub(crate) fn run(config: &Path, output: &Path) -> std::process::Output {
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
    assert!(
        whole
            .join("flags/year=2020/month=01/flags_202001.parquet")
            .is_file()
    );

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
    // On the NetCDF I/O thread: HDF5 prints its diagnostics (attributes it
    // looks for and does not find) from threads other than the one
    // libnetcdf set up on, and this process's tests run on many.
    let path = nc.clone();
    uqcast_netcdf::io_thread::run(move || {
        let mut file = netcdf::append(&path).unwrap();
        let mut t2m = file.variable_mut("t2m").unwrap();
        let kelvin: Vec<f32> = t2m.get_values(..).unwrap();
        let degrees: Vec<f32> = kelvin.iter().map(|k| k - 273.15).collect();
        t2m.put_values(&degrees, ..).unwrap();
        file.close().unwrap();
    });
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
    crate::parquet_readers::assert_readable_elsewhere(&out);

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
    // With the month partitions the flags' files are kept under.
    let mut sorted = names.clone();
    sorted.extend(["year", "month"]);
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
    // One batch per step from each operator, and their own compute time,
    // of which sampling (forecast) and reading (scan) are parts.
    assert_eq!(plan_metric(&plan, "HyperdmExec", "output_batches"), "2");
    let compute = printed_seconds(plan_metric(&plan, "HyperdmExec", "elapsed_compute"));
    let sampling = printed_seconds(plan_metric(&plan, "HyperdmExec", "sampling_time"));
    assert!(sampling > 0.0 && compute >= sampling, "{plan}");
    assert_eq!(
        plan_metric(&plan, "NetcdfExec", "output_batches"),
        plan_metric(&plan, "NetcdfExec", "steps_read")
    );
    let compute = printed_seconds(plan_metric(&plan, "NetcdfExec", "elapsed_compute"));
    let reading = printed_seconds(plan_metric(&plan, "NetcdfExec", "netcdf_read_time"));
    assert!(reading > 0.0 && compute >= reading, "{plan}");
    // One sample per weight draw leaves AU undefined: refused at planning.
    let q = format!(
        "SELECT count(*) FROM hyperdm_forecast('{}', 'SELECT * FROM era5', 3, 1)",
        model.display()
    );
    fails_with(
        &["sql", &q, "--table", &era5],
        &["hyperdm_forecast", "samples ≥ 2 (for AU)"],
    );
    // A fractional count is not rounded down, more members than a forecast
    // may draw (before the bound, 3·10⁹ made a 24 GB list of member numbers)
    // or samples than a pass holds are refused, and a sampler longer than
    // the model's 50 diffusion steps is refused naming the model.
    for (args, needles) in [
        ("2.5, 2", vec!["hyperdm_forecast", "members", "2.5"]),
        (
            "3000000000, 2",
            vec!["hyperdm_forecast", "members 3000000000 is above the 1000"],
        ),
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
    // The image was drawn beside it and renamed: nothing else is left.
    let names: Vec<_> = std::fs::read_dir(png.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["map.png"]);
    // A place that cannot be written says so in the OS's words (here /proc,
    // where even root cannot create a file), not the image encoder's.
    fails_with(
        &plot(&out, "2020-01-02T18:00Z", Path::new("/proc/uqcast-map.png")),
        &[
            "/proc/uqcast-map.png: cannot write the image",
            "No such file or directory",
        ],
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
