//! Where a run writes: a local folder ([`ForecastStore`]) or an S3 prefix
//! ([`S3ForecastStore`]), one interface for the job.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::flags::{self, Flags};
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
    /// 2.7 s before the first row, README "Revised input").
    pub async fn forecast_session(&self, name: &str) -> Result<(SessionContext, TableArg)> {
        let ctx = crate::session::new_context_listing_prefixes()?;
        let location = self.forecast_location();
        if let Self::S3(store) = self {
            store.register_in(&ctx)?;
        }
        let partition = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
        let schema = uqcast_forecast::forecast_schema();
        let options = ParquetReadOptions::default()
            .schema(&schema)
            .table_partition_cols(vec![
                ("year".into(), partition.clone()),
                ("month".into(), partition),
            ]);
        ctx.register_parquet(name, &location, options)
            .await
            .with_context(|| format!("table '{name}': {location}"))?;
        let table = TableArg {
            name: name.into(),
            location,
        };
        Ok((ctx, table))
    }

    /// The flags table's file, for a query session.
    pub fn flags_location(&self) -> String {
        match self {
            Self::Local { dir, .. } => flags::local_path(dir).display().to_string(),
            Self::S3(store) => store.flags_url(),
        }
    }

    /// The provenance the flags table was written with; `None` where there
    /// is no flags table.
    pub async fn flags_provenance(&self) -> Result<Option<Provenance>> {
        match self {
            Self::Local { dir, .. } => super::store::flags_provenance(&flags::local_path(dir)),
            Self::S3(store) => store.flags_provenance().await,
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use datafusion::arrow::array::{
        ArrayRef, Float32Array, Float64Array, TimestampMicrosecondArray,
    };
    use futures::stream::BoxStream;
    use object_store::local::LocalFileSystem;
    use object_store::path::Path as ObjectPath;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;

    const HOUR: i64 = 3_600_000_000;
    /// 2019-12-31T18:00Z.
    const DEC_31: i64 = 1_577_815_200_000_000;

    /// The local file system, noting every prefix it is asked to list.
    #[derive(Debug)]
    struct ListingLog {
        inner: LocalFileSystem,
        listed: Mutex<Vec<String>>,
    }

    impl std::fmt::Display for ListingLog {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "ListingLog({})", self.inner)
        }
    }

    impl ListingLog {
        fn note(&self, prefix: Option<&ObjectPath>) {
            let prefix = prefix.map_or(String::new(), |p| p.to_string());
            self.listed.lock().unwrap().push(prefix);
        }
    }

    #[async_trait]
    impl ObjectStore for ListingLog {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.note(prefix);
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<ListResult> {
            self.note(prefix);
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A forecast step of one cell, valid at `valid`.
    fn one_cell(valid: i64) -> RecordBatch {
        let time = |t: i64| {
            Arc::new(TimestampMicrosecondArray::from(vec![t]).with_timezone("UTC")) as ArrayRef
        };
        let degrees = |v: f64| Arc::new(Float64Array::from(vec![v])) as ArrayRef;
        let kelvin = |v: f32| Arc::new(Float32Array::from(vec![v])) as ArrayRef;
        let columns = vec![
            time(valid - 6 * HOUR),
            time(valid),
            degrees(45.0),
            degrees(260.0),
            kelvin(280.0),
            kelvin(281.0),
            kelvin(0.5),
            kelvin(0.01),
        ];
        RecordBatch::try_new(uqcast_forecast::forecast_schema(), columns).unwrap()
    }

    #[tokio::test]
    async fn a_forecast_session_lists_only_the_months_a_query_names() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output::open(&dir.path().join("out")).await.unwrap();
        // Steps in December, January and February.
        let steps = [DEC_31, DEC_31 + 6 * HOUR, DEC_31 + 32 * 24 * HOUR];
        for t in steps {
            let provenance = Provenance::new();
            output
                .write_step(t, &one_cell(t), &provenance)
                .await
                .unwrap();
        }
        let (ctx, _) = output.forecast_session("f").await.unwrap();
        let log = Arc::new(ListingLog {
            inner: LocalFileSystem::new(),
            listed: Mutex::default(),
        });
        let local = url::Url::parse("file://").unwrap();
        ctx.register_object_store(&local, log.clone());

        // December's and February's steps: two folders of three.
        let wanted = [steps[0], steps[2]];
        let sql = super::super::store::months_select("f", "valid_time", &wanted).unwrap();
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 2);

        let listed = log.listed.lock().unwrap().clone();
        let folder = |month: &str| {
            let path = dir.path().join("out/forecast").join(month);
            ObjectPath::from_absolute_path(path).unwrap().to_string()
        };
        let (december, february) = (folder("year=2019/month=12"), folder("year=2020/month=02"));
        assert!(!listed.is_empty());
        assert!(
            listed
                .iter()
                .all(|p| p.starts_with(&december) || p.starts_with(&february)),
            "listed {listed:?}, not only {december} and {february}"
        );
    }
}
