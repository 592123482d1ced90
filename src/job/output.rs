//! Where a run writes: a local folder ([`ForecastStore`]) or an S3 prefix
//! ([`S3ForecastStore`]), one interface for the job.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::flags::{self, Flags};
use super::flags_months;
use super::s3_store::S3ForecastStore;
use super::store::{ForecastStore, Provenance};
use crate::session::TableArg;
use crate::session::s3::S3Location;

#[derive(Debug)]
pub enum Output {
    Local {
        dir: PathBuf,
        store: ForecastStore,
        /// Whether this run made the folder (removed again if nothing is written).
        created: bool,
    },
    S3(S3ForecastStore),
}

impl Output {
    /// Opens the output at `location` (a folder or `s3://BUCKET/PREFIX`),
    /// taking its run lock, and cleans what a killed run left.
    pub async fn open(location: &Path) -> Result<Self> {
        let text = location.to_string_lossy();
        if let Some(remote) = S3Location::parse(&text)? {
            return Ok(Self::S3(S3ForecastStore::open(&remote).await?));
        }
        let created = !location.exists();
        let store = ForecastStore::open(location)?;
        store.clean_temporaries()?;
        Ok(Self::Local {
            dir: location.to_path_buf(),
            store,
            created,
        })
    }

    /// Opens the output at `location` to read only (`uqcast run
    /// --dry-run`): no lock, nothing made or cleaned; an output not made
    /// yet holds no steps. Writing to it is an error.
    pub fn open_to_read(location: &Path) -> Result<Self> {
        let text = location.to_string_lossy();
        if let Some(remote) = S3Location::parse(&text)? {
            return Ok(Self::S3(S3ForecastStore::open_to_read(&remote)?));
        }
        Ok(Self::Local {
            dir: location.to_path_buf(),
            store: ForecastStore::open_to_read(location),
            created: false,
        })
    }

    /// Valid times already in the table, after checking that the table was
    /// written with `expected` provenance (one file speaks for the table).
    pub async fn existing(&self, expected: &Provenance) -> Result<Vec<i64>> {
        match self {
            Self::Local { store, .. } => {
                let (times, sample) = store.existing()?;
                if let Some(file) = sample {
                    ForecastStore::check_provenance(&file, expected)?;
                }
                Ok(times)
            }
            Self::S3(store) => {
                let (times, sample) = store.existing().await?;
                if let Some(key) = sample {
                    store.check_provenance(&key, expected).await?;
                }
                Ok(times)
            }
        }
    }

    /// Writes one step; returns where it went, for the progress line.
    pub async fn write_step(
        &self,
        valid_time: i64,
        batch: &RecordBatch,
        provenance: &Provenance,
    ) -> Result<String> {
        match self {
            Self::Local { store, .. } => Ok(store
                .write_step(valid_time, batch, provenance)?
                .display()
                .to_string()),
            Self::S3(store) => store.write_step(valid_time, batch, provenance).await,
        }
    }

    /// The forecast table's location for a query session.
    pub fn forecast_location(&self) -> String {
        match self {
            Self::Local { store, .. } => store.root.display().to_string(),
            Self::S3(store) => store.forecast_url(),
        }
    }

    /// A session whose table `name` is the forecast table, with the
    /// contract's columns and the `year`/`month` partitions, and that
    /// table (for naming a damaged file). Where `uqcast sql` infers a
    /// table's schema from every file and checks every footer first, this
    /// reads none, and each scan lists only the folders its filters name
    /// ([`super::store::months_select`]): what a run reads of its own table
    /// does not grow with the table's history (4,972 steps on local disk:
    /// 2.7 s before the first row; docs/forecast-job-measurements.md).
    pub async fn forecast_session(&self, name: &str) -> Result<(SessionContext, TableArg)> {
        let location = self.forecast_location();
        let schema = uqcast_forecast::forecast_schema();
        let ctx = self.session_over(name, &location, &schema).await?;
        let table = TableArg {
            name: name.into(),
            location,
        };
        Ok((ctx, table))
    }

    /// A session whose table `name` is the flags table, as
    /// [`Self::forecast_session`] makes the forecast table's.
    pub async fn flags_session(&self, name: &str) -> Result<SessionContext> {
        let location = self.flags_file_location("");
        self.session_over(name, &location, flags::flags_schema()?.as_ref())
            .await
    }

    /// A session whose table `name` is the partitioned Parquet table at
    /// `location` (this output's), with `schema` and the `year`/`month`
    /// partitions.
    async fn session_over(
        &self,
        name: &str,
        location: &str,
        schema: &Schema,
    ) -> Result<SessionContext> {
        let ctx = crate::session::new_context();
        if let Self::S3(store) = self {
            store.register_in(&ctx)?;
        }
        let partitions =
            ["year", "month"].map(|c| (c.to_string(), crate::session::partition_type()));
        let options = ParquetReadOptions::default()
            .schema(schema)
            .table_partition_cols(partitions.to_vec());
        ctx.register_parquet(name, location, options)
            .await
            .with_context(|| format!("table '{name}': {location}"))?;
        Ok(ctx)
    }

    /// The flags file `file` (a path below the flags folder:
    /// [`flags_months::file_of`] a month), for a query session.
    pub fn flags_file_location(&self, file: &str) -> String {
        match self {
            Self::Local { dir, .. } => flags::local_folder(dir).join(file).display().to_string(),
            Self::S3(store) => store.flags_url(file),
        }
    }

    /// The months the flags table has a file for (and whether the one-file
    /// table of earlier runs is there).
    pub async fn flags_files(&self) -> Result<flags_months::Files> {
        match self {
            Self::Local { dir, .. } => {
                let folder = flags::local_folder(dir);
                if !folder.is_dir() {
                    return Ok(flags_months::Files::default());
                }
                let files = crate::session::files_below(&folder)?;
                Ok(flags_months::Files::of(files.iter().filter_map(|f| {
                    let relative = f.strip_prefix(&folder).ok()?;
                    let parts: Vec<String> = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    Some(parts.join("/"))
                })))
            }
            Self::S3(store) => Ok(flags_months::Files::of(store.flags_files().await?)),
        }
    }

    /// The provenance the flags file `file` (below the flags folder) was
    /// written with; `None` where there is no such file.
    pub async fn flags_provenance(&self, file: &str) -> Result<Option<Provenance>> {
        match self {
            Self::Local { dir, .. } => {
                super::store::flags_provenance(&flags::local_folder(dir).join(file))
            }
            Self::S3(store) => store.flags_provenance(file).await,
        }
    }

    /// Writes `month`'s flags file; returns where it went.
    pub async fn write_flags(
        &self,
        month: &str,
        flags: &Flags,
        provenance: &Provenance,
    ) -> Result<String> {
        match self {
            Self::Local { dir, store, .. } => {
                store.writable()?;
                Ok(flags::write_local(flags, dir, month, provenance)?
                    .display()
                    .to_string())
            }
            Self::S3(store) => {
                let file = flags_months::file_of(month);
                store.write_flags(&file, flags, provenance).await
            }
        }
    }

    /// Removes the flags file `file` (below the flags folder); one that is
    /// not there is no error.
    pub async fn remove_flags(&self, file: &str) -> Result<()> {
        match self {
            Self::Local { dir, store, .. } => {
                store.writable()?;
                let folder = flags::local_folder(dir);
                let path = folder.join(file);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(e).with_context(|| format!("{}: removing flags", path.display()))
                    }
                    _ => {
                        // An emptied month's folders go too (`remove_dir`
                        // leaves a folder that holds anything).
                        for emptied in path.ancestors().skip(1).take_while(|f| *f != folder) {
                            let _ = std::fs::remove_dir(emptied);
                        }
                        Ok(())
                    }
                }
            }
            Self::S3(store) => store.remove_flags(file).await,
        }
    }

    /// Each forecast file whose step is valid at or after `from` (UTC
    /// µs), by its path below the table, with what changes when it is written again
    /// ([`super::recheck_ledger::file_stamp`], or an object's ETag).
    pub async fn forecast_identities(&self, from: i64) -> Result<Vec<(String, String)>> {
        match self {
            Self::Local { store, .. } => {
                let mut out = Vec::new();
                for path in crate::session::files_below(&store.root)? {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    if super::store::valid_time_of(&name) >= Some(from) {
                        let stamp = super::recheck_ledger::file_stamp(&path)?;
                        // Relative, so that the same folder named otherwise
                        // (`out`, `./out`, its absolute path) lists the same.
                        let relative = path.strip_prefix(&store.root).unwrap_or(&path);
                        out.push((relative.display().to_string(), stamp));
                    }
                }
                Ok(out)
            }
            Self::S3(store) => store.forecast_identities(from).await,
        }
    }

    /// Where the output's file `name` (beside `forecast/`) is, for messages.
    pub fn note_location(&self, name: &str) -> String {
        match self {
            Self::Local { dir, .. } => dir.join(name).display().to_string(),
            Self::S3(store) => store.note_url(name),
        }
    }

    /// The bytes of the output's file `name`, or `None` if it has none.
    pub async fn read_note(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Local { dir, .. } => match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| dir.join(name).display().to_string()),
            },
            Self::S3(store) => store.read_note(name).await,
        }
    }

    /// Writes the output's file `name` whole (renamed into place on disk;
    /// a killed run's temporary is removed when the next opens the output).
    pub async fn write_note(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Self::Local { dir, store, .. } => {
                store.writable()?;
                let path = dir.join(name);
                let file = crate::cli::output::WrittenBeside::create(&path, "file")?;
                let written = std::fs::write(&file.tmp, bytes).map_err(Into::into);
                file.finish(written)
            }
            Self::S3(store) => store.write_note(name, bytes).await.map(drop),
        }
    }

    /// Ends the run and releases the lock; `wrote_nothing` removes a local
    /// output this run made, so a failed first run leaves no empty table.
    pub async fn close(self, wrote_nothing: bool) {
        match self {
            Self::Local {
                dir,
                store,
                created,
            } => {
                if created && wrote_nothing {
                    store.remove_unused(&dir);
                }
            }
            Self::S3(store) => store.close().await,
        }
    }
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
