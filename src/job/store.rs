//! The `forecast` table on disk: one Parquet file per forecast step under
//! Hive partitions, written atomically.
//!
//! ```text
//! DIR/forecast/year=2020/month=01/t2m_20200103T1200.parquet   (valid time)
//! DIR/flags/year=2020/month=01/flags_202001.parquet          (flags_months)
//! ```
//! A step's file is written to a hidden temporary beside it and renamed, so
//! readers and re-runs see a step entirely or not at all. Provenance (model
//! id, M, N, sampler, seed, lead) is Parquet file metadata; a run refuses to
//! add steps from a different model or sampling to an existing table.
//!
//! One run writes a table at a time: `DIR/.uqcast-run.lock` is held (an OS
//! file lock, released when the process ends, however it ends) for as long
//! as the store is open. A second run on the same `DIR` (a scheduled run
//! overlapping a slow one) is refused: it would sample the same steps again
//! and delete the first run's temporaries as a killed run's.

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Datelike, Utc};
use datafusion::arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};

/// Provenance stored in every file, as `uqcast.*` key-value metadata.
pub type Provenance = BTreeMap<String, String>;

/// Keys that must agree between a run and the files already written.
const MUST_MATCH: [&str; 5] = ["model_id", "members", "samples", "sampler", "seed"];

#[derive(Debug)]
pub struct ForecastStore {
    pub root: PathBuf,
    /// Held until the store is dropped; the OS releases it if the process
    /// dies. None for a store opened to read only ([`Self::open_to_read`]).
    lock: Option<File>,
}

/// The lock file of the run writing `dir`, beside `forecast/` and `flags/`.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(".uqcast-run.lock")
}

/// Takes `dir`'s run lock without waiting and writes this process's id into
/// it (so a refused run can say which process holds it).
fn lock_output(dir: &Path) -> Result<File> {
    let path = lock_path(dir);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("output {}: cannot open the run lock", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            bail!(
                "output {}: another uqcast run{holder} is writing this table and holds {}; \
                 wait for it to end, or write to another --output",
                dir.display(),
                path.display()
            );
        }
        // A filesystem without locks (some network mounts) must not stop
        // the job; it only loses the guard against overlapping runs.
        Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!(
                "warning: {}: this filesystem has no file locks; overlapping runs on this output are not prevented",
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e)
                .with_context(|| format!("output {}: cannot take the run lock", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("output {}: cannot write the run lock", path.display()))?;
    Ok(file)
}

impl ForecastStore {
    /// Creates `DIR/forecast` if needed (a clear error if it cannot) and
    /// takes the run lock, refusing if another run holds it.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = dir.join("forecast");
        std::fs::create_dir_all(&root).with_context(|| {
            format!(
                "output {}: cannot create the forecast table",
                root.display()
            )
        })?;
        let lock = lock_output(dir)?;
        let probe = root.join(format!(".write-test-{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .with_context(|| format!("output {}: not writable", root.display()))?;
        Ok(Self {
            root,
            lock: Some(lock),
        })
    }

    /// The store at `dir` to read only, as it is: nothing is created or
    /// cleaned and no lock is taken (a run may be writing it), and a
    /// folder not made yet holds no steps.
    pub fn open_to_read(dir: &Path) -> Self {
        Self {
            root: dir.join("forecast"),
            lock: None,
        }
    }

    /// An error for a store opened to read only, before anything is written.
    pub fn writable(&self) -> Result<()> {
        if self.lock.is_none() {
            bail!(
                "output {}: opened to read only (a dry run), not to write",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Removes the store's folders and lock, for a run that made them and
    /// wrote nothing (`remove_dir` leaves a folder that holds anything).
    pub fn remove_unused(self, dir: &Path) {
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_file(lock_path(dir));
        let _ = std::fs::remove_dir(dir);
    }

    fn files(&self) -> Result<Vec<PathBuf>> {
        crate::session::files_below(&self.root)
    }

    /// Removes temporaries a killed run left behind, in the forecast and
    /// flags tables and beside them (the recheck's ledger).
    pub fn clean_temporaries(&self) -> Result<usize> {
        let mut removed = 0;
        let dir = self.root.parent().unwrap_or(&self.root);
        let flags = super::flags::local_folder(dir);
        let flags_files = if flags.is_dir() {
            crate::session::files_below(&flags)?
        } else {
            Vec::new()
        };
        let beside = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file());
        for path in self.files()?.into_iter().chain(flags_files).chain(beside) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp") {
                std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Valid times (UTC µs) already in the table, with the file to check
    /// provenance on ([`steps_and_newest`]).
    pub fn existing(&self) -> Result<(Vec<i64>, Option<PathBuf>)> {
        if self.lock.is_none() && !self.root.exists() {
            return Ok((Vec::new(), None));
        }
        Ok(steps_and_newest(self.files()?, |path| {
            valid_time_of(&path.file_name()?.to_string_lossy())
        }))
    }

    /// Errors if `file` was written with different provenance.
    pub fn check_provenance(file: &Path, expected: &Provenance) -> Result<()> {
        let label = file.display().to_string();
        let reader = File::open(file)
            .map_err(anyhow::Error::from)
            .and_then(|f| Ok(SerializedFileReader::new(f)?))
            .with_context(|| format!("{label}: unreadable forecast file"))?;
        check_stored_provenance(&label, &reader, expected)
    }

    /// Writes one step (all rows share `valid_time`) atomically; returns its path.
    pub fn write_step(
        &self,
        valid_time: i64,
        batch: &RecordBatch,
        provenance: &Provenance,
    ) -> Result<PathBuf> {
        self.writable()?;
        let (name, partition) = step_name(valid_time)?;
        let path = self.root.join(partition).join(&name);
        write_atomically(&path, std::slice::from_ref(batch), provenance)
            .with_context(|| format!("{}: writing forecast step", path.display()))?;
        Ok(path)
    }
}

/// Writes `path` (its folders made as needed) through a hidden temporary
/// beside it (`.NAME.tmp-PID`, which [`ForecastStore::clean_temporaries`]
/// removes after a killed run) renamed into place: readers see the whole
/// file or none.
pub fn write_atomically(
    path: &Path,
    batches: &[RecordBatch],
    provenance: &Provenance,
) -> Result<()> {
    let dir = path.parent().context("a file has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    write_parquet_file(&tmp, batches, provenance)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(Into::into))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Errors if the forecast file `label` (read by `reader`) was written with
/// other provenance than `expected`.
pub fn check_stored_provenance<R: ChunkReader + 'static>(
    label: &str,
    reader: &SerializedFileReader<R>,
    expected: &Provenance,
) -> Result<()> {
    let stored = stored_provenance(reader);
    for key in MUST_MATCH {
        let (have, want) = (stored.get(key), expected.get(key));
        if have != want {
            bail!(
                "{label}: written with {key} = {}, this run uses {}; write to another --output or remove the old table",
                have.map_or("(none)", String::as_str),
                want.map_or("(none)", String::as_str)
            );
        }
    }
    Ok(())
}

/// The `uqcast.*` metadata of a file `reader` reads, without the prefix.
pub fn stored_provenance<R: ChunkReader + 'static>(reader: &SerializedFileReader<R>) -> Provenance {
    provenance_of(reader.metadata().file_metadata())
}

/// The `uqcast.*` metadata of a file's footer, without the prefix.
pub fn provenance_of(footer: &parquet::file::metadata::FileMetaData) -> Provenance {
    footer
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| {
                    Some((e.key.strip_prefix("uqcast.")?.to_string(), e.value.clone()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The provenance of the flags file at `path`; `None` where there is none.
pub fn flags_provenance(path: &Path) -> Result<Option<Provenance>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: unreadable flags", path.display())),
    };
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{}: unreadable flags", path.display()))?;
    Ok(Some(stored_provenance(&reader)))
}

/// Writes batches to one Parquet file with zstd and `uqcast.*` metadata
/// (the Arrow schema, with its field units, travels in the footer).
pub fn write_parquet_file(
    path: &Path,
    batches: &[RecordBatch],
    provenance: &Provenance,
) -> Result<()> {
    let file = write_parquet(File::create(path)?, batches, provenance)?;
    file.sync_all()?;
    Ok(())
}

/// Writes batches as one Parquet file into `sink` (a file, or memory for an
/// object store's single atomic put), as [`write_parquet_file`].
pub fn write_parquet<W: Write + Send>(
    sink: W,
    batches: &[RecordBatch],
    provenance: &Provenance,
) -> Result<W> {
    let Some(first) = batches.first() else {
        bail!("nothing to write");
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_key_value_metadata(Some(
            provenance
                .iter()
                .map(|(k, v)| KeyValue::new(format!("uqcast.{k}"), v.clone()))
                .collect(),
        ))
        .build();
    let failed = Arc::new(Mutex::new(None));
    let sink = Watched {
        inner: sink,
        failed: failed.clone(),
    };
    let written = ArrowWriter::try_new(sink, first.schema(), Some(props)).and_then(|mut writer| {
        for b in batches {
            writer.write(b)?;
        }
        writer.into_inner()
    });
    let sink_error = failed.lock().ok().and_then(|mut f| f.take());
    match (written, sink_error) {
        (Ok(sink), _) => Ok(sink.inner),
        (Err(_), Some(io)) => Err(io.into()),
        (Err(e), None) => Err(e.into()),
    }
}

/// A sink that keeps the first error it gives. The parquet writer reports
/// its sink's errors in its own words ("External: …", "fail to get inner
/// writer: …", by where it was); the sink's own error says what happened
/// ("No space left on device (os error 28)").
struct Watched<W> {
    inner: W,
    failed: Arc<Mutex<Option<std::io::Error>>>,
}

impl<W: Write> Watched<W> {
    fn watch<T>(&mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        result.inspect_err(|e| {
            if let Ok(mut failed) = self.failed.lock() {
                // io::Error is not Clone; an OS error is rebuilt from its
                // number, which keeps its message.
                let copy = match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(e.kind(), e.to_string()),
                };
                failed.get_or_insert(copy);
            }
        })
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.inner.write(buf);
        self.watch(result)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.inner.flush();
        self.watch(result)
    }
}

/// The file name of the step valid at `t`, and its Hive partition folder
/// (`year=YYYY/month=MM`), shared by the local and S3 stores.
pub fn step_name(valid_time: i64) -> Result<(String, String)> {
    let t: DateTime<Utc> =
        DateTime::from_timestamp_micros(valid_time).context("valid time out of range")?;
    Ok((
        format!("t2m_{}.parquet", t.format("%Y%m%dT%H%M")),
        format!("year={:04}/month={:02}", t.year(), t.month()),
    ))
}

/// `SELECT {columns} FROM {table}` of the steps valid at `times`, one
/// branch a month joined by `UNION ALL`. Each branch names its folder by
/// equalities (`year = '2020' AND month = '01'`), which DataFusion lists as
/// a key prefix before it reads any footer; an `IN` or `OR` over the
/// partitions would still list every file of the table (one request per
/// 1,000 keys on S3) and filter the names. So a query lists and opens only
/// those months' files, however long the table's history.
pub fn months_select(table: &str, columns: &str, times: &[i64]) -> Result<String> {
    let mut months: BTreeMap<(i32, u32), Vec<i64>> = BTreeMap::new();
    for &t in times {
        let at: DateTime<Utc> =
            DateTime::from_timestamp_micros(t).context("valid time out of range")?;
        months.entry((at.year(), at.month())).or_default().push(t);
    }
    if months.is_empty() {
        return Ok(format!("SELECT {columns} FROM {table} WHERE FALSE"));
    }
    let branches: Vec<String> = months
        .iter()
        .map(|((year, month), times)| {
            format!(
                "SELECT {columns} FROM {table} WHERE year = '{year:04}' AND month = '{month:02}' \
                 AND valid_time IN ({})",
                super::timestamps_sql(times)
            )
        })
        .collect();
    Ok(branches.join("\nUNION ALL\n"))
}

/// The valid times of the step files among `files` (`valid_time` reads a
/// file's name), sorted, and the newest step's file: a run checks the
/// table's provenance on it, as the last run wrote it, so that a damaged
/// older file, which a run does not otherwise read, does not stop every
/// run (a query over the table names it).
pub fn steps_and_newest<T>(
    files: Vec<T>,
    valid_time: impl Fn(&T) -> Option<i64>,
) -> (Vec<i64>, Option<T>) {
    let mut times = Vec::new();
    let mut newest: Option<(i64, T)> = None;
    for file in files {
        let Some(t) = valid_time(&file) else {
            continue;
        };
        times.push(t);
        if newest.as_ref().is_none_or(|(n, _)| t > *n) {
            newest = Some((t, file));
        }
    }
    times.sort_unstable();
    (times, newest.map(|(_, file)| file))
}

/// The valid time a step file's name carries (`t2m_YYYYMMDDTHHMM.parquet`,
/// as [`step_name`] writes it). Read digit by digit: a table's registration
/// reads every file's name (14,612 over ten years of steps), where
/// chrono's format parser took a third of a second in the `dev` build.
pub fn valid_time_of(name: &str) -> Option<i64> {
    let stem = name.strip_prefix("t2m_")?.strip_suffix(".parquet")?;
    let (date, time) = stem.split_once('T')?;
    let digits = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(date, 8) || !digits(time, 4) {
        return None;
    }
    // ASCII digits only from here: slicing stays on characters.
    let number = |digits: &str| digits.parse::<u32>().ok();
    let day = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(&date[..4])?).ok()?,
        number(&date[4..6])?,
        number(&date[6..])?,
    )?;
    let t = day.and_hms_opt(number(&time[..2])?, number(&time[2..])?, 0)?;
    Some(t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_valid_time() {
        assert_eq!(
            valid_time_of("t2m_20200103T1200.parquet"),
            Some(1_578_052_800_000_000)
        );
        assert_eq!(valid_time_of(".t2m_20200103T1200.parquet.tmp-7"), None);
        assert_eq!(valid_time_of("t2m_2020.parquet"), None);
        // What a run writes reads back, over centuries and a leap day.
        for t in [
            "1850-01-01T00:00:00Z",
            "1999-12-31T18:00:00Z",
            "2020-02-29T06:00:00Z",
            "2100-03-01T12:30:00Z",
            "9999-12-31T23:59:00Z",
        ] {
            let micros = chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_micros();
            let (name, _) = step_name(micros).unwrap();
            assert_eq!(valid_time_of(&name), Some(micros), "{name}");
        }
        // Not a time, or not written so.
        for stem in [
            "20201303T1200", // month 13
            "20200230T1200", // February 30
            "20200103T2400", // hour 24
            "20200103T1260", // minute 60
            "2020013T12000", // the T misplaced
            "20200103T120",
            "+2020103T1200",
            "2020 103T1200",
            "20200103t1200",
            "20200103T1200Z",
            "202é003T1200", // 8 bytes, not 8 digits
        ] {
            assert_eq!(
                valid_time_of(&format!("t2m_{stem}.parquet")),
                None,
                "{stem}"
            );
        }
    }

    #[test]
    fn each_months_steps_are_read_from_that_months_folder() {
        let at = |name: &str| valid_time_of(&format!("t2m_{name}.parquet")).unwrap();
        let times = [
            at("20200131T1800"),
            at("20191231T1800"),
            at("20200201T0000"),
            at("20200102T0000"),
        ];
        let sql = months_select("f", "*", &times).unwrap();
        let branches: Vec<&str> = sql.split("\nUNION ALL\n").collect();
        assert_eq!(branches.len(), 3, "{sql}");
        // Each step is in the branch of the folder it is written to.
        for t in times {
            let (_, folder) = step_name(t).unwrap();
            let (year, month) = folder.split_once('/').unwrap();
            let names = format!("year = '{}' AND month = '{}'", &year[5..], &month[6..]);
            let holding: Vec<&&str> = branches
                .iter()
                .filter(|b| b.contains(&super::super::timestamp_sql(t)))
                .collect();
            assert_eq!(holding.len(), 1, "{sql}");
            assert!(holding[0].contains(&names), "{folder}: {}", holding[0]);
        }
        assert_eq!(
            months_select("f", "a, b", &[]).unwrap(),
            "SELECT a, b FROM f WHERE FALSE"
        );
    }

    #[test]
    fn a_killed_runs_temporaries_are_removed_from_the_tables_and_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = ForecastStore::open(dir.path()).unwrap();
        let month = dir.path().join("forecast/year=2020/month=01");
        std::fs::create_dir_all(&month).unwrap();
        let left = [
            month.join(".t2m_20200103T1200.parquet.tmp-7"),
            dir.path().join("..uqcast-recheck.json.7.tmp.json"),
        ];
        let kept = [
            month.join("t2m_20200103T0600.parquet"),
            dir.path().join(".uqcast-recheck.json"),
            lock_path(dir.path()),
        ];
        for file in left.iter().chain(&kept) {
            std::fs::write(file, b"x").unwrap();
        }
        assert_eq!(store.clean_temporaries().unwrap(), 2);
        assert!(left.iter().all(|f| !f.exists()));
        assert!(kept.iter().all(|f| f.exists()));
    }

    #[test]
    fn the_newest_step_file_speaks_for_the_table() {
        let files = [
            "year=2020/month=02/t2m_20200201T0000.parquet",
            "year=2019/month=12/t2m_20191231T1800.parquet",
            "year=2020/month=02/.t2m_20200301T0000.parquet.tmp-7",
            "year=2020/month=01/t2m_20200131T1800.parquet",
        ];
        let name = |f: &&str| valid_time_of(f.rsplit('/').next()?);
        let (times, newest) = steps_and_newest(files.to_vec(), name);
        assert_eq!(times.len(), 3);
        assert!(times.is_sorted());
        assert_eq!(newest, Some(files[0]));
        assert_eq!(steps_and_newest(Vec::<&str>::new(), name), (vec![], None));
    }

    /// A sink that refuses every byte, as a full disk does.
    #[derive(Debug)]
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_is_named_as_the_system_names_it() {
        use datafusion::arrow::array::Float32Array;
        let t2m = Arc::new(Float32Array::from(vec![280.0]));
        let batch = RecordBatch::try_from_iter([("t2m", t2m as _)]).unwrap();
        let err = write_parquet(Full, &[batch], &Provenance::new()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "No space left on device (os error 28)",
            "{err:?}"
        );
    }
}
