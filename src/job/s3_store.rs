//! The `forecast` and `flags` tables in an S3 bucket, laid out as on disk
//! (`PREFIX/forecast/year=…/month=…/t2m_….parquet`,
//! `PREFIX/flags/year=…/month=…/flags_YYYYMM.parquet`).
//!
//! Each file is encoded in memory and stored with one PUT, which S3 makes
//! visible entirely or not at all: the atomic rename of the local store
//! comes free, and a killed run leaves no temporaries. One writer at a time
//! holds `PREFIX/.uqcast-run.lock` ([`S3Lock`]).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::SerializedFileReader;

use super::flags::Flags;
use super::s3_lock::S3Lock;
use super::store::{
    Provenance, check_stored_provenance, provenance_of, step_name, steps_and_newest, valid_time_of,
    write_parquet,
};
use crate::session::s3::{S3Location, connect};

/// Bytes read from the end of the flags object for its footer: the
/// footer of a flags table with its provenance is a few KiB.
const FOOTER_GUESS: u64 = 64 * 1024;

#[derive(Debug)]
pub struct S3ForecastStore {
    store: Arc<AmazonS3>,
    bucket: String,
    /// The output's key prefix, without a trailing slash ("" for the bucket).
    prefix: String,
    /// None for a store opened to read only ([`Self::open_to_read`]).
    lock: Option<S3Lock>,
}

impl S3ForecastStore {
    /// Connects and takes the output's run lock.
    pub async fn open(location: &S3Location) -> Result<Self> {
        if location.is_glob() {
            bail!("{location}: an output is a prefix, not a glob");
        }
        let mut output = Self::open_to_read(location)?;
        let lock_key = join(&output.prefix, ".uqcast-run.lock");
        let lock_url = format!("s3://{}/{lock_key}", location.bucket);
        let lock = S3Lock::acquire(output.store.clone(), ObjectPath::from(lock_key), lock_url)
            .await
            .with_context(|| format!("output {location}"))?;
        output.lock = Some(lock);
        Ok(output)
    }

    /// Connects to read only: no lock is taken (a run may be writing).
    pub fn open_to_read(location: &S3Location) -> Result<Self> {
        if location.is_glob() {
            bail!("{location}: an output is a prefix, not a glob");
        }
        let store = connect(location).with_context(|| format!("output {location}"))?;
        Ok(Self {
            store,
            bucket: location.bucket.clone(),
            prefix: location.key.trim_end_matches('/').to_string(),
            lock: None,
        })
    }

    /// An error where this store must not write: opened to read only, or
    /// its lock lost.
    fn writable(&self) -> Result<()> {
        match &self.lock {
            Some(lock) => lock.check(),
            None => bail!(
                "output {}: opened to read only (a dry run), not to write",
                self.url(&self.prefix)
            ),
        }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Makes the bucket's `s3://` URLs readable in `ctx` through this
    /// store's connection.
    pub fn register_in(&self, ctx: &datafusion::prelude::SessionContext) -> Result<()> {
        crate::session::s3::register_bucket(ctx, &self.bucket, self.store.clone())
    }

    /// The forecast table's location, as `uqcast sql` reads it.
    pub fn forecast_url(&self) -> String {
        self.url(&join(&self.prefix, "forecast/"))
    }

    /// The key of `relative`, a path below the flags table's folder.
    fn flags_key(&self, relative: &str) -> String {
        join(&self.prefix, &format!("flags/{relative}"))
    }

    /// The URL of `relative` below the flags table's folder, as a query
    /// session reads it.
    pub fn flags_url(&self, relative: &str) -> String {
        self.url(&self.flags_key(relative))
    }

    /// The paths of the objects below the flags table's folder, relative
    /// to it.
    pub async fn flags_files(&self) -> Result<Vec<String>> {
        let folder = self.flags_key("");
        let keys = self.keys_below("flags").await?;
        Ok(keys
            .iter()
            .filter_map(|k| k.as_ref().strip_prefix(folder.as_str()).map(str::to_string))
            .collect())
    }

    /// The objects below `folder`, after the key `PREFIX/{after}` if given.
    async fn objects_below(&self, folder: &str, after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let prefix = ObjectPath::from(join(&self.prefix, folder));
        let listing = match after {
            None => self.store.list(Some(&prefix)),
            Some(after) => {
                let offset = ObjectPath::from(join(&self.prefix, after));
                self.store.list_with_offset(Some(&prefix), &offset)
            }
        };
        listing
            .try_collect()
            .await
            .with_context(|| format!("listing {}", self.url(prefix.as_ref())))
    }

    async fn keys_below(&self, folder: &str) -> Result<Vec<ObjectPath>> {
        let objects = self.objects_below(folder, None).await?;
        let mut keys: Vec<ObjectPath> = objects.into_iter().map(|o| o.location).collect();
        keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        Ok(keys)
    }

    /// Valid times (UTC µs) already in the table, with the key to check
    /// provenance on ([`steps_and_newest`]).
    pub async fn existing(&self) -> Result<(Vec<i64>, Option<ObjectPath>)> {
        let keys = self.keys_below("forecast").await?;
        Ok(steps_and_newest(keys, |key| {
            key.filename().and_then(valid_time_of)
        }))
    }

    /// Errors if the file at `key` was written with other provenance.
    pub async fn check_provenance(&self, key: &ObjectPath, expected: &Provenance) -> Result<()> {
        let url = self.url(key.as_ref());
        let fetched = match self.store.get(key).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = fetched.with_context(|| format!("{url}: unreadable forecast file"))?;
        let reader = SerializedFileReader::new(bytes)
            .with_context(|| format!("{url}: unreadable forecast file"))?;
        check_stored_provenance(&url, &reader, expected)
    }

    /// The provenance of the flags object `relative` (below the flags
    /// folder), from its footer alone; `None` where there is none.
    pub async fn flags_provenance(&self, relative: &str) -> Result<Option<Provenance>> {
        let key = ObjectPath::from(self.flags_key(relative));
        let url = self.url(key.as_ref());
        footer_provenance(self.store.as_ref(), &key, FOOTER_GUESS)
            .await
            .with_context(|| format!("{url}: unreadable flags"))
    }

    /// Stores one step (all rows share `valid_time`); returns its URL.
    pub async fn write_step(
        &self,
        valid_time: i64,
        batch: &RecordBatch,
        provenance: &Provenance,
    ) -> Result<String> {
        self.writable()?;
        let (name, partition) = step_name(valid_time)?;
        let key = join(&self.prefix, &format!("forecast/{partition}/{name}"));
        self.put(&key, std::slice::from_ref(batch), provenance)
            .await
            .with_context(|| format!("{}: writing forecast step", self.url(&key)))
    }

    /// Stores `PREFIX/flags/{relative}`; returns its URL.
    pub async fn write_flags(
        &self,
        relative: &str,
        flags: &Flags,
        provenance: &Provenance,
    ) -> Result<String> {
        self.writable()?;
        let key = self.flags_key(relative);
        self.put(&key, &flags.batches, provenance)
            .await
            .with_context(|| format!("{}: writing flags", self.url(&key)))
    }

    /// Removes `PREFIX/flags/{relative}` (S3 deletes of absent keys succeed).
    pub async fn remove_flags(&self, relative: &str) -> Result<()> {
        self.writable()?;
        let key = self.flags_key(relative);
        self.store
            .delete(&ObjectPath::from(key.as_str()))
            .await
            .with_context(|| format!("{}: removing flags", self.url(&key)))
    }

    async fn put(
        &self,
        key: &str,
        batches: &[RecordBatch],
        provenance: &Provenance,
    ) -> Result<String> {
        let bytes = write_parquet(Vec::new(), batches, provenance)?;
        self.store.put(&ObjectPath::from(key), bytes.into()).await?;
        Ok(self.url(key))
    }

    /// Each forecast object whose step is valid at or after `from` (UTC
    /// µs), by its path below the prefix, with what changes when the
    /// object is stored again: size, ETag and last-modified time.
    pub async fn forecast_identities(&self, from: i64) -> Result<Vec<(String, String)>> {
        // Keys sort by time (`year=YYYY/month=MM/t2m_YYYYMMDDTHHMM`): the
        // listing starts at `from`'s month, so a long table's older months
        // cost no requests.
        let (_, month) = step_name(from)?;
        let after = format!("forecast/{month}");
        let objects = self.objects_below("forecast", Some(&after)).await?;
        Ok(objects
            .into_iter()
            .filter(|o| o.location.filename().and_then(valid_time_of) >= Some(from))
            .map(|o| {
                let stamp = crate::session::s3::object_stamp(&o);
                (o.location.to_string(), stamp)
            })
            .collect())
    }

    /// The URL of `PREFIX/{name}`.
    pub fn note_url(&self, name: &str) -> String {
        self.url(&join(&self.prefix, name))
    }

    /// The bytes of `PREFIX/{name}`, or `None` if there is no such object.
    pub async fn read_note(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let key = join(&self.prefix, name);
        match self.store.get(&ObjectPath::from(key.as_str())).await {
            Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| self.url(&key)),
        }
    }

    /// Stores `PREFIX/{name}` (one PUT: whole or not at all); returns its URL.
    pub async fn write_note(&self, name: &str, bytes: Vec<u8>) -> Result<String> {
        self.writable()?;
        let key = join(&self.prefix, name);
        self.store
            .put(&ObjectPath::from(key.as_str()), bytes.into())
            .await
            .with_context(|| self.url(&key))?;
        Ok(self.url(&key))
    }

    /// Ends the run: stops renewing the lock and removes it.
    pub async fn close(self) {
        if let Some(lock) = self.lock {
            lock.release().await;
        }
    }
}

/// `prefix/rest`, or `rest` for the bucket's root.
fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// The `uqcast.*` metadata in the footer of the Parquet object at `key`,
/// read by range (a flags table grows with the forecast's history, its
/// footer barely): its last `guess` bytes, then as many as the footer says
/// it needs. `None` where there is no such object.
async fn footer_provenance(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    guess: u64,
) -> Result<Option<Provenance>> {
    let size = match store.head(key).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut tail = guess.min(size);
    loop {
        let bytes = store.get_range(key, size - tail..size).await?;
        let mut footer = ParquetMetaDataReader::new();
        match footer.try_parse_sized(&bytes, size) {
            Ok(()) => {
                let metadata = footer.finish()?;
                return Ok(Some(provenance_of(metadata.file_metadata())));
            }
            Err(ParquetError::NeedMoreData(needed))
                if (needed as u64) > tail && (needed as u64) <= size =>
            {
                tail = needed as u64;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    /// A footer longer than the first read is read whole on the second,
    /// and a missing object has no provenance.
    #[tokio::test]
    async fn a_footer_is_read_from_the_objects_end_by_range() -> Result<()> {
        let schema = super::super::flags::flags_schema()?;
        let batch = RecordBatch::new_empty(schema);
        let provenance: Provenance = [("flags_sql", "ab12"), ("tiles", "448")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = write_parquet(Vec::new(), std::slice::from_ref(&batch), &provenance)?;
        let store = InMemory::new();
        let key = ObjectPath::from("runs/a/flags/flags.parquet");
        store.put(&key, bytes.into()).await?;
        for guess in [16, 1 << 20] {
            let read = footer_provenance(&store, &key, guess).await?;
            assert_eq!(read.as_ref(), Some(&provenance), "first read {guess} bytes");
        }
        let missing = ObjectPath::from("runs/b/flags/flags.parquet");
        assert_eq!(footer_provenance(&store, &missing, 16).await?, None);
        Ok(())
    }
}
