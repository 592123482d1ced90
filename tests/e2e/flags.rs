//! The flags table of `uqcast run`: made per step (`flags.per_step`) by
//! runs that add, revise or miss steps, it is the table the whole-table
//! query makes; flags made by other settings, or missing steps, are made
//! again by the next run even when it has nothing new to forecast.

use std::path::{Path, PathBuf};

use crate::pipeline::{run_over, run_over_unchecked, trained};
use crate::{sql_csv, stderr, stdout, synth_seeded};

fn run(config: &Path, input: &Path, output: &Path, extra: &[&str]) -> String {
    stdout(&run_over(config, input, output, extra))
}

/// The flags table's rows in the file's own order (the tests' steps are
/// all in January 2020: one file).
fn flags(out: &Path) -> String {
    let table = format!("f={}", out.join("flags").display());
    sql_csv(&table, "SELECT * FROM f")
}

/// A trained model's pipeline, whose flags SQL runs over the whole table,
/// and a copy of it with `per_step = true`.
fn pipelines(dir: &Path) -> (PathBuf, PathBuf) {
    let whole_table = trained(dir, 2);
    let per_step = dir.join("per_step.toml");
    let text = std::fs::read_to_string(&whole_table).unwrap();
    assert!(text.contains("min_fraction = 0.3\n"));
    std::fs::write(
        &per_step,
        text.replace(
            "min_fraction = 0.3\n",
            "min_fraction = 0.3\nper_step = true\n",
        ),
    )
    .unwrap();
    (whole_table, per_step)
}

/// The flags file of January 2020, the month of the tests' steps.
fn january(out: &Path) -> PathBuf {
    out.join("flags/year=2020/month=01/flags_202001.parquet")
}

#[test]
fn flags_made_per_step_are_the_whole_tables_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (whole_table, per_step) = pipelines(dir.path());
    let input = dir.path().join("input");
    synth_seeded(&input, 12, "nc3", 7, &["--files-per-day"]);
    let out = dir.path().join("out");
    // What one run of the whole-table query over the same input makes.
    let whole = |name: &str| {
        let fresh = dir.path().join(name);
        run(&whole_table, &input, &fresh, &[]);
        flags(&fresh)
    };

    run(&per_step, &input, &out, &["--until", "2020-01-02T06:00Z"]);
    let after_two_days = std::fs::read(january(&out)).unwrap();
    let rest = run(&per_step, &input, &out, &[]);
    assert!(
        rest.starts_with("uqcast run: ok new_steps=6 existing_steps=6"),
        "{rest}"
    );
    let expected = whole("whole-a");
    assert!(expected.lines().count() > 12, "{expected}");
    assert_eq!(flags(&out), expected, "flags of two runs");

    // The last day revised: its steps are flagged again.
    let revised = dir.path().join("revised");
    synth_seeded(&revised, 12, "nc3", 8, &["--files-per-day"]);
    std::fs::copy(
        revised.join("era5_t2m_20200103.nc"),
        input.join("era5_t2m_20200103.nc"),
    )
    .unwrap();
    let o = run(&per_step, &input, &out, &["--recheck-days", "1"]);
    assert!(o.contains("revised_steps=4"), "{o}");
    let expected = whole("whole-b");
    assert_ne!(expected, flags(&dir.path().join("whole-a")));
    assert_eq!(flags(&out), expected, "flags after a revision");

    // Flags of fewer steps than the table holds (a run killed between its
    // steps and its flags): the next run flags the rest, with nothing new.
    std::fs::write(january(&out), &after_two_days).unwrap();
    let o = run(&per_step, &input, &out, &[]);
    assert!(o.contains("new_steps=0"), "{o}");
    assert_eq!(
        flags(&out),
        expected,
        "flags of the steps a killed run left"
    );

    // Revised input that cannot be forecast (a cell of its last step
    // missing): the run fails, and the revised steps' flags were taken out
    // before it forecast anything, so none is left that may no longer
    // belong to the forecast; the next run, on sound input, flags them.
    std::fs::copy(
        revised.join("era5_t2m_20200102.nc"),
        dir.path().join("d2.nc"),
    )
    .unwrap();
    let day2 = input.join("era5_t2m_20200102.nc");
    std::fs::copy(dir.path().join("d2.nc"), &day2).unwrap();
    missing_cell(&day2, 3);
    let o = run_over_unchecked(&per_step, &input, &out, &["--recheck-days", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("t2m is missing at latitude"),
        "{}",
        stderr(&o)
    );
    // Those it forecast before the broken step (as many as it got to).
    let rewritten = stderr(&o).matches("(its input was revised)").count();
    assert!(rewritten < 4, "{}", stderr(&o));
    let steps = sql_csv(
        &format!("f={}", out.join("flags").display()),
        "SELECT count(DISTINCT valid_time) AS n FROM f",
    );
    assert_eq!(
        steps.lines().nth(1),
        Some("8"),
        "12 steps, 4 withdrawn: {steps}"
    );
    std::fs::copy(dir.path().join("d2.nc"), &day2).unwrap();
    let o = run(&per_step, &input, &out, &["--recheck-days", "2"]);
    let rest = format!("revised_steps={}", 4 - rewritten);
    assert!(o.contains(&rest), "{rest}: {o}");
    let expected = whole("whole-b2");
    assert_eq!(flags(&out), expected, "flags after a failed revision");

    // Other settings: every step is flagged again, with nothing new.
    for config in [&per_step, &whole_table] {
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(
            config,
            text.replace("min_fraction = 0.3", "min_fraction = 0.1"),
        )
        .unwrap();
    }
    let before = flags(&out);
    let o = run(&per_step, &input, &out, &[]);
    assert!(o.contains("new_steps=0"), "{o}");
    let expected = whole("whole-c");
    assert_ne!(expected, before, "the new setting flags other tiles");
    assert_eq!(flags(&out), expected, "flags after a settings change");

    // Nothing new, the same settings: the flags file is not written.
    let at = std::fs::metadata(january(&out))
        .unwrap()
        .modified()
        .unwrap();
    // Its summary still counts the table's tiles (read from the file).
    let summary = run(&per_step, &input, &out, &[]);
    let tiles = flags(&out).lines().count() - 1;
    assert!(summary.contains(&format!(" tiles={tiles} ")), "{summary}");
    let again = std::fs::metadata(january(&out))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(at, again);

    // A flags file that cannot be read is said and made again from the
    // forecast table. Cut short, by a run with nothing new (it reads the
    // footer); with a page overwritten (its footer sound) or cut short, by
    // a run that withdraws revised steps' flags before forecasting them
    // again (it reads the rows).
    let path = january(&out);
    let sound = std::fs::read(&path).unwrap();
    std::fs::write(&path, &sound[..sound.len() / 2]).unwrap();
    let o = run_over(&per_step, &input, &out, &[]);
    assert!(stdout(&o).contains("new_steps=0"), "{}", stdout(&o));
    let said = stderr(&o);
    assert!(
        said.contains("flags_202001.parquet") && said.contains("made again from the forecast"),
        "{said}"
    );
    assert_eq!(flags(&out), expected, "flags made again");
    for (seed, page) in [(9, true), (10, false)] {
        let sound = std::fs::read(&path).unwrap();
        if page {
            crate::pipeline_errors::damage_column(&path, "mean_eu");
        } else {
            std::fs::write(&path, &sound[..sound.len() / 2]).unwrap();
        }
        let again = dir.path().join(format!("revised-{seed}"));
        synth_seeded(&again, 12, "nc3", seed, &["--files-per-day"]);
        std::fs::copy(
            again.join("era5_t2m_20200103.nc"),
            input.join("era5_t2m_20200103.nc"),
        )
        .unwrap();
        let o = run_over(&per_step, &input, &out, &["--recheck-days", "1"]);
        assert!(stdout(&o).contains("revised_steps=4"), "{}", stdout(&o));
        let said = stderr(&o);
        assert_eq!(
            said.matches("made again from the forecast").count(),
            1,
            "{said}"
        );
        let expected = whole(&format!("whole-{seed}"));
        assert_eq!(flags(&out), expected, "flags made again, page {page}");
    }
}

/// The flags table is one file a month: a run rewrites only the months of
/// the steps it wrote, and the folder reads as the table the whole-table
/// query makes; the one-file table of earlier runs is split into months,
/// and a month whose steps left the forecast table loses its file.
#[test]
fn flags_are_a_file_a_month_and_a_run_rewrites_only_its_steps_months() {
    let dir = tempfile::tempdir().unwrap();
    let (whole_table, per_step) = pipelines(dir.path());
    // Input steps from 2020-01-31T00:00Z: forecasts valid from 06:00, three
    // in January and nine in February.
    let input = dir.path().join("input");
    crate::synth_from(
        &input,
        "2020-01-31T00:00Z",
        12,
        "nc3",
        7,
        &["--files-per-day"],
    );
    let out = dir.path().join("out");
    let month =
        |out: &Path, m: &str| out.join(format!("flags/year=2020/month={m}/flags_2020{m}.parquet"));
    let ordered = |out: &Path| {
        sql_csv(
            &format!("f={}", out.join("flags").display()),
            "SELECT * FROM f ORDER BY valid_time, tile_lat, tile_lon",
        )
    };

    run(&per_step, &input, &out, &["--until", "2020-01-31T12:00Z"]);
    assert!(month(&out, "01").is_file());
    assert!(!month(&out, "02").exists());
    let january = std::fs::read(month(&out, "01")).unwrap();
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let january_at = modified(&month(&out, "01"));

    let rest = run(&per_step, &input, &out, &[]);
    assert!(rest.contains("new_steps=9 existing_steps=3"), "{rest}");
    assert_eq!(
        modified(&month(&out, "01")),
        january_at,
        "January rewritten"
    );
    assert_eq!(std::fs::read(month(&out, "01")).unwrap(), january);
    let fresh = dir.path().join("fresh");
    let whole = run(&whole_table, &input, &fresh, &[]);
    assert_eq!(ordered(&out), ordered(&fresh));
    let tiles = |summary: &str| {
        let counts = summary.split_once(" tiles=").unwrap().1;
        counts.split_once(" device=").unwrap().0.to_string()
    };
    assert_eq!(tiles(&rest), tiles(&whole), "{rest}\n{whole}");
    let months = sql_csv(
        &format!("f={}", out.join("flags").display()),
        "SELECT month, count(DISTINCT valid_time) AS steps FROM f GROUP BY month ORDER BY month",
    );
    assert_eq!(months, "month,steps\n01,3\n02,9\n");

    // The one-file table of earlier runs (here of February's steps): its
    // rows become February's file, and it goes. They are taken as they
    // are, not made again: a February step damaged meanwhile is not read.
    let legacy = out.join("flags/flags.parquet");
    std::fs::rename(month(&out, "02"), &legacy).unwrap();
    let step = out.join("forecast/year=2020/month=02/t2m_20200201T0600.parquet");
    let sound = std::fs::read(&step).unwrap();
    crate::pipeline_errors::damage_column(&step, "t2m_eu");
    let migrated = run(&per_step, &input, &out, &[]);
    std::fs::write(&step, sound).unwrap();
    assert!(migrated.contains("new_steps=0"), "{migrated}");
    assert_eq!(tiles(&migrated), tiles(&whole));
    assert!(!legacy.exists());
    assert_eq!(ordered(&out), ordered(&fresh));

    // February's steps taken out of the forecast table (and the input):
    // its flags file goes too, January's stays as it was.
    std::fs::remove_dir_all(out.join("forecast/year=2020/month=02")).unwrap();
    let fewer = run(&per_step, &input, &out, &["--until", "2020-01-31T12:00Z"]);
    assert!(fewer.contains("new_steps=0 existing_steps=3"), "{fewer}");
    assert!(!out.join("flags/year=2020/month=02").exists());
    assert_eq!(std::fs::read(month(&out, "01")).unwrap(), january);
}

/// Sets the cell (10, 10) of step `step` of the NetCDF3 file at `path` to
/// the fill value: t2m is missing there.
fn missing_cell(path: &Path, step: usize) {
    let path = path.to_path_buf();
    // On the NetCDF I/O thread, as the reader's own calls.
    uqcast_netcdf::io_thread::run(move || {
        let mut file = netcdf::append(&path).unwrap();
        let mut t2m = file.variable_mut("t2m").unwrap();
        t2m.put_values(&[uqcast_netcdf::writer::NC3_FILL], [step, 10, 10])
            .unwrap();
        file.close().unwrap();
    });
}
