//! `uqcast scheduler` + `uqcast executor` on loopback, and `uqcast sql
//! --ballista`: queries answer as on one machine, and run on the executor.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pipeline::{forecast_csv, trained, walk_all};
use super::s3::{BUCKET, SECRET, Server, copy_tree};
use super::{free_port, stderr, stdout, synth, synth_seeded, uqcast, wait_until_listening};

/// A scheduler and its executors, stopped when dropped.
struct Cluster {
    processes: Vec<Child>,
    url: String,
    work: tempfile::TempDir,
    logs: tempfile::TempDir,
}

impl Cluster {
    /// Both bound to all interfaces: the scheduler names itself localhost,
    /// and knows the executor by the address it connects from.
    fn start() -> Self {
        Self::start_in(Path::new("."), Path::new("."), "0.0.0.0")
    }

    /// The scheduler and the executor run in folders of their own, so a
    /// relative path may name other files on each (as on two machines).
    fn start_in(scheduler_dir: &Path, executor_dir: &Path, bind: &str) -> Self {
        Self::start_with(scheduler_dir, executor_dir, bind, &|_, _| {})
    }

    /// As [`Cluster::start_in`], each process's command set up by `set_up`
    /// (given "scheduler" or "executor": the process's name) before it starts.
    fn start_with(
        scheduler_dir: &Path,
        executor_dir: &Path,
        bind: &str,
        set_up: &dyn Fn(&str, &mut Command),
    ) -> Self {
        Self::start_many(scheduler_dir, executor_dir, bind, 1, set_up)
    }

    /// As [`Cluster::start_with`], with `executors` executors, each with
    /// its own ports and work folder, named "executor", "executor-1", ….
    fn start_many(
        scheduler_dir: &Path,
        executor_dir: &Path,
        bind: &str,
        executors: usize,
        set_up: &dyn Fn(&str, &mut Command),
    ) -> Self {
        let (work, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let scheduler = free_port();
        // Each process's log is `{name}.log`.
        let spawn = |dir: &Path, name: &str, args: &[&str]| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_uqcast"));
            set_up(name, &mut command);
            let log = File::create(logs.path().join(format!("{name}.log"))).unwrap();
            command
                .current_dir(dir)
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        };
        let address = format!("127.0.0.1:{scheduler}");
        let mut processes = vec![spawn(
            scheduler_dir,
            "scheduler",
            &["scheduler", "--bind", &format!("{bind}:{scheduler}")],
        )];
        wait_until_listening(scheduler, "uqcast scheduler");
        for i in 0..executors {
            let (flight, grpc) = (free_port(), free_port());
            let name = executor_name(i);
            let work_dir = work.path().join(&name);
            std::fs::create_dir(&work_dir).unwrap();
            let executor = [
                "executor",
                "--scheduler",
                &address,
                "--bind",
                bind,
                "--port",
                &flight.to_string(),
                "--grpc-port",
                &grpc.to_string(),
                "--work-dir",
                work_dir.to_str().unwrap(),
                "--concurrent-tasks",
                "2",
            ];
            processes.push(spawn(executor_dir, &name, &executor));
            wait_until_listening(flight, "uqcast executor");
        }
        Self {
            processes,
            url: format!("df://{address}"),
            work,
            logs,
        }
    }

    fn executor_log(&self) -> String {
        self.log_of(&executor_name(0))
    }

    fn log_of(&self, process: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{process}.log"))).unwrap()
    }
}

/// The name of the `i`th executor: its log's and its work folder's.
fn executor_name(i: usize) -> String {
    match i {
        0 => "executor".to_string(),
        i => format!("executor-{i}"),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn sql(query: &str, tables: &[String], ballista: Option<&str>) -> std::process::Output {
    let mut args = vec!["sql", query, "--format", "csv"];
    for t in tables {
        args.extend(["--table", t.as_str()]);
    }
    if let Some(url) = ballista {
        args.extend(["--ballista", url]);
    }
    uqcast(&args)
}

/// `query` over `tables` answered on the cluster at `url` and in this
/// process, asserted equal; the answer (CSV).
fn same_answer(query: &str, tables: &[String], url: &str) -> String {
    let here = sql(query, tables, None);
    assert!(here.status.success(), "{query}: {}", stderr(&here));
    let there = sql(query, tables, Some(url));
    assert!(there.status.success(), "{query}: {}", stderr(&there));
    assert_eq!(stdout(&there), stdout(&here), "{query}");
    stdout(&here)
}

/// `uqcast run` of `config` into `output` on the cluster at `url`, with
/// `more` arguments; failed if it has not ended in two minutes.
fn run_there(config: &str, output: &Path, url: &str, more: &[&str]) -> std::process::Output {
    let output = output.to_str().unwrap();
    let mut args = vec!["run", "--config", config, "--output", output];
    args.extend(more);
    args.extend(["--ballista", url]);
    uqcast_within(&args, Duration::from_secs(120))
}

/// Asserts that a `uqcast run` succeeded and its summary line begins with
/// `summary` (the steps it wrote and found).
fn ran(o: &std::process::Output, summary: &str) {
    assert!(o.status.success(), "{}", stderr(o));
    assert!(stdout(o).starts_with(summary), "{}", stdout(o));
}

/// `uqcast args`, killed and failed if it has not ended within `limit`: a
/// job the cluster never finishes fails the test rather than hang the suite.
fn uqcast_within(args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uqcast");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "uqcast {args:?} had not ended after {limit:?}: {}",
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The pipeline `config` run in this process (no cluster) into `output`.
fn run_here(config: &str, output: &Path) {
    let output = output.to_str().unwrap();
    let o = uqcast(&["run", "--config", config, "--output", output]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A scan with filters, a skill function and an aggregate; a join of the
/// scan with a Parquet table (`era5` and `clim` of [`with_climatology`]).
const QUERIES: [&str; 2] = [
    "SELECT valid_time, count(*) AS cells, round(avg(t2m), 3) AS t2m, \
     round(sum(crps_gaussian(t2m, 280.0, 4.0)), 2) AS crps \
     FROM era5 WHERE valid_time >= '2020-01-01T12:00:00Z' AND latitude > 40 \
     GROUP BY valid_time ORDER BY valid_time",
    "SELECT e.valid_time, round(avg(abs(e.t2m - c.t2m_clim)), 3) AS anomaly \
     FROM era5 e JOIN clim c ON e.latitude = c.latitude AND e.longitude = c.longitude \
     GROUP BY e.valid_time ORDER BY e.valid_time",
];

/// The per-cell mean t2m of the NetCDF files in `era5` (`t2m_clim` by
/// latitude and longitude), written as Parquet to `parquet`.
fn write_climatology(era5: &Path, parquet: &Path) {
    let o = uqcast(&[
        "sql",
        "SELECT latitude, longitude, avg(t2m) AS t2m_clim FROM era5 GROUP BY latitude, longitude",
        "--table",
        &format!("era5={}", era5.display()),
        "--output",
        parquet.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Eight synthetic steps in `data` and their per-cell mean as Parquet: the
/// `--table` arguments of `era5` and `clim`.
fn with_climatology(data: &Path) -> [String; 2] {
    synth(data, 8, "nc4", &[]);
    let parquet = data.join("climatology.parquet");
    write_climatology(data, &parquet);
    [
        format!("era5={}/*.nc", data.display()),
        format!("clim={}", parquet.display()),
    ]
}

/// The same answer from the cluster as from one process: a NetCDF scan with
/// pushed-down filters (spread over tasks), a skill function, an aggregate
/// (a shuffle between stages), and a join with a Parquet table.
#[test]
fn queries_on_the_cluster_answer_as_on_one_machine() {
    let data = tempfile::tempdir().unwrap();
    let tables = with_climatology(data.path());
    let cluster = Cluster::start();
    for query in QUERIES {
        let answer = same_answer(query, &tables, &cluster.url);
        assert!(answer.lines().count() > 6, "{answer}");
    }
    // More steps than partitions: each shuffle partition gets several
    // groups from several tasks, and ORDER BY still orders the answer.
    let many = tempfile::tempdir().unwrap();
    synth(many.path(), 40, "nc4", &["--files-per-day"]);
    let era5 = [format!("era5={}", many.path().display())];
    for query in [
        "SELECT valid_time, round(avg(t2m), 3) AS t2m FROM era5 GROUP BY valid_time \
         ORDER BY valid_time",
        "SELECT date_trunc('day', valid_time) AS day, count(*) AS cells FROM era5 GROUP BY day \
         ORDER BY day DESC",
        // Evaluated on the steps' times where the scheduler plans the scan.
        "SELECT valid_time, round(avg(t2m), 3) AS t2m FROM era5 \
         WHERE EXTRACT(HOUR FROM valid_time) = 12 GROUP BY valid_time ORDER BY valid_time",
    ] {
        same_answer(query, &era5, &cluster.url);
    }
    // The scan is spread over tasks, one per step here (6 steps from
    // 12:00, target partitions 16): Ballista cuts its steps input per task.
    let plans = cluster.log_of("scheduler");
    assert!(plans.contains("steps=10/40"), "{plans}");
    assert!(
        plans.contains("NetcdfExec: files=1, steps=6/8")
            && plans.contains("DataSourceExec: partitions=6, partition_sizes=[1, 1, 1, 1, 1, 1]"),
        "{plans}"
    );
    // The stages ran on the executor: it wrote their shuffle files.
    assert!(
        walk_all(cluster.work.path())
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "arrow" || e == "data")),
        "no shuffle files in the executor's work dir: {:?}",
        walk_all(cluster.work.path())
    );
}

/// Two executors: each runs some of a query's tasks and writes its own
/// shuffle output, so a later stage reads from both (one over Flight from
/// the other). Answers and a forecast run's table are one machine's.
#[test]
fn two_executors_share_the_work_and_answer_as_one_machine() {
    let data = tempfile::tempdir().unwrap();
    let tables = with_climatology(data.path());
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 16);
    let config = config.to_str().unwrap();
    let local = dir.path().join("local");
    run_here(config, &local);

    let cluster = Cluster::start_many(Path::new("."), Path::new("."), "0.0.0.0", 2, &|_, _| {});
    for query in QUERIES {
        same_answer(query, &tables, &cluster.url);
    }
    let remote = dir.path().join("remote");
    let o = run_there(config, &remote, &cluster.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(forecast_csv(&remote), forecast_csv(&local));
    // By valid time, the files of the months named alone are planned
    // there too: the client sends the plan it optimised
    // (src/session/step_months.rs). The table holds January 2020.
    let f = [format!("f={}", local.join("forecast").display())];
    let planned = || {
        cluster
            .log_of("scheduler")
            .matches("/forecast/year=")
            .count()
    };
    let by_time = |from: &str| {
        let query = format!(
            "SELECT valid_time, count(*) AS n FROM f WHERE valid_time >= '{from}' \
             GROUP BY valid_time ORDER BY valid_time"
        );
        let before = planned();
        let answer = same_answer(&query, &f, &cluster.url);
        (answer.lines().skip(1).count(), planned() - before)
    };
    assert_eq!(by_time("2020-02-01T00:00:00Z"), (0, 0));
    let (steps, files) = by_time("2020-01-02T00:00:00Z");
    // (The plan's line names its first files only.)
    assert!(steps > 0 && files > 0, "{steps} steps, {files} files");

    for i in 0..2 {
        let name = executor_name(i);
        let tasks = cluster.log_of(&name).matches("Execute task").count();
        assert!(tasks > 0, "{name} ran no task: {}", cluster.log_of(&name));
        let shuffled = walk_all(&cluster.work.path().join(&name));
        assert!(
            shuffled
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "arrow" || e == "data")),
            "{name} wrote no shuffle output: {shuffled:?}"
        );
    }
}

/// An executor keeps the inspections of the files its tasks read in its
/// cache (`$UQCAST_CACHE_DIR/netcdf/`), under their folder, as a table over
/// that folder keeps them; a file replaced in place under its name, with
/// other steps, is inspected again, so the task reads the steps planned.
#[test]
fn an_executor_keeps_its_files_inspections_and_follows_a_file_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (data, later) = (dir.path().join("data"), dir.path().join("later"));
    synth(&data, 8, "nc4", &["--files-per-day"]);
    super::synth_from(&later, "2021-06-01T00:00Z", 4, "nc4", 7, &[]);
    let cache = |process: &str| dir.path().join("cache").join(process);
    let cluster = Cluster::start_with(Path::new("."), Path::new("."), "127.0.0.1", &|name, c| {
        c.env("UQCAST_CACHE_DIR", cache(name));
    });
    let ask = |ballista: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_uqcast"));
        command
            .env("UQCAST_CACHE_DIR", cache("client"))
            .args(["sql", "--format", "csv", "--table"])
            .arg(format!("era5={}", data.display()))
            .arg("SELECT valid_time, round(avg(t2m), 4) AS t2m FROM era5 GROUP BY valid_time ORDER BY valid_time");
        if let Some(url) = ballista {
            command.args(["--ballista", url]);
        }
        let o = command.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let before = ask(Some(&cluster.url));
    assert_eq!(before, ask(None));
    assert_eq!(before.lines().count(), 1 + 8, "{before}");
    let kept = |process: &str| {
        let mut names: Vec<String> = std::fs::read_dir(cache(process).join("netcdf"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(kept("executor").len(), 1, "{}", cluster.executor_log());
    assert_eq!(
        kept("executor"),
        kept("client"),
        "the folder's, as its table's"
    );

    let first_day = walk_all(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "nc"))
        .min()
        .unwrap();
    let replacement = walk_all(&later)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "nc"))
        .unwrap();
    std::fs::copy(replacement, first_day).unwrap();
    let after = ask(Some(&cluster.url));
    assert_eq!(after, ask(None));
    assert!(
        after.contains("2021-06-01T18:00:00Z") && !after.contains("2020-01-01T00:00:00Z"),
        "{after}"
    );
}

/// `uqcast run --ballista`: executors sample the steps (two at once, whole
/// steps each); the client writes the same forecast table, step for step,
/// as a run on one machine, and a rerun writes nothing. A
/// `hyperdm_forecast(…)` query answers as on one machine too.
#[test]
fn a_forecast_run_on_the_cluster_writes_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 16);
    let config = config.to_str().unwrap();
    let local = dir.path().join("local");
    run_here(config, &local);

    let cluster = Cluster::start();
    let remote = dir.path().join("remote");
    let remote_run = || run_there(config, &remote, &cluster.url, &[]);
    // A dry run through the cluster's client says what the run then does.
    let o = run_there(config, &remote, &cluster.url, &["--dry-run"]);
    assert!(
        stdout(&o).starts_with(
            "uqcast run --dry-run: ok would_forecast=12 would_revise=0 existing_steps=0 \
             flag_months=1 flag_months_removed=0 output="
        ),
        "{}",
        stderr(&o)
    );
    // Half the steps, then the rest: the second run's source leaves the
    // first half out by a function of the client's, which travels to the
    // cluster with its times.
    let o = run_there(
        config,
        &remote,
        &cluster.url,
        &["--until", "2020-01-02T06:00Z"],
    );
    ran(&o, "uqcast run: ok new_steps=6 existing_steps=0");
    let o = remote_run();
    ran(&o, "uqcast run: ok new_steps=6 existing_steps=6");
    // The executors chose their devices; the client does not claim one.
    assert!(!stdout(&o).contains("device="), "{}", stdout(&o));
    assert_eq!(forecast_csv(&remote), forecast_csv(&local));
    let shuffled = walk_all(cluster.work.path()).len();
    assert!(shuffled > 0, "the executor wrote no shuffle files");

    let o = remote_run();
    ran(&o, "uqcast run: ok new_steps=0 existing_steps=12");
    // The same with a source query that is not step-local (a limit): the
    // filter leaving the steps out stays above the limit, in the stage
    // before the forecast, which it empties. The run ends (Ballista's
    // adaptive planner made one-task stages after it without end).
    let source = dir.path().join("source.sql");
    let query = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, format!("{query} LIMIT 1000000")).unwrap();
    let o = remote_run();
    ran(&o, "uqcast run: ok new_steps=0 existing_steps=12");
    std::fs::write(&source, query).unwrap();
    // An analyst's forecast query: the table function's source is planned
    // by the client and travels with it.
    let forecast = format!(
        "SELECT valid_time, count(*) AS cells, round(avg(t2m_mean), 3) AS mean, \
         round(avg(t2m_eu), 6) AS eu FROM hyperdm_forecast('{}', \
         'SELECT * FROM era5 WHERE valid_time < ''2020-01-01T18:00:00Z''', 2, 4, 'ddim-5', 3) \
         GROUP BY valid_time ORDER BY valid_time",
        dir.path().join("model/m.safetensors").display()
    );
    let table = [format!("era5={}", dir.path().join("data").display())];
    let answer = same_answer(&forecast, &table, &cluster.url);
    assert_eq!(answer.lines().count(), 1 + 3, "{answer}");
    // A forecast that fails mid-task (a step with a cell missing): the
    // client gives the forecast's own reason, as on one machine.
    let gappy = forecast.replace(
        "SELECT * FROM era5 WHERE",
        "SELECT valid_time, latitude, longitude, CASE WHEN valid_time > \
         ''2020-01-01T06:00:00Z'' AND latitude > 80 THEN NULL ELSE t2m END AS t2m FROM era5 WHERE",
    );
    let here = sql(&gappy, &table, None);
    let there = sql(&gappy, &table, Some(&cluster.url));
    let reason = "t2m is missing at latitude";
    assert!(stderr(&here).contains(reason), "{}", stderr(&here));
    assert_eq!(there.status.code(), Some(1));
    assert!(
        stderr(&there).contains(&format!(
            "query on the cluster at {}: a task failed: step 2020-01-01T12:00Z: {reason}",
            cluster.url
        )),
        "{}",
        stderr(&there)
    );

    // Input in °C under units "K": the task reading it fails, the client
    // says why, naming the file, and the failed first run leaves no table.
    let celsius = dir.path().join("celsius");
    let nc = super::pipeline::synth_in_celsius(&celsius);
    let fresh = dir.path().join("fresh");
    let input = ["--input", celsius.to_str().unwrap()];
    let o = run_there(config, &fresh, &cluster.url, &input);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let error_line = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert!(
        error_line.starts_with(&format!(
            "error: forecast on the cluster at {}: a task failed: {}: t2m at 2020-01-01T",
            cluster.url,
            nc.display()
        )) && error_line.contains("outside the 150…350 K"),
        "{}",
        stderr(&o)
    );
    assert!(
        !fresh.join("forecast").exists(),
        "a failed run left a table"
    );
}

/// What cannot reach a cluster says so, naming it; a failed first run
/// leaves no table.
#[test]
fn cluster_failures_are_one_clear_line() {
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), 2, "nc4", &[]);
    let table = [format!("era5={}", data.path().display())];
    let nobody = format!("df://127.0.0.1:{}", free_port());
    let o = sql("SELECT count(*) FROM era5", &table, Some(&nobody));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "error: query: no connection to the scheduler at {nobody}: Connection refused (is \
             `uqcast scheduler` running there, and reachable from here?)"
        )
    );

    let o = sql("SELECT 1", &[], Some("http://127.0.0.1:50050"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("expected df://HOST:PORT"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 2);
    let out = dir.path().join("out");
    let o = uqcast(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--ballista",
        &nobody,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "forecast: no connection to the scheduler at {nobody}: Connection refused"
        )),
        "{}",
        stderr(&o)
    );
    assert!(
        !out.join("forecast").exists(),
        "a failed first run leaves no table"
    );
}

/// An executor whose files differ from those the query was planned over
/// (here: a relative path, another folder, fewer steps) refuses the task,
/// and the client's error says why, as the executor's log does.
#[test]
fn an_executor_that_sees_other_files_refuses_the_task() {
    let (client, executor) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    synth(&client.path().join("data"), 4, "nc4", &[]);
    synth(&executor.path().join("data"), 2, "nc4", &[]);
    let name = |dir: &Path| {
        let files = walk_all(&dir.join("data"));
        files
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "nc"))
            .unwrap()
    };
    // The same file name, two steps instead of four.
    let planned = name(client.path());
    std::fs::rename(
        name(executor.path()),
        executor
            .path()
            .join("data")
            .join(planned.file_name().unwrap()),
    )
    .unwrap();

    let cluster = Cluster::start_in(client.path(), executor.path(), "127.0.0.1");
    let o = Command::new(env!("CARGO_BIN_EXE_uqcast"))
        .current_dir(client.path())
        .args([
            "sql",
            "SELECT valid_time, count(*) FROM era5 GROUP BY valid_time",
        ])
        .args(["--table", "era5=data", "--ballista", &cluster.url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let refusal = "data/era5_t2m_2020010100_2020010118.nc: step 2020-01-01T12:00:00Z planned, \
                   not in the files; the files changed since the query was planned, or differ \
                   on this machine";
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "error: query on the cluster at {}: a task failed: {refusal}",
            cluster.url
        )
    );
    let log = cluster.executor_log();
    assert!(
        log.contains("step 2020-01-01T12:00:00Z planned, not in the files")
            && log.contains(
                "the files changed since the query was planned, or differ on this machine"
            ),
        "{log}"
    );
}

/// `s3://` tables on a cluster: the plan names the objects and the stamps
/// they were planned with, not the client's copies. The scheduler plans
/// from the client's headers, and the executor fetches its own NetCDF
/// copies (only the objects, or of a long NetCDF3 object only the records,
/// its tasks read) with its own credentials, and reads Parquet in place. Answers
/// and a forecast run's table equal those from local files, and an object
/// replaced in the bucket is fetched again everywhere.
#[test]
fn s3_tables_on_the_cluster_are_fetched_where_they_are_read() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = trained(dir.path(), 4);
    copy_tree(&dir.path().join("data"), &server.path("era5-run"));
    copy_tree(&dir.path().join("model"), &server.path("models"));
    // Three days, one file each, for the queries.
    let daily = dir.path().join("daily");
    synth(&daily, 12, "nc4", &["--files-per-day"]);
    copy_tree(&daily, &server.path("era5"));
    let climatology = server.path("clim/climatology.parquet");
    std::fs::create_dir_all(climatology.parent().unwrap()).unwrap();
    write_climatology(&daily, &climatology);

    let cache = |role: &str| dir.path().join(format!("{role}-cache"));
    let cluster = Cluster::start_with(Path::new("."), Path::new("."), "127.0.0.1", &|role, c| {
        server.set_up(c, SECRET, &cache(role))
    });
    let last_day = "SELECT valid_time, count(*) AS cells, round(avg(t2m), 3) AS t2m FROM era5 \
                    WHERE valid_time >= '2020-01-03T00:00:00Z' \
                    GROUP BY valid_time ORDER BY valid_time";
    let anomalies = "SELECT e.valid_time, count(*) AS cells, round(avg(e.t2m), 3) AS t2m, \
                 round(avg(abs(e.t2m - c.t2m_clim)), 3) AS anomaly \
                 FROM era5 e JOIN clim c ON e.latitude = c.latitude AND e.longitude = c.longitude \
                 WHERE e.valid_time >= '2020-01-01T06:00:00Z' \
                 GROUP BY e.valid_time ORDER BY e.valid_time";
    let on_disk = |query: &str, era5: &Path| {
        let tables = [
            format!("era5={}", era5.display()),
            format!("clim={}", climatology.display()),
        ];
        let o = sql(query, &tables, None);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let on_cluster = |query: &str| {
        let o = server
            .command(SECRET, &cache("client"))
            .args(["sql", query, "--format", "csv", "--ballista", &cluster.url])
            .args(["--table", &format!("era5=s3://{BUCKET}/era5/*.nc")])
            .args([
                "--table",
                &format!("clim=s3://{BUCKET}/clim/climatology.parquet"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    // The NetCDF copies a process holds (none of the Parquet object).
    let copies = |role: &str| {
        let mut found: Vec<String> = walk_all(&cache(role))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "nc" || e == "parquet"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        found.sort();
        found
    };
    let days = [
        "era5_t2m_20200101.nc",
        "era5_t2m_20200102.nc",
        "era5_t2m_20200103.nc",
    ];

    // The last day's steps: the client plans every (NetCDF4) object from
    // the blocks a walk of its metadata fetched (and downloads none), the
    // scheduler plans from the client's descriptions (and fetches none),
    // the executor fetches only the one its tasks read.
    let expected = on_disk(last_day, &daily);
    assert_eq!(on_cluster(last_day), expected);
    assert_eq!(expected.lines().count(), 1 + 4, "{expected}");
    assert!(copies("client").is_empty(), "planned from walks");
    assert!(copies("scheduler").is_empty(), "planned from headers");
    assert_eq!(copies("executor"), days[2..]);

    let expected = on_disk(anomalies, &daily);
    assert_eq!(on_cluster(anomalies), expected);
    assert_eq!(expected.lines().count(), 1 + 11, "{expected}");
    // Whole copies only: each task reads a share of a day's steps, and
    // knows the query reads most of that day (no partial copy first).
    assert_eq!(copies("executor"), days, "{}", cluster.executor_log());

    // The forecast job with its input and its model in the bucket, sampled
    // on the cluster, writes the table a run over the files on disk writes;
    // the scheduler and the executor load the model from their own copies.
    let config = config.to_str().unwrap();
    let local = dir.path().join("out-local");
    run_here(config, &local);
    let remote = dir.path().join("out-cluster");
    let o = server
        .command(SECRET, &cache("client"))
        .args([
            "run",
            "--config",
            config,
            "--output",
            remote.to_str().unwrap(),
        ])
        .args([
            "--input",
            &format!("s3://{BUCKET}/era5-run"),
            "--model",
            &format!("s3://{BUCKET}/models/m.safetensors"),
            "--ballista",
            &cluster.url,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(forecast_csv(&remote), forecast_csv(&local));
    for role in ["scheduler", "executor"] {
        let models = cache(role).join("s3").join(BUCKET).join("models");
        assert!(
            models.join("m.safetensors").is_file() && models.join("m.json").is_file(),
            "{role}: {:?}",
            walk_all(&cache(role))
        );
    }

    // A NetCDF3 object of three days: the client plans from its header (and
    // fetches nothing), and a query of one step has the executor fetch only
    // that step's record, into a partial copy.
    let long = dir.path().join("long");
    synth(&long, 12, "nc3", &[]);
    copy_tree(&long, &server.path("era5-long"));
    let one_step = "SELECT round(avg(t2m), 3) AS t2m, round(max(t2m), 3) AS hi FROM era5 \
                    WHERE valid_time = '2020-01-02T06:00:00Z'";
    let o = server
        .command(SECRET, &cache("client"))
        .args([
            "sql",
            one_step,
            "--format",
            "csv",
            "--ballista",
            &cluster.url,
        ])
        .args(["--table", &format!("era5=s3://{BUCKET}/era5-long/*.nc")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), on_disk(one_step, &long));
    let held = |role: &str, folder: &str| {
        let below = format!("/{folder}/{BUCKET}/era5-long/");
        walk_all(&cache(role))
            .iter()
            .filter(|p| p.to_string_lossy().contains(&below))
            .filter(|p| p.extension().is_some_and(|e| e == "nc"))
            .count()
    };
    assert_eq!((held("client", "s3"), held("client", "s3-steps")), (0, 0));
    assert_eq!(
        (held("executor", "s3"), held("executor", "s3-steps")),
        (0, 1)
    );
    assert!(
        cluster.executor_log().contains(&format!(
            "reading 1 of 12 steps of s3://{BUCKET}/era5-long/"
        )),
        "{}",
        cluster.executor_log()
    );

    // Another writer replaces every object with other values for the same
    // steps: the next query is planned over the new objects, and the
    // executor fetches them instead of reading its stale copies.
    let replaced = dir.path().join("replaced");
    synth_seeded(&replaced, 12, "nc4", 11, &["--files-per-day"]);
    let replacements = std::fs::read_dir(&replaced)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nc"));
    for file in replacements {
        let name = file.file_name().unwrap().to_str().unwrap();
        server.put(name, "era5", &std::fs::read(&file).unwrap());
    }
    let expected_now = on_disk(anomalies, &replaced);
    assert_ne!(expected_now, expected, "seed 11 gives other values");
    assert_eq!(on_cluster(anomalies), expected_now);
    let log = cluster.executor_log();
    let downloads = log
        .matches(&format!("downloading s3://{BUCKET}/era5/"))
        .count();
    assert_eq!(downloads, 2 * days.len(), "{log}");

    // A value found wrong mid-scan (°C under units "K") fails the task on
    // the executor: the client's error and the executor's log name the
    // object, not a copy of it.
    let celsius = dir.path().join("celsius.nc");
    crate::errors::write_mislabelled(&celsius);
    server.put("celsius.nc", "bad", &std::fs::read(&celsius).unwrap());
    let o = server
        .command(SECRET, &cache("client"))
        .args(["sql", "SELECT avg(t2m) FROM t", "--ballista", &cluster.url])
        .args(["--table", &format!("t=s3://{BUCKET}/bad/celsius.nc")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let wrong = format!(
        "s3://{BUCKET}/bad/celsius.nc: t2m at 2020-01-01T00:00:00Z, latitude 0, longitude 0 \
         is 7.5 K, outside the 150…350 K a 2 m temperature can be (values in °C or °F under \
         units \"K\"?)"
    );
    let error_line = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert_eq!(
        error_line,
        format!(
            "error: query on the cluster at {}: a task failed: {wrong}",
            cluster.url
        )
    );
    let log = cluster.executor_log();
    let failure = log
        .lines()
        .find(|l| l.contains("t2m at 2020-01-01T00:00:00Z"))
        .unwrap_or_else(|| panic!("no failed task in the log: {log}"));
    assert!(
        failure.contains(&format!("s3://{BUCKET}/bad/celsius.nc: t2m at"))
            && !failure.contains(&cache("executor").display().to_string()),
        "{failure}"
    );
}

/// A process that cannot reach the bucket a plan names says which object
/// and why, to the client: a scheduler as the plan it cannot make (Parquet
/// only: it plans NetCDF tables from headers), an executor as the task it
/// cannot run (and in its log).
#[test]
fn processes_without_s3_credentials_name_the_object() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("data"), 2, "nc4", &[]);
    copy_tree(&dir.path().join("data"), &server.path("era5"));
    let object = format!("s3://{BUCKET}/era5/era5_t2m_2020010100_2020010106.nc");
    let cache = |role: &str| dir.path().join(format!("{role}-cache"));
    let without_credentials = |lacking: &'static str| {
        Cluster::start_with(Path::new("."), Path::new("."), "127.0.0.1", &|role, c| {
            server.set_up(c, SECRET, &cache(role));
            if role == lacking {
                c.env_remove("AWS_ACCESS_KEY_ID")
                    .env_remove("AWS_SECRET_ACCESS_KEY");
            }
        })
    };
    // A Parquet object too: DataFusion plans over Parquet by reading it.
    let parquet = server.path("clim/climatology.parquet");
    std::fs::create_dir_all(parquet.parent().unwrap()).unwrap();
    write_climatology(&dir.path().join("data"), &parquet);
    let query_over = |cluster: &Cluster, query: &str| {
        server
            .command(SECRET, &cache("client"))
            .args(["sql", query, "--ballista", &cluster.url])
            .args(["--table", &format!("era5=s3://{BUCKET}/era5/")])
            .args([
                "--table",
                &format!("clim=s3://{BUCKET}/clim/climatology.parquet"),
            ])
            .output()
            .unwrap()
    };
    let query = |cluster: &Cluster| query_over(cluster, "SELECT sum(t2m) FROM era5");

    // The scheduler plans NetCDF tables from the client's headers, so it
    // needs no credentials for them; it does to plan over Parquet.
    let cluster = without_credentials("scheduler");
    let o = query(&cluster);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = query_over(&cluster, "SELECT avg(t2m_clim) FROM clim");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "error: query on the cluster at {}: the scheduler could not plan it: s3://{BUCKET}: \
             no S3 credentials",
            cluster.url
        )),
        "{}",
        stderr(&o)
    );
    drop(cluster);

    // Without the copies the executor made above (a copy whose stamp is
    // the planned one is read without asking the bucket).
    std::fs::remove_dir_all(cache("executor")).unwrap();
    let cluster = without_credentials("executor");
    let o = query(&cluster);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "error: query on the cluster at {}: a task failed: {object}: a plan names it, this \
             process has no copy: no S3 credentials",
            cluster.url
        )),
        "{}",
        stderr(&o)
    );
    let log = cluster.executor_log();
    assert!(
        log.contains(&format!(
            "{object}: a plan names it, this process has no copy"
        )) && log.contains("no S3 credentials"),
        "{log}"
    );
}
