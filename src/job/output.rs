//! Where a run writes: a local folder ([`ForecastStore`]) or an S3 prefix
//! ([`S3ForecastStore`]), one interface for the job.

use std::path::{Path, PathBuf};

use anyhow::Result;
use datafusion::arrow::array::RecordBatch;
use object_store::path::Path as ObjectPath;

use super::flags::{self, Flags};
use super::s3_store::S3ForecastStore;
use super::store::{ForecastStore, Provenance};
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

/// A file of the forecast table to check a run's provenance against.
#[derive(Debug)]
pub enum Sample {
    Local(PathBuf),
    S3(ObjectPath),
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

    /// Valid times already in the table, and a file to check provenance on.
    pub async fn existing(&self) -> Result<(Vec<i64>, Option<Sample>)> {
        Ok(match self {
            Self::Local { store, .. } => {
                let (times, sample) = store.existing()?;
                (times, sample.map(Sample::Local))
            }
            Self::S3(store) => {
                let (times, sample) = store.existing().await?;
                (times, sample.map(Sample::S3))
            }
        })
    }

    pub async fn check_provenance(&self, sample: &Sample, expected: &Provenance) -> Result<()> {
        match (self, sample) {
            (_, Sample::Local(file)) => ForecastStore::check_provenance(file, expected),
            (Self::S3(store), Sample::S3(key)) => store.check_provenance(key, expected).await,
            (Self::Local { .. }, Sample::S3(_)) => anyhow::bail!("an S3 sample of a local table"),
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

    pub async fn has_flags(&self) -> Result<bool> {
        match self {
            Self::Local { dir, .. } => Ok(dir.join("flags").join("flags.parquet").exists()),
            Self::S3(store) => store.has_flags().await,
        }
    }

    pub async fn write_flags(&self, flags: &Flags, provenance: &Provenance) -> Result<String> {
        match self {
            Self::Local { dir, .. } => Ok(flags::write_local(flags, dir, provenance)?
                .display()
                .to_string()),
            Self::S3(store) => store.write_flags(flags, provenance).await,
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
