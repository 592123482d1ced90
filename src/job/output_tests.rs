//! Tests of [`super::Output`]: what its forecast session lists.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array, TimestampMicrosecondArray};
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
