//! `uqcast eval --config` through the real binary: HyperDM against its
//! baselines on a small synthetic benchmark.

use crate::errors::fails_with;
use crate::pipeline::{parquet_files, sql_row, write_pipeline};
use crate::{stderr, stdout, uqcast};

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
    // With 1 GB for eval to hold, refused before anything is written: a
    // span whose steps would not fit (30,000 × 10,395 cells × 4 bytes; once,
    // 100,000 steps were written, 2.7 GB, then read until the kernel killed
    // the process), and more samples of a
    // step than it can keep (30,000 × 10,395 cells × 4 bytes; N is 100).
    for (option, value, says) in [
        (
            "--test-steps",
            "30000",
            "--test-steps 30000: reading 30000 steps of 10395 cells takes about 1.2 GB",
        ),
        (
            "--m",
            "300",
            "--m 300 --n 100: keeping 30000 samples of each of 10395 cells takes about 1.2 GB",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_uqcast"))
            .env("UQCAST_QUERY_MEMORY_GB", "1")
            .args(["eval", "--config", config.to_str().unwrap(), "--work"])
            .arg(&fresh)
            .args([option, value])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let limit = ", more than the 1.0 GB eval may hold here (UQCAST_QUERY_MEMORY_GB";
        assert!(err.contains(&format!("{says}{limit}")), "{err}");
        assert!(
            !fresh.exists(),
            "{option} {value} wrote {}",
            fresh.display()
        );
    }
}
