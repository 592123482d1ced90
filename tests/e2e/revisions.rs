//! `uqcast run` over input that is revised after it was forecast (ERA5T
//! replaced by final ERA5): the steps whose input changed within the
//! recheck window are forecast again, and nothing else is rewritten.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::pipeline::{forecast_csv, parquet_files, run_over, run_over_unchecked, trained};
use crate::{stderr, stdout, synth_seeded, uqcast};

/// Day `day` (1 or 2) of 2020-01 from the per-day files of `seed`'s data.
fn day_file(dir: &Path, seed: u64, day: u32) -> PathBuf {
    let data = dir.join(format!("seed{seed}"));
    if !data.exists() {
        synth_seeded(&data, 8, "nc3", seed, &["--files-per-day"]);
    }
    data.join(format!("era5_t2m_2020010{day}.nc"))
}

fn run(config: &Path, input: &Path, output: &Path, extra: &[&str]) -> String {
    stdout(&run_over(config, input, output, extra))
}

/// Each forecast file's modification time, in path order.
fn written_at(out: &Path) -> Vec<(PathBuf, SystemTime)> {
    parquet_files(&out.join("forecast"))
        .into_iter()
        .map(|p| {
            let at = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, at)
        })
        .collect()
}

/// The forecast files whose modification time changed between two listings.
fn rewritten(before: &[(PathBuf, SystemTime)], after: &[(PathBuf, SystemTime)]) -> Vec<String> {
    assert_eq!(before.len(), after.len());
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, _)| b.0.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn revised_input_is_forecast_again_within_the_recheck_window_and_only_there() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 2);
    // One day back from the newest forecast step: the pipeline's default.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "query = \"source.sql\"",
        "query = \"source.sql\"\nrecheck_days = 1",
    );
    std::fs::write(&config, text).unwrap();

    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    for day in [1, 2] {
        std::fs::copy(
            day_file(dir.path(), 7, day),
            input.join(format!("d{day}.nc")),
        )
        .unwrap();
    }
    let out = dir.path().join("out");
    let first = run(&config, &input, &out, &[]);
    assert!(
        first.starts_with("uqcast run: ok new_steps=8 existing_steps=0 revised_steps=0"),
        "{first}"
    );

    // Day 2 comes again with other values (final data for preliminary).
    std::fs::copy(day_file(dir.path(), 8, 2), input.join("d2.nc")).unwrap();
    let before = written_at(&out);
    let off = run(&config, &input, &out, &["--recheck-days", "0"]);
    assert!(
        off.starts_with("uqcast run: ok new_steps=0 existing_steps=8 revised_steps=0"),
        "--recheck-days 0 turns the pipeline's recheck off: {off}"
    );
    assert!(rewritten(&before, &written_at(&out)).is_empty());

    // A dry run finds the four and leaves them, and the recheck's ledger,
    // to the run (which then reads them again itself).
    let o = run_over(&config, &input, &out, &["--dry-run"]);
    assert!(
        stdout(&o).starts_with(
            "uqcast run --dry-run: ok would_forecast=0 would_revise=4 existing_steps=4 \
             flag_months=1 flag_months_removed=0"
        ),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains(
            "would forecast again (input revised): valid 2020-01-02T06:00Z … \
             2020-01-03T00:00Z, every 6 h (4 steps)"
        ),
        "{}",
        stderr(&o)
    );
    assert!(rewritten(&before, &written_at(&out)).is_empty());

    let o = run_over(&config, &input, &out, &[]);
    assert!(
        stdout(&o).starts_with("uqcast run: ok new_steps=0 existing_steps=4 revised_steps=4"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        stderr(&o).matches("(its input was revised)").count(),
        4,
        "{}",
        stderr(&o)
    );
    // The window holds 5 steps; the first run's ledger vouches for those of
    // the unchanged day 1, so the 4 of day 2 are read.
    assert!(
        stderr(&o).contains(
            "revised input: 4 of 4 steps rechecked (initial times 2020-01-02T00:00:00Z … \
             2020-01-02T18:00:00Z) are forecast again"
        ),
        "{}",
        stderr(&o)
    );
    // Initial times 2020-01-02T00…18Z, valid 06Z to the next day's 00Z.
    assert_eq!(
        rewritten(&before, &written_at(&out)),
        [
            "t2m_20200102T0600.parquet",
            "t2m_20200102T1200.parquet",
            "t2m_20200102T1800.parquet",
            "t2m_20200103T0000.parquet",
        ]
    );
    // The forecasts now start from the revised values, cell by cell.
    let o = uqcast(&[
        "sql",
        "SELECT count(*) AS n, sum(CASE WHEN f.t2m = e.t2m THEN 1 ELSE 0 END) AS same \
         FROM f JOIN e ON f.init_time = e.valid_time \
         AND f.latitude = e.latitude AND f.longitude = e.longitude",
        "--table",
        &format!("f={}", out.join("forecast").display()),
        "--table",
        &format!("e={}", input.display()),
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let counts = stdout(&o);
    let row = counts.lines().nth(1).unwrap();
    let (n, same) = row.split_once(',').unwrap();
    assert_eq!(
        n, same,
        "forecast inputs differ from the revised data: {row}"
    );
    assert!(n.parse::<u64>().unwrap() > 0, "{row}");

    // Day 1 revised too: a one-day window reaches only its last step …
    std::fs::copy(day_file(dir.path(), 8, 1), input.join("d1.nc")).unwrap();
    let one_day = run(&config, &input, &out, &[]);
    assert!(
        one_day.starts_with("uqcast run: ok new_steps=0 existing_steps=7 revised_steps=1"),
        "{one_day}"
    );
    // … and two days the rest.
    let two_days = run(&config, &input, &out, &["--recheck-days", "2"]);
    assert!(
        two_days.starts_with("uqcast run: ok new_steps=0 existing_steps=5 revised_steps=3"),
        "{two_days}"
    );

    // The table is the one a first run over the revised data writes.
    let fresh = dir.path().join("fresh");
    run(&config, &input, &fresh, &[]);
    assert_eq!(forecast_csv(&out), forecast_csv(&fresh));

    // A run with a two-day window (every step), its summary's counts
    // checked; its stderr.
    let two_day_run = |counts: &str| {
        let o = run_over(&config, &input, &out, &["--recheck-days", "2"]);
        let expected = format!("uqcast run: ok new_steps=0 {counts}");
        assert!(stdout(&o).starts_with(&expected), "{}", stdout(&o));
        stderr(&o)
    };
    // Nothing changed since: nothing is rewritten, and the input is not
    // read again (the ledger the last recheck left beside the table).
    let before = written_at(&out);
    let err = two_day_run("existing_steps=8 revised_steps=0");
    let skipped = "the input of 8 steps is not read again";
    assert!(err.contains(skipped), "{err}");
    assert!(rewritten(&before, &written_at(&out)).is_empty());
    assert!(out.join(".uqcast-recheck.json").is_file());

    // Day 2 put back as it first came, rewritten in place with its size
    // and modification time kept (`rsync -t --inplace`): only its change
    // time tells, and its steps are forecast again.
    let d2 = input.join("d2.nc");
    let kept = std::fs::metadata(&d2).unwrap().modified().unwrap();
    let first_values = std::fs::read(day_file(dir.path(), 7, 2)).unwrap();
    assert_eq!(
        first_values.len() as u64,
        std::fs::metadata(&d2).unwrap().len()
    );
    let day_2_step = out.join("forecast/year=2020/month=01/t2m_20200102T1200.parquet");
    let revised_copy = std::fs::read(&day_2_step).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&d2).unwrap();
    std::io::Write::write_all(&mut &file, &first_values).unwrap();
    file.set_modified(kept).unwrap();
    drop(file);
    let err = two_day_run("existing_steps=4 revised_steps=4");
    // The query is step-local: only the changed file's steps are read.
    let d2_changed = format!(
        "1 of 2 input files new, changed or gone since the last recheck ({}): \
         reading the input of the 4 of 8 steps they hold",
        d2.display()
    );
    assert!(err.contains(&d2_changed), "{err}");

    // A forecast file put back by hand (here the one from before, made from
    // the input as it no longer is) is not vouched for: the window is read.
    std::fs::write(&day_2_step, revised_copy).unwrap();
    let err = two_day_run("existing_steps=7 revised_steps=1");
    assert!(!err.contains(skipped), "{err}");

    // A ledger damaged by hand is said and read around, and written again.
    let ledger = out.join(".uqcast-recheck.json");
    std::fs::write(&ledger, b"{\"format\": 1, \"sou").unwrap();
    let err = two_day_run("existing_steps=8 revised_steps=0");
    assert!(
        err.contains(".uqcast-recheck.json: not a recheck ledger"),
        "{err}"
    );
    let err = two_day_run("existing_steps=8 revised_steps=0");
    assert!(err.contains(skipped), "{err}");

    // A query whose every step depends on every file (each value less the
    // mean over all steps): a changed file changes every step's input, and
    // the whole window is read, not only that file's steps.
    let query = "SELECT e.valid_time, e.latitude, e.longitude, \
                 e.t2m - m.mean + 280 AS t2m \
                 FROM era5 e CROSS JOIN (SELECT avg(t2m) AS mean FROM era5) m";
    std::fs::write(dir.path().join("source.sql"), query).unwrap();
    two_day_run("existing_steps=0 revised_steps=8");
    let d1 = input.join("d1.nc");
    let first_values = std::fs::read(day_file(dir.path(), 7, 1)).unwrap();
    std::fs::write(&d1, first_values).unwrap();
    let err = two_day_run("existing_steps=0 revised_steps=8");
    let whole = "the source query is not step-local: reading the input of 8 steps";
    assert!(err.contains(whole), "{err}");
    // Nothing changed since: every step is left out of that query too (by
    // the run's function of valid_time, not a list), and none is forecast.
    let err = two_day_run("existing_steps=8 revised_steps=0");
    assert!(err.contains(skipped), "{err}");
}

#[test]
fn a_damaged_file_in_a_month_a_run_does_not_read_does_not_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 2);
    // The model's grid on 2019-12-31 and 2020-01-01: steps valid in two months.
    let input = dir.path().join("input");
    crate::synth_from(
        &input,
        "2019-12-31T00:00Z",
        8,
        "nc3",
        0,
        &["--files-per-day"],
    );
    let out = dir.path().join("out");
    let first = run(&config, &input, &out, &[]);
    assert!(first.starts_with("uqcast run: ok new_steps=8 "), "{first}");

    // The oldest step's file cut short (a bad disk, a partial restore).
    let oldest = parquet_files(&out.join("forecast")).remove(0);
    assert!(
        oldest.to_string_lossy().contains("month=12"),
        "{}",
        oldest.display()
    );
    // Kept for later: the same file with its Arrow schema damaged, which
    // only decoding its footer finds.
    let (mut bad_schema, span) = crate::sql::arrow_schema_span(&oldest);
    bad_schema[span.start + span.len() / 2] = b'!';
    let bytes = std::fs::read(&oldest).unwrap();
    std::fs::write(&oldest, &bytes[..bytes.len() / 2]).unwrap();
    let name = oldest.file_name().unwrap().to_str().unwrap();

    // A day's window (valid times in January) does not read December.
    let again = run(&config, &input, &out, &["--recheck-days", "1"]);
    assert!(
        again.starts_with("uqcast run: ok new_steps=0 existing_steps=8 revised_steps=0"),
        "{again}"
    );
    // A window that reaches it, and a query over the table, name it.
    let o = run_over_unchecked(&config, &input, &out, &["--recheck-days", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(name), "{}", stderr(&o));
    let table = format!("f={}", out.join("forecast").display());
    let o = uqcast(&["sql", "SELECT count(*) FROM f", "--table", &table]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(name), "{}", stderr(&o));

    // A query over other months does not decode that file's footer (the
    // table's schema comes from the newest step's); one over it names it.
    std::fs::write(&oldest, &bad_schema).unwrap();
    let january = "SELECT count(DISTINCT valid_time) AS n FROM f WHERE month = '01'";
    let o = uqcast(&["sql", january, "--table", &table, "--format", "csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "n\n5\n");
    let o = uqcast(&["sql", "SELECT count(*) FROM f", "--table", &table]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(name), "{}", stderr(&o));
}
