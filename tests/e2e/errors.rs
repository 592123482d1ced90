//! Bad input ends in one line naming the file and the field, a non-zero
//! exit, and no panic.

use std::path::Path;
use std::process::Command;

use crate::{stderr, synth, uqcast};

pub(crate) fn fails_with(args: &[&str], needles: &[&str]) {
    let o = uqcast(args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1 for {args:?}; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "'{n}' missing from: {err}");
    }
}

fn sql_over(path: &Path, query: &str, needles: &[&str]) {
    let table = format!("era5={}", path.display());
    fails_with(&["sql", query, "--table", &table], needles);
}

/// A minimal NetCDF3 file with a `time` axis and a variable; attributes vary by test.
pub(crate) fn write_nc3(path: &Path, time_units: Option<&str>, var: &str, units: &str) {
    let mut f = netcdf::create_with(path, netcdf::Options::_64BIT_OFFSET).unwrap();
    f.add_dimension("latitude", 2).unwrap();
    f.add_dimension("longitude", 2).unwrap();
    f.add_unlimited_dimension("time").unwrap();
    f.add_variable::<f32>("latitude", &["latitude"]).unwrap();
    f.add_variable::<f32>("longitude", &["longitude"]).unwrap();
    let mut t = f.add_variable::<i32>("time", &["time"]).unwrap();
    if let Some(u) = time_units {
        t.put_attribute("units", u).unwrap();
    }
    let mut v = f
        .add_variable::<f32>(var, &["time", "latitude", "longitude"])
        .unwrap();
    v.put_attribute("units", units).unwrap();
    f.enddef().unwrap();
    f.variable_mut("latitude")
        .unwrap()
        .put_values(&[1.0f32, 0.0], ..)
        .unwrap();
    f.variable_mut("longitude")
        .unwrap()
        .put_values(&[0.0f32, 1.0], ..)
        .unwrap();
    f.variable_mut("time")
        .unwrap()
        .put_values(&[1_051_896i32], ..)
        .unwrap();
    f.variable_mut(var)
        .unwrap()
        .put_values(&[280.0f32; 4], ..)
        .unwrap();
    f.close().unwrap();
}

/// A [`write_nc3`] file labelled kelvin holding 7.5 (°C) at 2020-01-01T00Z,
/// latitude 0, longitude 0: found wrong only when its data are read.
pub(crate) fn write_mislabelled(path: &Path) {
    write_nc3(path, Some("hours since 1900-01-01"), "t2m", "K");
    let mut file = netcdf::append(path).unwrap();
    file.variable_mut("t2m")
        .unwrap()
        .put_values(&[280.0f32, 280.0, 7.5, 280.0], ..)
        .unwrap();
    file.close().unwrap();
}

#[test]
fn missing_path() {
    fails_with(
        &["sql", "SELECT 1", "--table", "era5=/no/such/dir/x.nc"],
        &["/no/such/dir/x.nc", "no such file"],
    );
    // One name for two tables.
    fails_with(
        &[
            "sql",
            "SELECT 1",
            "--table",
            "t=/data/a.nc",
            "--table",
            "t=/data/b.nc",
        ],
        &["--table 't' is given twice", "/data/a.nc", "/data/b.nc"],
    );
    // Of object stores, S3 is read; another scheme says so.
    let gs = "gs://bucket/era5/*.nc";
    fails_with(
        &["sql", "SELECT 1", "--table", &format!("t={gs}")],
        &[gs, "gs:// locations are not supported", "s3://"],
    );
}

#[test]
fn truncated_files_in_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    for enc in ["nc3", "nc4"] {
        let d = dir.path().join(enc);
        synth(&d, 4, enc, &[]);
        let file = d.join("era5_t2m_2020010100_2020010118.nc");
        let bytes = std::fs::read(&file).unwrap();
        let cut = dir.path().join(format!("cut_{enc}.nc"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        sql_over(
            &cut,
            "SELECT avg(t2m) FROM era5",
            &[&format!("cut_{enc}.nc"), "truncated"],
        );
    }
    // A flipped bit in a NetCDF3 record count claims two billion steps: the
    // same one line, not a 34 GB allocation that aborts the process.
    let mut bytes =
        std::fs::read(dir.path().join("nc3/era5_t2m_2020010100_2020010118.nc")).unwrap();
    bytes[4..8].copy_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
    let flipped = dir.path().join("flipped.nc");
    std::fs::write(&flipped, bytes).unwrap();
    sql_over(
        &flipped,
        "SELECT avg(t2m) FROM era5",
        &["flipped.nc", "truncated: the header needs"],
    );
}

/// Four bytes of a NetCDF4 file's HDF5 object headers overwritten: libnetcdf
/// cannot open it, and HDF5, left with objects it cannot close, used to
/// print dozens of lines at exit after the error. One line, exit 1.
#[test]
fn corrupt_netcdf4_header() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 4, "nc4", &[]);
    let mut bytes = std::fs::read(dir.path().join("era5_t2m_2020010100_2020010118.nc")).unwrap();
    bytes[1000..1004].copy_from_slice(&[0xff; 4]);
    let bad = dir.path().join("bad_header.nc");
    std::fs::write(&bad, bytes).unwrap();
    sql_over(
        &bad,
        "SELECT avg(t2m) FROM era5",
        &["bad_header.nc", "cannot open as NetCDF"],
    );
}

/// One byte of a NetCDF4 file's HDF5 metadata changed so that libnetcdf
/// opens it but fails to list its variables, where the netcdf crate
/// unwraps the status: caught, one line naming the file, exit 1.
#[test]
fn netcdf4_metadata_the_netcdf_crate_unwraps() {
    let dir = tempfile::tempdir().unwrap();
    let bad = small_netcdf4_with(dir.path(), 3012, 234);
    sql_over(
        &bad,
        "SELECT avg(t2m) FROM era5",
        &[
            "damaged.nc: libnetcdf failed on it (corrupt file?)",
            "NetCDF: HDF error",
        ],
    );
}

/// One byte of a NetCDF4 file's HDF5 metadata changed so that HDF5 copies
/// through a wild pointer while libnetcdf lists the variables (SIGSEGV in
/// `H5HG_read`): the process cannot go on, but says which file, on one
/// line, and exits 1 instead of dying silently by the signal.
#[test]
fn netcdf4_metadata_that_crashes_hdf5() {
    let dir = tempfile::tempdir().unwrap();
    let bad = small_netcdf4_with(dir.path(), 3132, 240);
    sql_over(
        &bad,
        "SELECT avg(t2m) FROM era5",
        &["damaged.nc: libnetcdf crashed reading it (SIGSEGV)"],
    );
}

/// One byte changed so that HDF5 loops, in the same code, without end: the
/// watchdog ends the command once the call has computed for
/// `UQCAST_NETCDF_LOOP_SECONDS` of CPU time, or has run for
/// `UQCAST_NETCDF_STALL_SECONDS` (a loop's CPU time never passes its wall
/// time, so the lower wall limit ends it first), naming the file, exit 1.
/// Within those limits, after 3 s of CPU time, it looks in the file for
/// what makes HDF5 loop (a global heap object of size 0, the byte's
/// effect here) and, finding it, says so then rather than after the
/// minute of the default limit. A value that is not a number of seconds is
/// refused first.
#[test]
fn netcdf4_metadata_that_loops_hdf5() {
    let dir = tempfile::tempdir().unwrap();
    let bad = small_netcdf4_with(dir.path(), 3077, 95);
    let table = format!("era5={}", bad.display());
    let with_limits = |limits: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_uqcast"))
            .args(["sql", "SELECT avg(t2m) FROM era5", "--table", &table])
            .envs(limits.iter().copied())
            .output()
            .unwrap()
    };
    for (limits, needle) in [
        (
            &[][..],
            "damaged.nc: HDF5 loops without end on it: its global heap collection at byte \
             2981 holds an object of size 0 at byte 3181 (the file is damaged)",
        ),
        (
            &[("UQCAST_NETCDF_LOOP_SECONDS", "2")][..],
            "damaged.nc: libnetcdf has computed for 2 s of CPU time in one call reading it \
             (UQCAST_NETCDF_LOOP_SECONDS): the file is damaged",
        ),
        (
            &[
                ("UQCAST_NETCDF_LOOP_SECONDS", "60"),
                ("UQCAST_NETCDF_STALL_SECONDS", "2"),
            ],
            "damaged.nc: libnetcdf has not returned for 2 s reading it \
             (UQCAST_NETCDF_STALL_SECONDS): its storage stalled, or the file is damaged",
        ),
        (
            &[("UQCAST_NETCDF_STALL_SECONDS", "soon")],
            "error: UQCAST_NETCDF_STALL_SECONDS=soon: not a whole number of seconds above 0",
        ),
        (
            &[("UQCAST_NETCDF_LOOP_SECONDS", "0")],
            "error: UQCAST_NETCDF_LOOP_SECONDS=0: not a whole number of seconds above 0",
        ),
    ] {
        let o = with_limits(limits);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{limits:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{limits:?}: {err}");
        assert!(err.contains(needle), "{limits:?}: {err}");
    }
}

/// A two-step NetCDF4 file from `uqcast synth` (5° grid) with byte `at` set
/// to `value`. Such bytes were found by damaging files at random; the
/// offsets are where this writer and HDF5 1.10 put the metadata, and
/// `uqcast synth` writes the same bytes every time.
pub(crate) fn small_netcdf4_with(dir: &Path, at: usize, value: u8) -> std::path::PathBuf {
    let o = uqcast(&[
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--start",
        "2020-01-01T00:00Z",
        "--steps",
        "2",
        "--res",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut bytes = std::fs::read(dir.join("era5_t2m_2020010100_2020010106.nc")).unwrap();
    assert_eq!(
        bytes.len(),
        14_110,
        "the writer's layout changed: find another byte"
    );
    bytes[at] = value;
    let bad = dir.join("damaged.nc");
    std::fs::write(&bad, bytes).unwrap();
    bad
}

#[test]
fn not_netcdf() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.nc");
    std::fs::write(&f, "just text").unwrap();
    sql_over(
        &f,
        "SELECT 1",
        &["notes.nc", "cannot open as NetCDF (text, not NetCDF"],
    );

    // The CDS's download of a request that yields several files: a ZIP
    // archive of NetCDF files, named as a file and found in a folder.
    let nc = dir.path().join("synth");
    crate::synth(&nc, 2, "nc4", &[]);
    let zipped = dir.path().join("download.zip");
    {
        let mut archive = zip::ZipWriter::new(std::fs::File::create(&zipped).unwrap());
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        archive
            .start_file("data_stream-oper_stepType-instant.nc", stored)
            .unwrap();
        let data = std::fs::read_dir(&nc)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "nc"))
            .unwrap();
        std::io::Write::write_all(&mut archive, &std::fs::read(data).unwrap()).unwrap();
        archive.finish().unwrap();
    }
    sql_over(
        &zipped,
        "SELECT 1",
        &["download.zip", "a ZIP archive", "unzip it"],
    );
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    std::fs::copy(&zipped, downloads.join("2020-01.zip")).unwrap();
    std::fs::write(downloads.join("2020-02.grib"), b"GRIB\x00\x00\x42\x01").unwrap();
    sql_over(
        &downloads,
        "SELECT 1",
        &[
            "no NetCDF files",
            "1 .zip file(s)",
            "1 GRIB file(s)",
            "data_format",
        ],
    );

    // GRIB named .nc, and a download that never got its first byte.
    let grib = dir.path().join("t2m.nc");
    std::fs::write(&grib, b"GRIB\x00\x00\x42\x01\x00\x00").unwrap();
    sql_over(&grib, "SELECT 1", &["t2m.nc", "GRIB, not NetCDF"]);
    let empty = dir.path().join("empty.nc");
    std::fs::write(&empty, b"").unwrap();
    sql_over(&empty, "SELECT 1", &["empty.nc", "an empty file"]);
}

#[test]
fn missing_variable() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("msl_only.nc");
    write_nc3(&f, Some("hours since 1900-01-01"), "msl", "Pa");
    sql_over(
        &f,
        "SELECT 1",
        &["msl_only.nc", "variable 't2m' not found", "msl"],
    );
}

#[test]
fn time_axis_without_cf_units() {
    let dir = tempfile::tempdir().unwrap();
    let (none, bad) = (
        dir.path().join("no_units.nc"),
        dir.path().join("bad_units.nc"),
    );
    write_nc3(&none, None, "t2m", "K");
    write_nc3(&bad, Some("hours"), "t2m", "K");
    sql_over(&none, "SELECT 1", &["no_units.nc", "time:units", "missing"]);
    sql_over(&bad, "SELECT 1", &["bad_units.nc", "time:units", "since"]);
}

#[test]
fn wrong_units() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("celsius.nc");
    write_nc3(&f, Some("hours since 1900-01-01"), "t2m", "degC");
    sql_over(&f, "SELECT 1", &["celsius.nc", "t2m:units", "degC"]);
    // Labelled kelvin, holding a value in °C: named with its cell and step,
    // not forecast as 7.5 K.
    let f = dir.path().join("mislabelled.nc");
    write_mislabelled(&f);
    sql_over(
        &f,
        "SELECT avg(t2m) FROM era5",
        &[
            "mislabelled.nc: t2m at 2020-01-01T00:00:00Z, latitude 0, longitude 0 is 7.5 K",
            "outside the 150…350 K",
        ],
    );
}

#[test]
fn bad_sql() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 1, "nc4", &[]);
    sql_over(
        dir.path(),
        "SELEKT * FROM era5",
        &["error: query: sql parser error: Expected: an SQL statement, found: SELEKT"],
    );
    sql_over(dir.path(), "SELECT wind FROM era5", &["wind"]);
    sql_over(
        dir.path(),
        "SELECT * FROM missing_table",
        &["missing_table"],
    );
}

#[test]
fn bad_synth_and_sql_options_and_existing_output_survives() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    // (options after `--out`, what the message names); two steps from
    // 2020-01-01 00 UTC unless the options say otherwise.
    let two_steps = "--start 2020-01-01 --steps 2";
    let cases: Vec<(String, Vec<&str>)> = [
        ("--start soon --steps 2", vec!["start", "soon"]),
        ("--grid 3by4", vec!["grid", "3by4"]),
        ("--ood blob:1", vec!["ood", "blob:1"]),
        // A NaN shift would be written into the data; a disk of no radius,
        // off the globe, at a time not written or outside the box, or a
        // regime after the last step leaves data said to hold an event
        // without it.
        (
            "--ood disk:2020-01-01T06:00Z,45,260,6,nan",
            vec!["ood", "DELTA_K nan"],
        ),
        (
            "--ood disk:2020-01-01T06:00Z,45,260,-6,30",
            vec!["ood", "RADIUS_DEG -6"],
        ),
        (
            "--ood disk:2020-01-01T06:00Z,95,260,6,30",
            vec!["ood", "LAT 95"],
        ),
        (
            "--ood disk:2020-01-02T06:00Z,45,260,6,30",
            vec!["ood", "changes no grid cell", "TIME must be one of them"],
        ),
        (
            "--ood disk:2020-01-01T06:00Z,45,50,6,30",
            vec!["ood", "overlap the box"],
        ),
        (
            "--ood regime:2020-01-01T12:00Z,5",
            vec!["ood", "FROM_TIME must come by the last"],
        ),
        // Sizes that could not be held are refused before any allocation.
        (
            "--start 2020-01-01 --steps 1000000000",
            vec!["steps", "1000000000"],
        ),
        (
            "--start 2020-01-01 --steps 100000 --res 0.25",
            vec!["steps", "values in one file", "--files-per-day"],
        ),
    ]
    .into_iter()
    .map(|(options, needles)| {
        let options = if options.contains("--start") {
            options.to_string()
        } else {
            format!("{two_steps} {options}")
        };
        (options, needles)
    })
    .collect();
    for (options, needles) in &cases {
        let mut args = vec!["synth", "--out", out.to_str().unwrap()];
        args.extend(options.split_whitespace());
        fails_with(&args, needles);
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // A file where a folder of --out should be is named as such (the OS
    // says "Not a directory" about a path below it), and left as it was.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"precious").unwrap();
    let under = blocker.join("era5");
    fails_with(
        &[
            "synth",
            "--out",
            under.to_str().unwrap(),
            "--start",
            "2020-01-01",
            "--steps",
            "2",
        ],
        &[
            &format!("--out {}", under.display()),
            &format!("{} is a file, not a folder", blocker.display()),
        ],
    );
    assert_eq!(std::fs::read(&blocker).unwrap(), b"precious");
    // A failed Parquet write leaves an existing file untouched.
    let data = dir.path().join("data");
    synth(&data, 1, "nc4", &[]);
    let out = dir.path().join("keep.parquet");
    std::fs::write(&out, b"precious").unwrap();
    let table = format!("era5={}", data.display());
    fails_with(
        &[
            "sql",
            "SELECT nope FROM era5",
            "--table",
            &table,
            "--output",
            out.to_str().unwrap(),
        ],
        &["nope"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    // Parquet is not written under another format's name.
    let csv = dir.path().join("result.csv");
    let csv_arg = csv.to_str().unwrap();
    fails_with(
        &["sql", "SELECT 1", "--output", csv_arg],
        &[
            "--output",
            "result.csv",
            "must end in .parquet",
            "--format csv",
        ],
    );
    assert!(!csv.exists());
    // A place that cannot be written fails in the OS's words before the
    // query runs. In /proc, DataFusion's local writer retried creating its
    // file without end at full CPU (exit 124 here: `timeout` ended it).
    let o = Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_uqcast"), "sql", "SELECT 1 AS a"])
        .args(["--output", "/proc/uqcast-result.parquet"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "/proc/uqcast-result.parquet: cannot write the result: No such file or directory"
        ),
        "{err}"
    );
}
