//! The forecast pipeline's bad inputs through the real binary: each ends
//! in one clear line and a non-zero exit, and what was written stays.

use std::path::Path;
use std::process::Command;

use crate::errors::fails_with;
use crate::pipeline::{forecast_csv, parquet_files, run, synth_in_celsius, trained};
use crate::{stderr, stdout, synth, synth_seeded, uqcast};

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

    // A flags query that cannot run (an edit gone wrong) is named before
    // anything is sampled: the run stops at once and writes nothing.
    let flags_sql = dir.path().join("flags.sql");
    let good_flags = std::fs::read_to_string(&flags_sql).unwrap();
    let second = dir.path().join("second");
    let s2 = second.to_str().unwrap();
    for (edit, named) in [
        (good_flags.replace("FROM cells", "FROM cels"), "cels"),
        (good_flags.replace("AS max_eu", "AS top_eu"), "top_eu"),
    ] {
        std::fs::write(&flags_sql, edit).unwrap();
        fails_with(
            &["run", "--config", c, "--output", s2],
            &["flags SQL", "flags.sql", named],
        );
        assert!(!second.exists(), "{named}: the run wrote before it failed");
    }
    // A threshold over the whole table in a pipeline that promises
    // per-step flags (a run would flag its new steps by another yardstick
    // than the kept ones): refused before anything is sampled.
    let per_step = dir.path().join("per_step.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("min_fraction = 0.3\n"), "{text}");
    let promise = text.replace(
        "min_fraction = 0.3\n",
        "min_fraction = 0.3\nper_step = true\n",
    );
    std::fs::write(&per_step, promise).unwrap();
    let threshold = "SELECT valid_time, CAST({{eu_threshold}} AS DOUBLE) AS eu_threshold\n    \
                     FROM forecast\n    GROUP BY valid_time";
    assert!(good_flags.contains(threshold), "{good_flags}");
    let whole = "SELECT DISTINCT f.valid_time, g.eu_threshold FROM forecast f CROSS JOIN \
                 (SELECT CAST({{eu_threshold}} AS DOUBLE) AS eu_threshold FROM forecast) g";
    std::fs::write(&flags_sql, good_flags.replace(threshold, whole)).unwrap();
    fails_with(
        &[
            "run",
            "--config",
            per_step.to_str().unwrap(),
            "--output",
            s2,
        ],
        &[
            "flags SQL",
            "flags.sql",
            "per_step = true",
            "other valid times",
        ],
    );
    assert!(!second.exists(), "per_step: the run wrote before it failed");

    // One that fails only on the data (NULL flags) is named after the
    // steps; they stay, and the next run writes the flags without sampling
    // again.
    std::fs::write(
        &flags_sql,
        good_flags.replace("max(eu) ", "NULLIF(max(eu), max(eu)) "),
    )
    .unwrap();
    let failed = run(&config, &second);
    let last = stderr(&failed)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(failed.status.code(), Some(1), "{last}");
    assert!(
        ["flags SQL", "flags.sql", "column 'max_eu' has NULLs"]
            .iter()
            .all(|n| last.contains(n)),
        "{last}"
    );
    assert_eq!(forecast_csv(&second), snapshot);
    assert!(
        !second
            .join("flags/year=2020/month=01/flags_202001.parquet")
            .exists()
    );
    std::fs::write(&flags_sql, good_flags).unwrap();
    let mended = run(&config, &second);
    assert!(
        stdout(&mended).contains("new_steps=0 ") && stdout(&mended).contains("flagged_tiles="),
        "{}",
        stdout(&mended)
    );
    assert!(
        second
            .join("flags/year=2020/month=01/flags_202001.parquet")
            .exists()
    );

    // A step damaged after it was written (a bad disk, a partial copy):
    // the commands that read the table whole name the file. The run that
    // recomputes the flags leaves every step as it was and writes no flags.
    let step = parquet_files(&second.join("forecast")).remove(3);
    damage_column(&step, "latitude");
    std::fs::remove_file(second.join("flags/year=2020/month=01/flags_202001.parquet")).unwrap();
    let steps_before: Vec<Vec<u8>> = parquet_files(&second.join("forecast"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let damaged_line = [
        "table 'forecast'",
        step.to_str().unwrap(),
        "not readable as Parquet (a damaged page?)",
    ];
    fails_with(&["run", "--config", c, "--output", s2], &damaged_line);
    // t2m_YYYYMMDDTHHMM.parquet: a plot reads its own step's file only.
    let name = step.file_stem().unwrap().to_str().unwrap();
    let (day, hour) = (&name[4..12], &name[13..17]);
    let time = format!(
        "{}-{}-{}T{}:{}Z",
        &day[..4],
        &day[4..6],
        &day[6..],
        &hour[..2],
        &hour[2..]
    );
    let png = dir.path().join("damaged.png");
    let plot = |time: &str, needles: &[&str]| {
        let png = png.to_str().unwrap();
        fails_with(
            &["plot", "--input", s2, "--time", time, "--out", png],
            needles,
        );
    };
    plot(&time, &damaged_line);
    // Another step plots as far as the flags, which the failed run left
    // as an empty folder: said so, and what writes them.
    plot(
        "2020-01-02T18:00Z",
        &["second/flags: no flags table yet", "`uqcast run` again"],
    );
    let data = dir.path().join("data");
    fails_with(
        &["eval", "--forecast", s2, "--data", data.to_str().unwrap()],
        &damaged_line,
    );
    let steps_after: Vec<Vec<u8>> = parquet_files(&second.join("forecast"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(steps_before == steps_after, "a failed run changed a step");
    assert!(
        !second
            .join("flags/year=2020/month=01/flags_202001.parquet")
            .exists()
    );
    assert!(!png.exists());

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
    // A training span whose steps do not fit in the memory a query may hold
    // (UQCAST_QUERY_MEMORY_GB, here 50 kB; the 12 steps take 64 kB packed)
    // stops while reading, in one line that says how far it got and how to
    // ask for less, and the kept model is untouched. Before, the rows were
    // held whole, with two copies of their coordinates, unaccounted, and a
    // span too long for the machine ended in the kernel's out-of-memory kill.
    let kept_model = dir.path().join("model/m.safetensors");
    let kept = std::fs::read(&kept_model).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .env("UQCAST_QUERY_MEMORY_GB", "0.00005")
        .args(["train", "--config", c])
        .output()
        .unwrap();
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for part in [
        "data: the training span does not fit in the memory a query may hold here",
        "steps read so far (2652 cells each), with those still incomplete, take",
        "of the 50 kB limit (UQCAST_QUERY_MEMORY_GB",
        "default half of the memory), which holds at most 9 such steps; \
         train on fewer steps (--since, --until) or pairs (--max-pairs, train.max_pairs)",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    assert_eq!(
        std::fs::read(&kept_model).unwrap(),
        kept,
        "the kept model changed"
    );
    // Commands that say what they start on and then fail: exit 1, no
    // panic, and the error on the last line.
    let ends_with_error = |args: &[&str], needles: &[&str]| {
        let o = uqcast(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(needles.iter().all(|n| last.contains(n)), "{args:?}: {err}");
    };
    // A model that cannot be written stops training before its first
    // update, naming the folder its partial checkpoints go to (it failed a
    // tenth of the way in, as "training data: …").
    let unwritable = "/proc/uqcast-model.safetensors";
    ends_with_error(
        &["train", "--config", c, "--out", unwritable],
        &[&format!(
            "{unwritable}.partial: cannot keep the partial model (resumable training) there: \
             No such file or directory"
        )],
    );
    // A source query that repeats its rows gives every cell of a step
    // twice: training and a run into a new table refuse it, naming the step
    // and the cell. (Training took each pair twice, and a run forecast each
    // step twice, once the first copy had made the step whole.) The run
    // keeps the steps it wrote before the first repeat arrived, which the
    // union's order decides.
    std::fs::write(
        dir.path().join("source.sql"),
        "SELECT valid_time, latitude, longitude, t2m FROM era5 \
         UNION ALL SELECT valid_time, latitude, longitude, t2m FROM era5",
    )
    .unwrap();
    let repeats = [
        "source rows do not fit the model grid: step 2020-",
        "appears twice",
    ];
    fails_with(&["train", "--config", c, "--out", m], &repeats);
    assert!(!model.parent().unwrap().exists());
    ends_with_error(&["run", "--config", c, "--output", f], &repeats);
    // Training's grid is the cells of the first step read (steps are
    // assembled as they stream by): a step with fewer cells than the others
    // is refused, naming it and that first step, whichever came first.
    std::fs::write(
        dir.path().join("source.sql"),
        "SELECT valid_time, latitude, longitude, t2m FROM era5 WHERE NOT \
         (valid_time = TIMESTAMP '2020-01-01T12:00:00Z' AND latitude > 50)",
    )
    .unwrap();
    let refused = uqcast(&["train", "--config", c, "--out", m]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("step 2020-01-01T12:00"), "{err}");
    assert!(err.contains(", the first step read"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!model.parent().unwrap().exists());
    // A source query without t2m, or that does not parse: train and run
    // name the pipeline and the query's file before reading anything, and
    // a parser's position is in the query as written, not in the query
    // the commands wrap it in (--since, --max-pairs).
    let query = dir.path().join("source.sql");
    let named = format!("pipeline.toml: source.query {}: ", query.display());
    let since = ["--since", "2020-01-01T06:00Z"];
    for (sql, problem) in [
        (
            "SELECT valid_time, latitude, longitude FROM era5",
            "column 't2m' is missing (the query returns valid_time, latitude, longitude)",
        ),
        (
            "SELECT valid_time, latitude, longitude, t2m FROM era5 WHERE",
            "sql parser error: Expected: an expression, found: EOF",
        ),
        (
            "SELECT valid_time, latitude, longitude, t2m FROM era5 WHERE (latitude > 1",
            "sql parser error: Expected: ), found: EOF",
        ),
    ] {
        std::fs::write(&query, sql).unwrap();
        let message = format!("{named}{problem}");
        fails_with(
            &[&["run", "--config", c, "--output", o][..], &since].concat(),
            &[&message],
        );
        let train = ["train", "--config", c, "--out", m, "--max-pairs", "3"];
        fails_with(&[&train[..], &since].concat(), &[&message]);
    }
    assert!(!model.parent().unwrap().exists());
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
    // A flags threshold that names neither kind, or a floor below zero.
    edited_fails(
        "no-threshold.toml",
        "eu_threshold = { percentile = 0.9 }",
        "eu_threshold = {}",
        "flags.eu_threshold: give percentile",
    );
    edited_fails(
        "negative-floor.toml",
        "eu_threshold = { percentile = 0.9 }",
        "eu_threshold = { percentile = 0.9, absolute = -0.1 }",
        "flags.eu_threshold.absolute: must be ≥ 0 K²",
    );
    // EU-outlier bounds that would warn of half the steps, or of none.
    edited_fails(
        "outliers-at-the-median.toml",
        "min_fraction = 0.3",
        "min_fraction = 0.3\neu_outliers = { times_median = 1.0 }",
        "flags.eu_outliers.times_median: must be a number > 1",
    );
    edited_fails(
        "outliers-of-two-steps.toml",
        "min_fraction = 0.3",
        "min_fraction = 0.3\neu_outliers = { min_steps = 2 }",
        "flags.eu_outliers.min_steps: must be at least 3",
    );
    edited_fails(
        "outliers-no-days.toml",
        "min_fraction = 0.3",
        "min_fraction = 0.3\neu_outliers = { window_days = 0 }",
        "flags.eu_outliers.window_days: must be at least 1",
    );
    edited_fails(
        "outliers-unknown-key.toml",
        "min_fraction = 0.3",
        "min_fraction = 0.3\neu_outliers = { ratio = 5.0 }",
        "unknown field `ratio`",
    );
    // More weight draws than a forecast may take (a mistyped count).
    edited_fails(
        "many-members.toml",
        "members = 3",
        "members = 3000000000",
        "inference.members: must be at most 1000",
    );
    // A training that could not fit in memory (a mistyped batch size) is
    // refused before any data is read, not aborted by the allocator.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size = 256", "batch_size = 1000000000");
    let huge = dir.path().join("huge-batch.toml");
    std::fs::write(&huge, text).unwrap();
    fails_with(
        &["train", "--config", huge.to_str().unwrap()],
        &[
            "huge-batch.toml: [train] needs at least",
            "batch_size = 1000000000), more than the",
        ],
    );
    // The rank-1 form's generator counts, and so does an address-space
    // limit: a generator layer of ten million needs about 20 GB, which a
    // 24 GB machine could hold but a process under `ulimit -v` of 4 GiB
    // cannot (before, the allocator aborted it with exit 134).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("hyper_hidden = [8]", "hyper_hidden = [10000000]")
        .replace("[train]", "[train]\nhyper_form = \"rank1\"");
    let wide = dir.path().join("wide-generator.toml");
    std::fs::write(&wide, text).unwrap();
    let o = Command::new("bash")
        .args(["-c", "ulimit -v 4194304 && exec \"$0\" \"$@\""])
        .args([env!("CARGO_BIN_EXE_uqcast"), "train", "--config"])
        .arg(&wide)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("wide-generator.toml: [train] needs at least")
            && err.contains("more than the 4.3 GB here"),
        "{err}"
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

/// Sets the last 64 bytes of `column`'s chunk in the Parquet file `path` to
/// 0xFF: inside its last data page, so the footer still reads and the file
/// fails only when that page is decoded.
pub fn damage_column(path: &Path, column: &str) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let group = reader.metadata().row_group(0);
    let chunk = (0..group.num_columns())
        .map(|i| group.column(i))
        .find(|c| c.column_path().string() == column)
        .unwrap_or_else(|| panic!("{}: no column {column}", path.display()));
    let (start, len) = chunk.byte_range();
    let end = usize::try_from(start + len).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[end - 64..end].fill(0xFF);
    std::fs::write(path, bytes).unwrap();
}
