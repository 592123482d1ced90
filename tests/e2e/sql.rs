//! `uqcast sql` and `uqcast synth` through the binary.

use std::path::Path;
use std::process::Command;

use crate::errors::fails_with;

use crate::{sql_csv, stderr, stdout, synth, uqcast};

#[test]
fn formats_and_encodings_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    synth(&a, 4, "nc3", &[]);
    synth(&b, 4, "nc4", &["--files-per-day"]);
    let query = "SELECT valid_time, latitude, longitude, t2m AS t FROM era5 ORDER BY valid_time, latitude DESC, longitude";
    let csv = |d: &std::path::Path| sql_csv(&format!("era5={}", d.display()), query);
    let (x, y) = (csv(&a), csv(&b));
    // A reader that stops early (`| head`) ends the command quietly and
    // successfully, in every format (the results are ~500 kB, more than a
    // pipe holds).
    for format in ["csv", "json", "table"] {
        let table = format!("era5={}", a.display());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_uqcast"))
            .args(["sql", query, "--table", &table, "--format", format])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 100];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{format}: {:?} {}",
            o.status,
            stderr(&o)
        );
    }
    assert!(x.starts_with("valid_time,latitude,longitude,t\n"), "{x}");
    assert_eq!(x.lines().count(), 1 + 4 * 39 * 68);
    // Same coordinates; values within the int16 packing precision: the field
    // spans < 80 K over 65,532 steps, so half a step is < 0.61 mK.
    for (p, q) in x.lines().zip(y.lines()).skip(1) {
        let (pk, pv) = p.rsplit_once(',').unwrap();
        let (qk, qv) = q.rsplit_once(',').unwrap();
        assert_eq!(pk, qk);
        let (pv, qv): (f64, f64) = (pv.parse().unwrap(), qv.parse().unwrap());
        assert!((pv - qv).abs() < 0.61e-3 + 3e-5, "{p} vs {q}");
    }

    let table = format!("era5={}", a.display());
    let o = uqcast(&[
        "sql",
        "SELECT latitude, count(*) AS n FROM era5 WHERE latitude > 80 GROUP BY latitude ORDER BY latitude",
        "--table",
        &table,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"latitude": 81.0, "n": 4 * 68}),
            serde_json::json!({"latitude": 83.0, "n": 4 * 68})
        ]
    );

    let o = uqcast(&["sql", "SELECT count(*) AS n FROM era5", "--table", &table]);
    assert!(stdout(&o).contains("| 10608 |"), "{}", stdout(&o));
}

#[test]
fn parquet_output_reads_back_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 2, "nc4", &[]);
    let out = dir.path().join("north.parquet");
    let table = format!("era5={}", data.display());
    let o = uqcast(&[
        "sql",
        "SELECT * FROM era5 WHERE latitude >= 60",
        "--table",
        &table,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = format!("north={}", out.display());
    let o = uqcast(&[
        "sql",
        "SELECT count(*) AS n, min(latitude) AS lo FROM north",
        "--table",
        &back,
        "--format",
        "csv",
    ]);
    assert_eq!(stdout(&o), "n,lo\n1632,61.0\n", "{}", stderr(&o));
    // No temporary files are left beside the output.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Damage in the copy's footer, then in its metadata: one named line
    // each. The first ended in a parquet-crate overflow panic before the
    // footer check (`src/session/footers.rs`).
    let bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    let copy = damaged.join("north.parquet");
    let table = format!("north={}", damaged.display());
    let query = ["sql", "SELECT count(*) FROM north", "--table", &table];
    let mut long_footer = bytes.clone();
    long_footer[n - 8..n - 4].copy_from_slice(&(n as u32).to_le_bytes());
    std::fs::write(&copy, &long_footer).unwrap();
    let claim = format!("gives {n} bytes of metadata, the file holds {n} bytes");
    fails_with(
        &query,
        &["damaged/north.parquet", "corrupt Parquet footer", &claim],
    );
    // Damaged metadata: a table on the folder names the file (DataFusion's
    // error names only the folder), and one on the file says DataFusion's
    // "Parquet error:" around the parquet crate's own once.
    let mut bad_metadata = bytes;
    bad_metadata[n - 20..n - 14].fill(0xff);
    std::fs::write(&copy, &bad_metadata).unwrap();
    fails_with(
        &query,
        &["damaged/north.parquet: not readable as Parquet: "],
    );
    let table = format!("north={}", copy.display());
    let o = uqcast(&["sql", "SELECT count(*) FROM north", "--table", &table]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("damaged/north.parquet: Parquet error: "),
        "{err}"
    );
    assert!(!err.contains("Parquet error: Parquet error"), "{err}");

    // A stored Arrow schema that makes arrow's decoder panic (found by
    // damaging files at random): one named line, from a table on the folder
    // and on the file, not a panic's report.
    std::fs::write(&copy, with_schema_that_panics(&out)).unwrap();
    fails_with(
        &query,
        &["damaged/north.parquet: not readable as Parquet: its metadata does not decode: "],
    );
    fails_with(
        &["sql", "SELECT count(*) FROM north", "--table", &table],
        &["damaged/north.parquet: Parquet error: its metadata does not decode: "],
    );
}

/// The bytes of the Parquet file at `path`, and where in them its stored
/// Arrow schema lies (base64, in the footer's key-value metadata).
pub(crate) fn arrow_schema_span(path: &std::path::Path) -> (Vec<u8>, std::ops::Range<usize>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let encoded = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == "ARROW:schema"))
        .and_then(|e| e.value.clone())
        .unwrap();
    let bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(encoded.len())
        .position(|w| w == encoded.as_bytes())
        .unwrap();
    (bytes, at..at + encoded.len())
}

/// The Parquet file at `path` with one character of its stored Arrow
/// schema changed so that arrow's IPC decoder panics on it: the first such
/// change, found by trying each in turn.
pub(crate) fn with_schema_that_panics(path: &std::path::Path) -> Vec<u8> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let (bytes, schema) = arrow_schema_span(path);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for i in schema {
        for &c in alphabet {
            let mut candidate = bytes.clone();
            candidate[i] = c;
            let decoded = std::panic::catch_unwind(|| {
                let _ =
                    ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(candidate.clone()));
            });
            if decoded.is_err() {
                return candidate;
            }
        }
    }
    panic!("no one-character change of the schema makes arrow panic");
}

/// Under `UQCAST_QUERY_MEMORY_GB` a sort larger than the limit spills to
/// temporary files and returns what it returns without one; a hash join's
/// build side, which cannot spill, fails in one line that names the
/// setting. A value that is not a size is refused first.
#[test]
fn queries_keep_to_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 8 steps of the 0.25° box: 1.3 M rows, about 40 MB to sort.
    synth(dir.path(), 8, "nc3", &["--grid", "305x537"]);
    let table = format!("e={}", dir.path().display());
    let with_limit = |limit: Option<&str>, query: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_uqcast"));
        command.args(["sql", query, "--table", &table, "--format", "csv"]);
        if let Some(gb) = limit {
            command.env("UQCAST_QUERY_MEMORY_GB", gb);
        }
        command.output().unwrap()
    };
    let sort = "SELECT * FROM e ORDER BY t2m DESC, latitude, longitude, valid_time";
    let free = with_limit(None, sort);
    let spilled = with_limit(Some("0.05"), sort);
    assert!(spilled.status.success(), "{}", stderr(&spilled));
    assert_eq!(stdout(&free).lines().count(), 8 * 305 * 537 + 1);
    assert!(
        stdout(&spilled) == stdout(&free),
        "a spilled sort changed rows"
    );
    let analyzed = with_limit(Some("0.05"), &format!("EXPLAIN ANALYZE {sort}"));
    let spills: usize = stdout(&analyzed)
        .split("spill_count=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .sum();
    assert!(spills > 0, "nothing spilled: {}", stdout(&analyzed));

    let join = "SELECT count(*) FROM e a JOIN e b ON a.latitude = b.latitude \
                AND a.longitude = b.longitude AND a.valid_time = b.valid_time";
    let refused = with_limit(Some("0.01"), join);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("Resources exhausted")
            && err.contains("may hold 0.01 GB; UQCAST_QUERY_MEMORY_GB sets it)"),
        "{err}"
    );
    let bad = with_limit(Some("lots"), "SELECT 1");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("UQCAST_QUERY_MEMORY_GB=lots: not a number of GB above 0"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn synth_is_reproducible_and_records_ood_truth() {
    let dir = tempfile::tempdir().unwrap();
    let ood = ["--ood", "disk:2020-01-01T06:00Z,45,260,8,30"];
    synth(&dir.path().join("x"), 3, "nc4", &ood);
    synth(&dir.path().join("y"), 3, "nc4", &ood);
    let file = "era5_t2m_2020010100_2020010112.nc";
    let read = |d: &str| std::fs::read(dir.path().join(d).join(file)).unwrap();
    assert_eq!(read("x"), read("y"));
    let truth: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("x/truth/ood.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(truth["steps"][0][0], "2020-01-01T06:00:00Z");
    // The disk shows in the data: +30 K at 45°N, 260°E only at 06 UTC.
    let table = format!("era5={}", dir.path().join("x").display());
    let o = uqcast(&[
        "sql",
        "SELECT valid_time, round(t2m) AS t FROM era5 WHERE latitude = 45 AND longitude = 259 ORDER BY valid_time",
        "--table",
        &table,
        "--format",
        "csv",
    ]);
    let t: Vec<f64> = stdout(&o)
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(t[1] - t[0] > 20.0 && t[1] - t[2] > 20.0, "{t:?}");
}

/// A legacy CDS file of a request reaching into ERA5T (t2m stored as
/// (time, expver, latitude, longitude)) reads as the same data without the
/// dimension: one value per cell and step, whichever slice holds it.
#[test]
fn era5_and_era5t_in_one_file_read_as_one_field() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, mixed) = (dir.path().join("plain"), dir.path().join("mixed"));
    synth(&plain, 4, "nc3", &[]);
    synth(&mixed, 4, "nc3", &["--era5t-from", "2020-01-01T12:00Z"]);
    let file = "era5_t2m_2020010100_2020010118.nc";
    let nc = netcdf::open(mixed.join(file)).unwrap();
    let dims: Vec<String> = nc
        .variable("t2m")
        .unwrap()
        .dimensions()
        .iter()
        .map(|d| d.name())
        .collect();
    assert_eq!(dims, ["time", "expver", "latitude", "longitude"]);
    drop(nc);

    let csv = |d: &std::path::Path| {
        let query = "SELECT valid_time, latitude, longitude, t2m FROM era5 ORDER BY 1, 2, 3";
        sql_csv(&format!("era5={}", d.display()), query)
    };
    let (want, got) = (csv(&plain), csv(&mixed));
    assert_eq!(want.lines().count(), 1 + 4 * 39 * 68);
    assert!(
        got == want,
        "the mixed file reads otherwise than the plain one"
    );
    let o = uqcast(&[
        "synth",
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--start",
        "2020-01-01T00:00Z",
        "--steps",
        "2",
        "--era5t-from",
        "yesterday",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("synth option 'era5t-from': 'yesterday' is not a UTC time"),
        "{}",
        stderr(&o)
    );
}

/// One byte of a Parquet data page changed so that the parquet crate
/// panics decoding it ("attempt to shift left with overflow"; found by
/// damaging bytes at random). DataFusion reports a panicked task without
/// the file; the command names the file, on one line, exit 1.
#[test]
fn a_damaged_parquet_page_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = uqcast(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--start",
        "2020-01-01T00:00Z",
        "--steps",
        "8",
        "--seed",
        "7",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = dir.path().join("table");
    std::fs::create_dir(&table).unwrap();
    let file = table.join("era5.parquet");
    let o = uqcast(&[
        "sql",
        "SELECT * FROM era5",
        "--table",
        &format!("era5={}", data.display()),
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        bytes.len(),
        434_352,
        "the writer's layout changed: find another byte"
    );
    bytes[324_539] = 105;
    std::fs::write(&file, bytes).unwrap();
    fails_with(
        &[
            "sql",
            "SELECT count(*) AS n, avg(t2m) AS m FROM f",
            "--table",
            &format!("f={}", table.display()),
        ],
        &[
            "table 'f'",
            "table/era5.parquet: not readable as Parquet (a damaged page?)",
        ],
    );
}

/// A query from a file: the shipped source query as a pipeline runs it
/// (it begins with a comment, which the command line takes for an option),
/// from standard input too, and files that hold no query are named.
#[test]
fn a_query_file_runs_as_the_query_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 2, "nc3", &["--grid", "77x135"]);
    let table = format!("era5={}", data.display());
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/era5_na_1deg.sql");
    let file_sql = std::fs::read_to_string(shipped).unwrap();
    assert!(file_sql.trim_start().starts_with("--"), "{file_sql}");
    let count = |args: &[&str]| {
        let mut all = vec!["sql"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--table", &table, "--format", "csv"]);
        let o = uqcast(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().count()
    };
    // The 1° North America box, 77 × 135 cells, two steps, and a header.
    assert_eq!(count(&["--file", shipped]), 1 + 2 * 77 * 135);

    let mut child = Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .args(["sql", "-f", "-", "--table", &table, "--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"-- steps\nSELECT DISTINCT valid_time FROM era5;\n",
    )
    .unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1 + 2, "{}", stdout(&o));

    // Statements before the last run first: a view the query reads.
    let views = dir.path().join("views.sql");
    std::fs::write(
        &views,
        "-- cells north of 60°\nCREATE VIEW north AS SELECT * FROM era5 WHERE latitude > 60;\n\
         SELECT count(*) AS n FROM north WHERE valid_time = '2020-01-01T00:00:00Z';\n",
    )
    .unwrap();
    let o = uqcast(&["sql", "-f", views.to_str().unwrap(), "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Latitudes 61…83 of the 1° grid, 135 longitudes.
    assert!(
        stdout(&o).contains(&format!("| {} ", 23 * 135)),
        "{}",
        stdout(&o)
    );
    let broken = dir.path().join("broken.sql");
    std::fs::write(
        &broken,
        "CREATE VIEW v AS SELECT * FROM nowhere;\nSELECT 1;\n",
    )
    .unwrap();

    let typo = dir.path().join("typo.sql");
    std::fs::write(&typo, "SELECT 1;\nSELEC 2;\n").unwrap();

    let comments = dir.path().join("comments.sql");
    std::fs::write(&comments, "-- to do\n\n  -- later\n").unwrap();
    let flags = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/flag_high_eu.sql");
    let missing = dir.path().join("missing.sql");
    for (file, needles) in [
        (
            comments.to_str().unwrap(),
            &["comments.sql", "holds no SQL"][..],
        ),
        (
            flags,
            &[
                "flag_high_eu.sql",
                "placeholder {{tile_degrees}}",
                "[flags]",
            ],
        ),
        (
            missing.to_str().unwrap(),
            &["--file", "missing.sql", "No such file"],
        ),
        (
            broken.to_str().unwrap(),
            &["broken.sql", "statement 1 of 2", "nowhere", "not found"],
        ),
        // The parser reads the whole file first: its error names the
        // file, and the line, not a statement.
        (typo.to_str().unwrap(), &["typo.sql", "SELEC", "Line: 2"]),
    ] {
        fails_with(&["sql", "--file", file, "--table", &table], needles);
    }
    // A table the query reads and no --table gave: which were given, and how.
    fails_with(
        &["sql", "-f", views.to_str().unwrap()],
        &[
            "statement 1 of 2: table era5 is not among the tables given (none)",
            "'datafusion.public.era5' not found",
        ],
    );
    let forecast = format!("forecast={}", data.display());
    fails_with(
        &["sql", "SELECT * FROM era5", "--table", &forecast],
        &[
            "table era5 is not among the tables given (forecast)",
            "add --table era5=PATH",
        ],
    );
    // Both: a usage error, as clap reports them (exit 2).
    let o = uqcast(&["sql", "SELECT 1", "--file", shipped]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

/// A table's files are inspected once and kept (`$UQCAST_CACHE_DIR/netcdf/`);
/// a file replaced in place under its name is read as it is now.
#[test]
fn kept_inspections_follow_a_file_replaced_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (data, later) = (dir.path().join("data"), dir.path().join("later"));
    crate::synth_from(&data, "2020-01-01T00:00Z", 2, "nc4", 1, &[]);
    crate::synth_from(&later, "2021-06-01T00:00Z", 2, "nc4", 1, &[]);
    let query = |table: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_uqcast"))
            .env("UQCAST_CACHE_DIR", &cache)
            .args(["sql", "--format", "csv", "--table"])
            .arg(format!("era5={}", table.display()))
            .arg("SELECT min(valid_time) AS first, count(*) AS n FROM era5")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let before = query(&data);
    assert!(before.contains("2020-01-01T00:00:00Z"), "{before}");
    let kept: Vec<_> = std::fs::read_dir(cache.join("netcdf")).unwrap().collect();
    assert_eq!(kept.len(), 1, "one location, one kept file");
    assert_eq!(query(&data), before, "read from what was kept");
    // The file's bytes replaced by another's, under its own name.
    let name = |folder: &Path| {
        let mut paths = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().path());
        paths
            .find(|p| p.extension().is_some_and(|x| x == "nc"))
            .unwrap()
    };
    std::fs::copy(name(&later), name(&data)).unwrap();
    let after = query(&data);
    assert!(after.contains("2021-06-01T00:00:00Z"), "{after}");
}
