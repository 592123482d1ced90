//! `s3://` inputs against a real S3-compatible server on loopback (s3s-fs,
//! which `.ci/s3-server` installs and checks request signatures): NetCDF
//! tables and the forecast job read from a bucket match the same files read
//! from disk, Parquet output is queried in place, NetCDF3 tables are planned
//! from headers and download only what a query reads, downloads are cached
//! and refreshed when an object changes, and bad credentials, buckets and
//! objects fail naming the `s3://` URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::pipeline::{forecast_csv, trained, trained_over, walk_all};
use crate::{free_port, stderr, stdout, synth_seeded, wait_until_listening};

pub const BUCKET: &str = "era5-bucket";
const KEY_ID: &str = "uqcast-test";
pub const SECRET: &str = "uqcast-test-secret";

/// The server binary: `UQCAST_S3S_FS`, else where `.ci/s3-server` puts it.
fn server_binary() -> PathBuf {
    let path = std::env::var_os("UQCAST_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs"));
    assert!(
        path.is_file(),
        "{} is missing: the s3:// tests need an S3-compatible server; run .ci/s3-server \
         (or .ci/run, which does), or point UQCAST_S3S_FS at an s3s-fs binary",
        path.display()
    );
    path
}

/// An s3s-fs server serving `root` (one folder per bucket), killed on drop.
pub struct Server {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_listening(port, "s3s-fs");
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    /// The folder holding `key` in the bucket (writing there stores objects).
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// `uqcast args` with this server's endpoint and `secret`, its cache in `cache`.
    fn uqcast_with(&self, secret: &str, cache: &Path, args: &[&str]) -> Output {
        self.command(secret, cache).args(args).output().unwrap()
    }

    /// `uqcast` set up for this server, with `secret` and its cache in `cache`.
    pub fn command(&self, secret: &str, cache: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_uqcast"));
        self.set_up(&mut command, secret, cache);
        command
    }

    /// Sets `command` up for this server (and no other S3: the caller's
    /// own AWS settings are removed), with `secret` and its cache in `cache`.
    pub fn set_up(&self, command: &mut Command, secret: &str, cache: &Path) {
        without_aws(command);
        command
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .env("UQCAST_CACHE_DIR", cache);
    }
}

/// `uqcast` without the caller's AWS settings (a developer's own must not
/// reach a test, nor a real bucket).
fn uqcast_without_aws() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_uqcast"));
    without_aws(&mut command);
    command
}

fn without_aws(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(key);
        }
    }
}

impl Server {
    /// Stores `body` at `folder/name` through the S3 API, as another writer
    /// would (s3s-fs keeps ETags of what it stored, not of files changed beside it).
    pub fn put(&self, name: &str, folder: &str, body: &[u8]) {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap();
        let path = object_store::path::Path::from(format!("{folder}/{name}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(store.put(&path, body.to_vec().into()))
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn sql_csv(output: &Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    stdout(output)
}

#[test]
fn s3_tables_and_runs_read_as_local_files_do() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let config = trained(work.path(), 4);
    let config = config.to_str().unwrap();
    let uq = |args: &[&str]| server.uqcast_with(SECRET, &cache, args);

    // NetCDF4 (the job's data) and NetCDF3 (other values) in the bucket.
    copy_tree(&work.path().join("data"), &server.path("era5/nc4"));
    let nc3 = work.path().join("nc3");
    synth_seeded(&nc3, 3, "nc3", 11, &[]);
    copy_tree(&nc3, &server.path("era5/nc3"));

    let query = "SELECT valid_time, count(*) AS n, sum(t2m) AS s, min(latitude) AS lat \
                 FROM t GROUP BY valid_time ORDER BY valid_time";
    for (local, remote) in [
        (work.path().join("data"), format!("s3://{BUCKET}/era5/nc4/")),
        (nc3.clone(), format!("s3://{BUCKET}/era5/nc3/*.nc")),
    ] {
        let local = format!("t={}", local.display());
        let from_disk = sql_csv(&uq(&["sql", query, "--table", &local, "--format", "csv"]));
        let remote_table = format!("t={remote}");
        let o = uq(&["sql", query, "--table", &remote_table, "--format", "csv"]);
        assert_eq!(sql_csv(&o), from_disk, "{remote}");
        assert!(stderr(&o).contains("downloading s3://"), "{}", stderr(&o));
        // Read again: the cached copies serve, nothing is downloaded.
        let again = uq(&["sql", query, "--table", &remote_table, "--format", "csv"]);
        assert_eq!(sql_csv(&again), from_disk);
        assert!(
            !stderr(&again).contains("downloading"),
            "{}",
            stderr(&again)
        );
    }

    // A query's result stored as one object, read back as it was computed.
    let nc4_table = format!("t=s3://{BUCKET}/era5/nc4/");
    let result = format!("s3://{BUCKET}/results/sums.parquet");
    let o = uq(&["sql", query, "--table", &nc4_table, "--output", &result]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read_back = "SELECT * FROM t ORDER BY valid_time";
    let o = uq(&[
        "sql",
        read_back,
        "--table",
        &format!("t={result}"),
        "--format",
        "csv",
    ]);
    let local = format!("t={}", work.path().join("data").display());
    let computed = sql_csv(&uq(&["sql", query, "--table", &local, "--format", "csv"]));
    assert_eq!(sql_csv(&o), computed);

    // An object replaced in the bucket is downloaded again, not served stale.
    let first_nc3 = std::fs::read_dir(server.path("era5/nc3"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    // Past the second the first copy was listed at: a store without ETags
    // (s3s-fs) is judged by modification time and size, and the size is equal.
    std::thread::sleep(Duration::from_millis(1100));
    let other = work.path().join("nc3-other");
    synth_seeded(&other, 3, "nc3", 12, &[]);
    std::fs::copy(other.join(first_nc3.file_name().unwrap()), &first_nc3).unwrap();
    let refreshed = uq(&[
        "sql",
        query,
        "--table",
        &format!("t=s3://{BUCKET}/era5/nc3/*.nc"),
        "--format",
        "csv",
    ]);
    assert!(
        stderr(&refreshed).contains("downloading"),
        "{}",
        stderr(&refreshed)
    );
    let mixed = sql_csv(&refreshed);
    let original = sql_csv(&uq(&[
        "sql",
        query,
        "--table",
        &format!("t={}", nc3.display()),
        "--format",
        "csv",
    ]));
    assert_ne!(mixed, original, "the replaced object's new values are read");

    // The forecast job with its input and its model in the bucket writes
    // the table a run over the same files on disk writes.
    let local_out = work.path().join("out-local");
    let remote_out = work.path().join("out-s3");
    let input = format!("s3://{BUCKET}/era5/nc4");
    copy_tree(&work.path().join("model"), &server.path("models"));
    let model = format!("s3://{BUCKET}/models/m.safetensors");
    let o = uq(&[
        "run",
        "--config",
        config,
        "--output",
        local_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = uq(&[
        "run",
        "--config",
        config,
        "--input",
        &input,
        "--model",
        &model,
        "--output",
        remote_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for copied in ["m.safetensors", "m.json"] {
        let url = format!("downloading s3://{BUCKET}/models/{copied}");
        assert!(stderr(&o).contains(&url), "{}", stderr(&o));
    }
    let local_rows = forecast_csv(&local_out);
    assert!(local_rows.lines().count() > 100, "{local_rows}");
    assert_eq!(forecast_csv(&remote_out), local_rows);
    // An analyst's forecast with the model in the bucket answers as with
    // the model on disk.
    let forecast = |model: &str| {
        let query = format!(
            "SELECT valid_time, round(avg(t2m_mean), 3) AS mean, round(avg(t2m_eu), 6) AS eu \
             FROM hyperdm_forecast('{model}', 'SELECT * FROM era5 WHERE valid_time < \
             ''2020-01-01T12:00:00Z''', 2, 3, 'ddim-5', 5) GROUP BY valid_time ORDER BY valid_time"
        );
        let table = format!("era5={}", work.path().join("data").display());
        sql_csv(&uq(&["sql", &query, "--table", &table, "--format", "csv"]))
    };
    let on_disk = forecast(work.path().join("model/m.safetensors").to_str().unwrap());
    assert_eq!(on_disk.lines().count(), 1 + 2, "{on_disk}");
    assert_eq!(forecast(&model), on_disk);
    // Weights without their metadata are not a model.
    std::fs::copy(
        work.path().join("model/m.safetensors"),
        server.path("models/bare.safetensors"),
    )
    .unwrap();
    let bare = format!("s3://{BUCKET}/models/bare.safetensors");
    let o = uq(&["run", "--config", config, "--model", &bare]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "--model: s3://{BUCKET}/models/bare.json: no such object (a model is its weights"
        )),
        "{}",
        stderr(&o)
    );

    // Training from the bucket (named by the pipeline's source.path, kept
    // as a URL, not resolved against the pipeline's folder) into the bucket
    // stores the model training from disk made, weights and metadata.
    let remote_source = work.path().join("remote-source.toml");
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replace("path = \"data\"", &format!("path = \"{input}\""));
    std::fs::write(&remote_source, text).unwrap();
    let retrained = format!("s3://{BUCKET}/models/retrained.safetensors");
    let o = uq(&[
        "train",
        "--config",
        remote_source.to_str().unwrap(),
        "--out",
        &retrained,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with(&format!("wrote {retrained} (")),
        "{}",
        stdout(&o)
    );
    assert!(
        std::fs::read(server.path("models/retrained.safetensors")).unwrap()
            == std::fs::read(work.path().join("model/m.safetensors")).unwrap(),
        "weights trained from s3:// into s3:// differ"
    );
    assert!(server.path("models/retrained.json").is_file());
    // A place the store will not take the model (a bucket name it refuses)
    // fails before training, naming the URL; the probe object is gone.
    let o = uq(&[
        "train",
        "--config",
        config,
        "--out",
        "s3://no/models/m.safetensors",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("s3://no/models/m.safetensors: cannot store there (checked before training)")
            && !err.contains("training on"),
        "{err}"
    );
    let probes: Vec<_> = walk_all(&server.path("models"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("uqcast-probe"))
        .collect();
    assert!(probes.is_empty(), "{probes:?}");

    // The job writes its tables into a bucket: incrementally (a first run
    // up to a time, then the rest), the same rows and flags as on disk, read
    // in place by `uqcast sql` with its Hive partitions, and its lock gone.
    let output = format!("s3://{BUCKET}/runs/a");
    let to_bucket = |extra: &[&str]| {
        let mut args = vec![
            "run", "--config", config, "--input", &input, "--output", &output,
        ];
        args.extend_from_slice(extra);
        let o = uq(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        // The steps written are checked for EU outliers over the bucket's flags.
        let err = stderr(&o);
        assert!(!err.contains("not checked for EU outliers"), "{err}");
        stdout(&o)
    };
    let first = to_bucket(&["--until", "2020-01-01T18:00Z"]);
    assert!(first.contains("new_steps=4 existing_steps=0"), "{first}");
    // A dry run reads the bucket's table as the run does, and takes no lock.
    let dry = to_bucket(&["--dry-run"]);
    let would = dry
        .split_whitespace()
        .find_map(|f| f.strip_prefix("would_forecast="))
        .unwrap_or_else(|| panic!("{dry}"));
    assert!(dry.contains("existing_steps=4 "), "{dry}");
    assert!(would.parse::<usize>().unwrap() > 0, "{dry}");
    assert!(!server.path("runs/a/.uqcast-run.lock").exists());
    let rest = to_bucket(&[]);
    assert!(
        rest.contains(&format!("new_steps={would} existing_steps=4")),
        "{rest}"
    );
    assert!(
        !server.path("runs/a/.uqcast-run.lock").exists(),
        "lock left behind"
    );
    let in_bucket = |table: &str, query: &str| {
        let table = format!("f=s3://{BUCKET}/runs/a/{table}");
        sql_csv(&uq(&["sql", query, "--table", &table, "--format", "csv"]))
    };
    let on_disk = |table: &str, query: &str| {
        let table = format!("f={}", local_out.join(table).display());
        sql_csv(&uq(&["sql", query, "--table", &table, "--format", "csv"]))
    };
    let rows = "SELECT * FROM f ORDER BY valid_time, latitude, longitude";
    assert_eq!(in_bucket("forecast", rows), local_rows);
    let summary = "SELECT year, month, count(*) AS n, sum(t2m_eu) AS eu FROM f \
                   GROUP BY year, month ORDER BY year, month";
    assert_eq!(in_bucket("forecast", summary), on_disk("forecast", summary));
    // By valid time, only the objects of the months named are read: after
    // the run's last month, none (src/session/step_months.rs).
    let later = "SELECT valid_time, count(*) AS n, sum(t2m_eu) AS eu FROM f \
                 WHERE valid_time >= '2020-01-01T12:00:00Z' GROUP BY valid_time ORDER BY valid_time";
    assert_eq!(in_bucket("forecast", later), on_disk("forecast", later));
    let after = "EXPLAIN SELECT count(*) FROM f WHERE valid_time >= '2020-02-01T00:00:00Z'";
    let plan = in_bucket("forecast", after);
    assert!(!plan.contains("DataSourceExec"), "{plan}");
    assert_eq!(
        in_bucket("forecast", &after["EXPLAIN ".len()..]),
        "count(*)\n0\n"
    );
    let tiles = "SELECT * FROM f ORDER BY valid_time, tile_lat, tile_lon";
    assert_eq!(in_bucket("flags", tiles), on_disk("flags", tiles));
    let again = to_bucket(&[]);
    assert!(again.contains("new_steps=0"), "{again}");
    // Maps drawn from the bucket's tables are the maps of the local ones.
    let map = |input: &str, name: &str| {
        let png = work.path().join(name);
        let png_arg = png.to_str().unwrap();
        let args = [
            "plot",
            "--input",
            input,
            "--time",
            "2020-01-02T18:00Z",
            "--out",
            png_arg,
        ];
        let o = uq(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&png).unwrap()
    };
    let from_bucket = map(&output, "bucket.png");
    assert!(from_bucket.starts_with(b"\x89PNG"));
    assert!(from_bucket == map(local_out.to_str().unwrap(), "local.png"));

    // One writer: a lock another run renews keeps this one out, and
    // nothing is written; a lock left unrenewed past its lease (a killed
    // run's) is taken over.
    let lock = server.path("runs/b/.uqcast-run.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "pid 4242 on elsewhere, since 2020-01-01T00:00:00Z").unwrap();
    let b = format!("s3://{BUCKET}/runs/b");
    let args = ["run", "--config", config, "--input", &input, "--output", &b];
    let o = uq(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("another uqcast run (pid 4242 on elsewhere"),
        "{err}"
    );
    assert!(err.contains("runs/b/.uqcast-run.lock"), "{err}");
    assert!(
        !server.path("runs/b/forecast").exists(),
        "written under a held lock"
    );
    let ten_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(ten_minutes_ago)
        .unwrap();
    let o = uq(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("taking it over"), "{}", stderr(&o));
    assert!(!lock.exists(), "the taken-over lock is released at the end");

    // A scheduled run over daily NetCDF3 objects, on a machine with an
    // empty cache each time, downloads only the objects holding steps
    // still to forecast: the steps an earlier run forecast are not read.
    let daily = work.path().join("daily");
    synth_seeded(&daily, 12, "nc3", 0, &["--files-per-day"]);
    copy_tree(&daily, &server.path("era5/daily"));
    let daily_input = format!("s3://{BUCKET}/era5/daily/*.nc");
    let c = format!("s3://{BUCKET}/runs/c");
    let scheduled = |cache: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--config",
            config,
            "--input",
            &daily_input,
            "--output",
            &c,
        ];
        args.extend_from_slice(extra);
        let o = server.uqcast_with(SECRET, &work.path().join(cache), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        // Every run reads its months' flags footers; only the one after the
        // flags object is cut short (day 5) may find one unreadable.
        assert_eq!(
            stderr(&o).contains("made again from the forecast"),
            cache == "cache-day-5",
            "{}",
            stderr(&o)
        );
        let fetched: Vec<String> = stderr(&o)
            .lines()
            .filter(|l| l.starts_with("downloading s3://") && l.contains("/era5/daily/"))
            .map(str::to_string)
            .collect();
        // Objects read in part (a step's records, by range).
        let ranged: Vec<String> = stderr(&o)
            .lines()
            .filter(|l| l.starts_with("reading ") && l.contains("/era5/daily/"))
            .map(str::to_string)
            .collect();
        (stdout(&o), fetched, ranged)
    };
    let (first, fetched, _) = scheduled("cache-day-1", &["--until", "2020-01-01T18:00Z"]);
    assert!(first.contains("new_steps=4 existing_steps=0"), "{first}");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert!(fetched[0].contains("era5_t2m_20200101.nc"), "{fetched:?}");
    let (rest, fetched, _) = scheduled("cache-day-2", &[]);
    assert!(rest.contains("existing_steps=4"), "{rest}");
    assert!(!rest.contains("new_steps=0"), "{rest}");
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    assert!(
        fetched.iter().all(|l| !l.contains("era5_t2m_20200101.nc")),
        "{fetched:?}"
    );
    let (again, fetched, _) = scheduled("cache-day-3", &[]);
    assert!(again.contains("new_steps=0"), "{again}");
    assert!(fetched.is_empty(), "{fetched:?}");

    // The last day's object replaced by final data: a run with a one-day
    // recheck window reads that window's objects again (and no older one)
    // and forecasts the changed steps again.
    // Day 3's object stored again from `data`, a second later (so its
    // last-modified time differs too).
    let store_day_3 = |data: &Path| {
        std::thread::sleep(Duration::from_millis(1100));
        let day_3 = "era5_t2m_20200103.nc";
        std::fs::copy(
            data.join(day_3),
            server.path(&format!("era5/daily/{day_3}")),
        )
        .unwrap();
    };
    let revised = work.path().join("daily-revised");
    synth_seeded(&revised, 12, "nc3", 1, &["--files-per-day"]);
    store_day_3(&revised);
    let (rechecked, fetched, _) = scheduled("cache-day-4", &["--recheck-days", "1"]);
    assert!(
        rechecked.contains("new_steps=0 existing_steps=8 revised_steps=4"),
        "{rechecked}"
    );
    assert!(
        fetched.iter().all(|l| !l.contains("era5_t2m_20200101.nc")),
        "{fetched:?}"
    );
    // Nothing changed since: the objects and the forecast objects are as
    // that run left them (its ledger in the bucket says so), and the next
    // recheck downloads nothing, even into an empty cache.
    let (vouched, fetched, _) = scheduled("cache-day-4-again", &["--recheck-days", "1"]);
    assert!(
        vouched.contains("new_steps=0 existing_steps=12 revised_steps=0"),
        "{vouched}"
    );
    assert!(fetched.is_empty(), "{fetched:?}");
    // Day 3's object put back as it first came: only its steps are read
    // again; day 2's object, whose last step is in the window too, is not
    // downloaded.
    store_day_3(&daily);
    let (back, fetched, ranged) = scheduled("cache-day-4-back", &["--recheck-days", "1"]);
    assert!(
        back.contains("new_steps=0 existing_steps=8 revised_steps=4"),
        "{back}"
    );
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert!(fetched[0].contains("era5_t2m_20200103.nc"), "{fetched:?}");
    assert!(ranged.is_empty(), "{ranged:?}");
    // A forecast object stored again (by hand, the same bytes) is not
    // vouched for: the window's objects are read again.
    std::thread::sleep(Duration::from_millis(1100));
    let step = server.path("runs/c/forecast/year=2020/month=01/t2m_20200103T1200.parquet");
    std::fs::write(&step, std::fs::read(&step).unwrap()).unwrap();
    let (stored_again, fetched, ranged) = scheduled("cache-day-4-stored", &["--recheck-days", "1"]);
    assert!(stored_again.contains("revised_steps=0"), "{stored_again}");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert!(
        ranged.len() == 1
            && ranged[0]
                .contains("1 of 4 steps of s3://era5-bucket/era5/daily/era5_t2m_20200102.nc"),
        "{ranged:?}"
    );

    // The flags object cut short: the next run, with nothing new, makes
    // the flags again from the bucket's forecast table (its footer said
    // nothing), the same tiles as before.
    let flags_object = server.path("runs/c/flags/year=2020/month=01/flags_202001.parquet");
    let bytes = std::fs::read(&flags_object).unwrap();
    std::fs::write(&flags_object, &bytes[..bytes.len() / 2]).unwrap();
    let (healed, _, _) = scheduled("cache-day-5", &[]);
    let tiles = |summary: &str| summary.split_once(" tiles=").map(|(_, t)| t.to_string());
    assert!(healed.contains("new_steps=0"), "{healed}");
    assert_eq!(tiles(&healed), tiles(&back), "{healed}");
    assert!(std::fs::read(&flags_object).unwrap().ends_with(b"PAR1"));

    // The one-file flags table of earlier runs: the month's object made
    // again, the old object deleted.
    let legacy = server.path("runs/c/flags/flags.parquet");
    std::fs::rename(&flags_object, &legacy).unwrap();
    let (migrated, _, _) = scheduled("cache-day-6", &[]);
    assert_eq!(tiles(&migrated), tiles(&back), "{migrated}");
    assert!(!legacy.exists());
    assert!(std::fs::read(&flags_object).unwrap().ends_with(b"PAR1"));
}

/// Copies of S3 objects in `cache` (not their stamps), by file name.
fn cached_copies(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk_all(cache)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "nc"))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// A NetCDF3 table in a bucket is planned from its objects' headers: a
/// query downloads only the objects holding the steps it reads, and a
/// later query the rest, each once; a query of few steps of a long object
/// reads only their records; every answer is the answer over the same
/// files on disk.
#[test]
fn s3_netcdf3_downloads_only_the_objects_a_query_reads() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let days = work.path().join("days");
    synth_seeded(&days, 12, "nc3", 5, &["--files-per-day"]);
    copy_tree(&days, &server.path("era5/days"));
    let uq = |args: &[&str]| server.uqcast_with(SECRET, &cache, args);
    let answer = |table: &str, query: &str| {
        let table = format!("t={table}");
        let o = uq(&["sql", query, "--table", &table, "--format", "csv"]);
        (sql_csv(&o), stderr(&o))
    };
    let remote = format!("s3://{BUCKET}/era5/days/*.nc");
    let local = format!("{}/*.nc", days.display());
    let downloads = |err: &str| -> Vec<String> {
        err.lines()
            .filter(|l| l.starts_with("downloading s3://"))
            .map(str::to_string)
            .collect()
    };

    let second_day = "SELECT valid_time, count(*) AS n, sum(t2m) AS s FROM t \
                      WHERE valid_time >= '2020-01-02T00:00:00Z' \
                      AND valid_time < '2020-01-03T00:00:00Z' \
                      GROUP BY valid_time ORDER BY valid_time";
    let (from_bucket, err) = answer(&remote, second_day);
    assert_eq!(from_bucket, answer(&local, second_day).0);
    assert_eq!(from_bucket.lines().count(), 1 + 4, "{from_bucket}");
    let fetched = downloads(&err);
    assert_eq!(fetched.len(), 1, "{err}");
    assert!(
        fetched[0].contains("/era5/days/era5_t2m_20200102.nc"),
        "{err}"
    );
    assert_eq!(cached_copies(&cache), ["era5_t2m_20200102.nc"]);

    // Every step: the two other days are downloaded, the second day's copy serves.
    let every_step = "SELECT valid_time, sum(t2m) AS s, max(t2m) AS hi FROM t \
                      GROUP BY valid_time ORDER BY valid_time";
    let (from_bucket, err) = answer(&remote, every_step);
    assert_eq!(from_bucket, answer(&local, every_step).0);
    assert_eq!(from_bucket.lines().count(), 1 + 12, "{from_bucket}");
    let fetched = downloads(&err);
    assert_eq!(fetched.len(), 2, "{err}");
    assert!(fetched.iter().all(|l| !l.contains("20200102")), "{err}");
    assert_eq!(cached_copies(&cache).len(), 3);
    let (_, err) = answer(&remote, every_step);
    assert!(downloads(&err).is_empty(), "{err}");

    few_steps_of_a_long_object(&server, work.path(), &cache, "nc3");

    // A cache with a size limit (30 kB, about one daily copy): a query
    // keeps every copy it plans over, and the next process's fetch removes
    // the least recently used ones; what is needed again is fetched again.
    let limited = work.path().join("limited");
    let with_limit = |limit: &str, table: &str, query: &str| {
        let o = server
            .command(SECRET, &limited)
            .env("UQCAST_CACHE_MAX_GB", limit)
            .args([
                "sql",
                query,
                "--table",
                &format!("t={table}"),
                "--format",
                "csv",
            ])
            .output()
            .unwrap();
        (o.status.code(), stdout(&o), stderr(&o))
    };
    let daily_remote = format!("s3://{BUCKET}/era5/days/*.nc");
    let (code, all_days, err) = with_limit("0.00003", &daily_remote, every_step);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        all_days,
        answer(&format!("{}/*.nc", days.display()), every_step).0
    );
    assert_eq!(downloads(&err).len(), 3, "{err}");
    assert_eq!(
        cached_copies(&limited).len(),
        3,
        "a query's own copies stay"
    );
    // One step of the long object stored above.
    let long_remote = format!("s3://{BUCKET}/era5/long-nc3/*.nc");
    let long_local = format!("{}/*.nc", work.path().join("long-nc3").display());
    let one_step = "SELECT latitude, longitude, t2m FROM t \
                    WHERE valid_time = '2020-01-02T06:00:00Z' ORDER BY latitude, longitude";
    let (code, one, err) = with_limit("0.00003", &long_remote, one_step);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(one, answer(&long_local, one_step).0);
    assert!(err.contains("of least recently used copies from"), "{err}");
    assert_eq!(
        cached_copies(&limited),
        ["era5_t2m_2020010100_2020010318.nc"]
    );
    let (code, again, err) = with_limit("0.00003", &daily_remote, every_step);
    assert_eq!((code, again), (Some(0), all_days));
    assert_eq!(downloads(&err).len(), 3, "{err}");
    let (code, _, err) = with_limit("lots", &daily_remote, every_step);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("UQCAST_CACHE_MAX_GB=lots: not a number of gigabytes"),
        "{err}"
    );
}

/// A NetCDF4 object is planned from the blocks a walk of its metadata
/// fetched, and a query of few of its steps fetches only their chunks.
#[test]
fn s3_netcdf4_queries_of_few_steps_fetch_only_those_steps() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    few_steps_of_a_long_object(&server, work.path(), &cache, "nc4");
}

/// One object of three days (`encoding`) in a bucket: a query of one step
/// reads that step (a NetCDF3 record, NetCDF4 chunks) into a partial copy,
/// not the object; another step adds its own, a step already held reads
/// nothing, and a query of every step downloads the object whole; every
/// answer is the answer over the same file on disk.
fn few_steps_of_a_long_object(server: &Server, work: &Path, cache: &Path, encoding: &str) {
    let long = work.join(format!("long-{encoding}"));
    synth_seeded(&long, 12, encoding, 6, &[]);
    let folder = format!("era5/long-{encoding}");
    copy_tree(&long, &server.path(&folder));
    let object = walk_all(&server.path(&folder))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "nc"))
        .unwrap();
    let object_size = std::fs::metadata(&object).unwrap().len();
    let remote = format!("t=s3://{BUCKET}/{folder}/*.nc");
    let local = format!("t={}/*.nc", long.display());
    let answer = |table: &str, query: &str| {
        let o = server
            .command(SECRET, cache)
            .env("UQCAST_LOG", "uqcast=debug")
            .args(["sql", query, "--table", table, "--format", "csv"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (sql_csv(&o), stderr(&o))
    };
    // What planning fetched is kept: only the first process fetches it.
    let planned_by_range = |err: &str| err.contains(" bytes in ");
    let planned_from_kept = |err: &str| err.contains("planned from the plan kept");
    let step_reads = |err: &str| -> Vec<u64> {
        err.lines()
            .filter(|l| l.starts_with("reading 1 of 12 steps of s3://"))
            .filter_map(|l| l.split(" (").nth(1)?.split(' ').next()?.parse().ok())
            .collect()
    };
    let downloads = |err: &str| err.matches("downloading s3://").count();
    let at = |t: &str| {
        format!(
            "SELECT latitude, longitude, t2m FROM t WHERE valid_time = '{t}' \
             ORDER BY latitude, longitude"
        )
    };
    for (query, (time, steps_fetched)) in [
        ("2020-01-02T06:00:00Z", 1),
        ("2020-01-03T12:00:00Z", 1),
        ("2020-01-02T06:00:00Z", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let (from_bucket, err) = answer(&remote, &at(time));
        let first = query == 0;
        assert!(!err.contains("HDF5-DIAG"), "{time}: {err}");
        assert_eq!(planned_by_range(&err), first, "{time}: {err}");
        assert_eq!(planned_from_kept(&err), !first, "{time}: {err}");
        assert_eq!(from_bucket, answer(&local, &at(time)).0, "{time}");
        assert!(from_bucket.lines().count() > 100, "{from_bucket}");
        assert_eq!(downloads(&err), 0, "{err}");
        let read = step_reads(&err);
        assert_eq!(read.len(), steps_fetched, "{time}: {err}");
        assert!(read.iter().all(|&bytes| bytes * 10 < object_size), "{err}");
    }
    let whole_copy = Path::new("s3")
        .join(BUCKET)
        .join(&folder)
        .join(object.file_name().unwrap());
    let held: Vec<PathBuf> = walk_all(cache);
    assert!(!held.iter().any(|p| p.ends_with(&whole_copy)), "{held:?}");
    assert!(
        held.iter()
            .any(|p| p.to_string_lossy().contains("/s3-steps/")),
        "{held:?}"
    );
    let every_step = "SELECT valid_time, sum(t2m) AS s FROM t GROUP BY valid_time \
                      ORDER BY valid_time";
    let (from_bucket, err) = answer(&remote, every_step);
    assert_eq!(from_bucket, answer(&local, every_step).0);
    assert_eq!(from_bucket.lines().count(), 1 + 12, "{from_bucket}");
    assert_eq!(downloads(&err), 1, "{err}");
}

#[test]
fn s3_failures_name_the_url_and_exit_non_zero() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let data = work.path().join("data");
    synth_seeded(&data, 2, "nc4", 7, &[]);
    copy_tree(&data, &server.path("era5"));
    let good = server.path("era5");
    let file = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "nc"))
        .unwrap();
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    // A truncated object, as an interrupted upload leaves.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::create_dir_all(server.path("bad")).unwrap();
    std::fs::write(server.path("bad").join(&name), &bytes[..bytes.len() / 2]).unwrap();

    let fails = |secret: &str, location: &str, needles: &[&str]| {
        let table = format!("t={location}");
        let o = server.uqcast_with(
            secret,
            &cache,
            &["sql", "SELECT count(*) FROM t", "--table", &table],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{location}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "'{n}' missing from: {err}");
        }
        err
    };
    let era5 = format!("s3://{BUCKET}/era5/");
    fails("wrong-secret", &era5, &["table 't'", &era5]);
    let missing = "s3://no-such-bucket/era5/";
    fails(SECRET, missing, &[missing]);
    let empty = format!("s3://{BUCKET}/era6/*.nc");
    fails(SECRET, &empty, &[&empty, "nothing is stored under"]);
    let bad = format!("s3://{BUCKET}/bad/{name}");
    let err = fails(SECRET, &bad, &[&bad, "NetCDF"]);
    // The error names the object, not its local copy.
    let error_line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        !error_line.contains(&cache.display().to_string()),
        "names the cache: {err}"
    );
    // A value found wrong mid-scan (°C under units "K") names the object too.
    crate::errors::write_mislabelled(&server.path("bad/celsius.nc"));
    let table = format!("t=s3://{BUCKET}/bad/celsius.nc");
    let o = server.uqcast_with(
        SECRET,
        &cache,
        &["sql", "SELECT avg(t2m) FROM t", "--table", &table],
    );
    let error_line = stderr(&o)
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap()
        .to_string();
    assert!(
        error_line.contains(&format!("s3://{BUCKET}/bad/celsius.nc: t2m at")),
        "{error_line}"
    );
    assert!(error_line.contains("outside the 150…350 K"), "{error_line}");
    // An object that crashes HDF5 (`errors::netcdf4_metadata_that_crashes_hdf5`):
    // the last words name the object too.
    let crashing = crate::errors::small_netcdf4_with(work.path(), 3132, 240);
    std::fs::copy(&crashing, server.path("bad/crash.nc")).unwrap();
    fails(
        SECRET,
        &format!("s3://{BUCKET}/bad/crash.nc"),
        &[&format!(
            "error: s3://{BUCKET}/bad/crash.nc: libnetcdf crashed reading it (SIGSEGV)"
        )],
    );
    // None of the failures left a partial download in the cache.
    let partial = walk_all(&cache)
        .into_iter()
        .find(|p| p.to_string_lossy().contains(".part-"));
    assert_eq!(partial, None);
}

/// A damaged Parquet object is named by its URL: at registration, a footer
/// that claims more metadata than the object holds (the parquet crate
/// panicked on it); in a query, a page that does not decode.
#[test]
fn s3_damaged_parquet_objects_are_named() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let data = work.path().join("data");
    synth_seeded(&data, 2, "nc4", 7, &[]);
    let sound = work.path().join("sound.parquet");
    let table = format!("e={}", data.display());
    let o = crate::uqcast(&[
        "sql",
        "SELECT * FROM e",
        "--table",
        &table,
        "--output",
        sound.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&sound).unwrap();
    // The footer's metadata length (the 4 bytes before the closing PAR1), 100 too long.
    let mut footer = bytes.clone();
    let n = footer.len();
    footer[n - 8..n - 4].copy_from_slice(&(n as u32 + 100).to_le_bytes());
    server.put("a.parquet", "footer", &footer);
    let paged = work.path().join("paged.parquet");
    std::fs::copy(&sound, &paged).unwrap();
    crate::pipeline_errors::damage_column(&paged, "latitude");
    server.put("a.parquet", "pages", &bytes);
    server.put("b.parquet", "pages", &std::fs::read(&paged).unwrap());
    // A second damaged object after it: the objects are judged a few at
    // a time, and the first damaged in listing order is the one named.
    server.put("c.parquet", "pages", &std::fs::read(&paged).unwrap());
    server.put("a.parquet", "schema", &with_damaged_arrow_schema(&sound));
    let panics = crate::sql::with_schema_that_panics(&sound);
    server.put("a.parquet", "decoder", &panics);

    for (location, object, says) in [
        (
            "footer/",
            "footer/a.parquet",
            "corrupt Parquet footer: it gives",
        ),
        (
            "footer/a.parquet",
            "footer/a.parquet",
            "corrupt Parquet footer: it gives",
        ),
        (
            "pages/",
            "pages/b.parquet",
            "not readable as Parquet (a damaged page?)",
        ),
        (
            "schema/",
            "schema/a.parquet",
            "not readable as Parquet: Arrow",
        ),
        (
            "decoder/",
            "decoder/a.parquet",
            "not readable as Parquet: its metadata does not decode: ",
        ),
    ] {
        let table = format!("t=s3://{BUCKET}/{location}");
        let o = server.uqcast_with(
            SECRET,
            &cache,
            &["sql", "SELECT avg(latitude) FROM t", "--table", &table],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{location}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(
            line.contains(&format!("s3://{BUCKET}/{object}:")) && line.contains(says),
            "{location}: {err}"
        );
    }
    // The sound object alone reads.
    let table = format!("t=s3://{BUCKET}/pages/a.parquet");
    let o = server.uqcast_with(
        SECRET,
        &cache,
        &[
            "sql",
            "SELECT count(*) AS n FROM t",
            "--table",
            &table,
            "--format",
            "csv",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The bytes of the Parquet file `path` with one character of its Arrow
/// schema (base64 in the footer's key-value metadata) made not base64: the
/// footer reads, the schema DataFusion decodes at registration does not.
fn with_damaged_arrow_schema(path: &Path) -> Vec<u8> {
    let (mut bytes, schema) = crate::sql::arrow_schema_span(path);
    bytes[schema.start + schema.len() / 2] = b'!';
    bytes
}

#[test]
fn s3_needs_credentials_for_tables_and_models() {
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = uqcast_without_aws()
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        stderr(&o)
    };
    // Without credentials the client would wait on the EC2 metadata service.
    let err = run(&["sql", "SELECT 1", "--table", "t=s3://b/era5/*.nc"]);
    assert!(err.contains("s3://b/era5/*.nc: no S3 credentials"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");

    // A run reads a model from a bucket, a training stores one there: both
    // need credentials, and say so before anything is read or trained.
    let config = crate::pipeline::write_pipeline(work.path(), 4, "");
    let config = config.to_str().unwrap();
    let err = run(&["run", "--config", config, "--model", "s3://b/m.safetensors"]);
    assert!(
        err.contains("--model: s3://b/m.safetensors: no S3 credentials"),
        "{err}"
    );
    let err = run(&["train", "--config", config, "--out", "s3://b/m.safetensors"]);
    assert!(
        err.contains("s3://b/m.safetensors: no S3 credentials") && !err.contains("training on"),
        "{err}"
    );
    let text = std::fs::read_to_string(config).unwrap();
    let remote_model = text.replace("\"model/m.safetensors\"", "\"s3://b/m.safetensors\"");
    std::fs::write(config, remote_model).unwrap();
    let err = run(&["run", "--config", config]);
    assert!(
        err.contains("model.checkpoint: s3://b/m.safetensors: no S3 credentials"),
        "{err}"
    );
    let err = run(&["train", "--config", config]);
    assert!(
        err.contains("s3://b/m.safetensors: no S3 credentials") && !err.contains("training on"),
        "{err}"
    );
    assert!(
        !work.path().join("s3:").exists(),
        "no folder named after the URL"
    );
}

#[test]
fn s3_lock_is_renewed_and_a_run_that_loses_it_stops() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Slow sampling over many steps: a step takes long enough to watch the
    // lock between steps, and the run has far more steps than the checks
    // below (6 s and more) can outlast. With 12 steps a run once finished
    // all of them before the lock was replaced; the run stops at its next
    // renewal once it is, so more steps cost the test no time.
    const STEPS: usize = 48;
    let config = trained_over(work.path(), 1024, STEPS);
    let output = format!("s3://{BUCKET}/runs/slow");
    let forecast = server.path("runs/slow/forecast");
    let lock = server.path("runs/slow/.uqcast-run.lock");
    let log = work.path().join("run.log");
    let mut run = server.command(SECRET, &cache);
    run
        // Renewed every second; taken for a killed run's after 5 s unrenewed
        // (long enough that a loaded machine does not miss a renewal).
        .env("UQCAST_S3_LOCK_LEASE", "5")
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--output",
            &output,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = run.spawn().unwrap();
    let steps = || walk_all(&forecast).len();
    let started = Instant::now();
    while steps() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step written"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Renewed while the run works: its time moves, and past a whole lease a
    // second run is still kept out.
    let renewed_at = || std::fs::metadata(&lock).unwrap().modified().unwrap();
    let before = renewed_at();
    std::thread::sleep(Duration::from_millis(6000));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended too soon to test"
    );
    assert!(renewed_at() > before, "the lock was not renewed");
    let second = server.uqcast_with(
        SECRET,
        &cache,
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--output",
            &output,
        ],
    );
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another uqcast run (pid"),
        "{}",
        stderr(&second)
    );

    // Another writer replaces the lock: the run notices at its next renewal
    // and stops before writing another step; what it wrote stays.
    server.put(
        ".uqcast-run.lock",
        "runs/slow",
        b"pid 1 on elsewhere, since 2020-01-01T00:00:00Z",
    );
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("this run lost its lock"), "{log}");
    let written = steps();
    assert!(
        (1..STEPS).contains(&written),
        "{written} of {STEPS} steps written"
    );
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        "pid 1 on elsewhere, since 2020-01-01T00:00:00Z",
        "the lost lock is not deleted"
    );
}
