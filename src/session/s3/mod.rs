//! `s3://` table locations: Parquet is read in place through DataFusion's
//! object store; NetCDF, which libnetcdf opens only from a local file, is
//! read from copies in a local cache. A table is planned from each object's
//! header where it can be ([`headers`]), and an object is copied when a scan
//! first reads it ([`local_copies`]). A plan made here names the objects its
//! copies come from ([`origin`]); a process that runs it elsewhere fetches
//! its own copies ([`copy_of`]).
//!
//! Credentials and endpoint come from the standard AWS environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};
use uqcast_netcdf::inspect::FileInfo;
use uqcast_netcdf::{FileNames, LocalCopies};

mod cache;
pub(crate) use cache::cache_root;
mod headers;
mod kept_plans;
pub use headers::describe_planned;
mod parquet_objects;
pub use parquet_objects::{bad_footer, first_damaged};
mod partial;
mod prune;

use cache::{cached_copy, copy_path, fetch_lock, is_fresh, keep_within_limit, stamp};

/// An `s3://bucket/key` location; `key` may hold a glob (`*`, `?`, `[`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl S3Location {
    /// `Ok(None)` for a local path; an error for another URL scheme or an
    /// `s3://` without a bucket.
    pub fn parse(location: &str) -> Result<Option<Self>> {
        let Some((scheme, rest)) = location.split_once("://") else {
            return Ok(None);
        };
        if !scheme.eq_ignore_ascii_case("s3") {
            bail!(
                "{location}: {scheme}:// locations are not supported; uqcast reads local files, \
                 directories and globs, and s3:// (S3 and S3-compatible stores)"
            );
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{location}: no bucket (expected s3://BUCKET/KEY)");
        }
        Ok(Some(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }))
    }

    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Whether the key holds a glob (`*`, `?`, `[`).
    pub fn is_glob(&self) -> bool {
        self.key.contains(['*', '?', '['])
    }

    /// The key up to the first glob character's folder: where to list.
    fn list_prefix(&self) -> &str {
        match self.key.find(['*', '?', '[']) {
            Some(i) => &self.key[..self.key[..i].rfind('/').map_or(0, |j| j + 1)],
            None => &self.key,
        }
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// The store for one bucket, configured from the AWS environment.
pub fn connect(location: &S3Location) -> Result<Arc<AmazonS3>> {
    let has_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    let unsigned = std::env::var("AWS_SKIP_SIGNATURE").is_ok_and(|v| v == "true" || v == "1");
    let other_source = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some());
    if !(has_keys || unsigned || other_source) {
        // Without these the client falls back to the EC2 metadata service,
        // which off EC2 means a long wait and an unclear error.
        bail!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
             AWS_ENDPOINT_URL for an S3-compatible store), or AWS_SKIP_SIGNATURE=true for a \
             public bucket"
        );
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&location.bucket)
        // The run lock's create-if-absent and renew-if-unchanged puts.
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        // A scheduled job should ride out a brief outage, not hang for the
        // client's default three minutes on an unreachable endpoint.
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        });
    // An endpoint written as http:// (a store on the local network) is meant.
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .unwrap_or_default();
    if endpoint.starts_with("http://") {
        builder = builder.with_allow_http(true);
    }
    let store = builder.build().context("S3 client")?;
    Ok(Arc::new(store))
}

/// Every object under `prefix` (recursively), sorted by key.
async fn list(
    store: &dyn ObjectStore,
    location: &S3Location,
    prefix: &str,
) -> Result<Vec<ObjectMeta>> {
    let prefix_path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let mut objects: Vec<ObjectMeta> = store
        .list(prefix_path.as_ref())
        .try_collect()
        .await
        .with_context(|| format!("listing {}", location.url(prefix)))?;
    objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    Ok(objects)
}

/// The objects a location chooses from: the one object a plain key names,
/// else everything below the key's folder. A plain key is looked up in its
/// parent folder's one-level listing, which tells an object from a folder
/// on every store (a HEAD of a folder's key differs between stores).
async fn objects_of(location: &S3Location) -> Result<(Arc<AmazonS3>, Vec<ObjectMeta>)> {
    let store = connect(location)?;
    let objects = objects_in(store.as_ref(), location).await?;
    Ok((store, objects))
}

/// [`objects_of`] in a given store.
async fn objects_in(store: &dyn ObjectStore, location: &S3Location) -> Result<Vec<ObjectMeta>> {
    let key = &location.key;
    let prefix = if !location.is_glob() && !key.is_empty() && !key.ends_with('/') {
        let parent = key.rfind('/').map(|i| &key[..i]).unwrap_or("");
        let parent_path = (!parent.is_empty()).then(|| ObjectPath::from(parent));
        let level = store
            .list_with_delimiter(parent_path.as_ref())
            .await
            .with_context(|| format!("listing {}", location.url(parent)))?;
        if let Some(object) = level
            .objects
            .into_iter()
            .find(|o| o.location.as_ref() == key)
        {
            return Ok(vec![object]);
        }
        format!("{key}/")
    } else {
        location.list_prefix().to_string()
    };
    list(store, location, &prefix).await
}

fn extension(key: &str) -> String {
    Path::new(key)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// What an `s3://` table location is, after one listing.
#[derive(Debug)]
pub enum S3Table {
    /// Read in place: the store is registered with the session. With the
    /// objects listed below a folder (`None` for an object or a glob), for
    /// the registration to read rather than list them again.
    Parquet(Option<Vec<ObjectMeta>>),
    /// NetCDF, described file by file (see [`headers`]); a file is where a
    /// scan finds it once [`local_copies`] has made it present.
    Netcdf(Vec<FileInfo>),
}

/// Cache folders of the buckets read in this process, with their URLs.
static CACHED_BUCKETS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// The object each local copy made or checked in this process is a copy of.
static COPIES: std::sync::Mutex<BTreeMap<PathBuf, ObjectCopy>> =
    std::sync::Mutex::new(BTreeMap::new());

/// An S3 object as a plan names it: its URL, and the stamp (ETag, time,
/// size) it had when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCopy {
    pub url: String,
    pub stamp: String,
}

impl ObjectCopy {
    /// Where the object is: one object, not a folder or a glob.
    fn location(&self) -> Result<S3Location> {
        match S3Location::parse(&self.url)? {
            Some(l) if !l.is_glob() && !l.key.is_empty() => Ok(l),
            _ => bail!("{}: not the URL of one S3 object", self.url),
        }
    }

    /// This process's copy of the object in `cache`, if it has the planned
    /// stamp (then remembered as the object's copy).
    fn fresh_copy(&self, location: &S3Location, cache: &Path) -> Option<PathBuf> {
        let local = copy_path(cache, &location.bucket, &location.key);
        is_fresh(&local, &self.stamp).then(|| {
            remember(cache, location, &local, &self.stamp);
            local
        })
    }

    /// The store holding the object, for a process that lacks a copy.
    fn store(&self, location: &S3Location) -> Result<Arc<AmazonS3>> {
        connect(location)
            .with_context(|| format!("{}: a plan names it, this process has no copy", self.url))
    }
}

/// The object `local` is a copy of, if it is one made in this process.
pub fn origin(local: &Path) -> Option<ObjectCopy> {
    COPIES.lock().ok()?.get(local).cloned()
}

/// This process's local copy of a planned object (another process planned
/// the query): the cached copy if it has the planned stamp, else a fresh
/// download, checked against the stamp first. An object changed or removed
/// since planning is refused, so a plan never runs on data it was not
/// planned for.
pub async fn copy_of(planned: &ObjectCopy) -> Result<PathBuf> {
    let location = planned.location()?;
    let cache = cache_root()?;
    if let Some(local) = planned.fresh_copy(&location, &cache) {
        return Ok(local);
    }
    let store = planned.store(&location)?;
    fetch_planned(store.as_ref(), &location, planned, &cache).await
}

/// This process's copy of the model at `url` (`s3://…/X.safetensors`): its
/// weights and, beside them, its metadata (`X.json`), each downloaded into
/// the cache or reused while unchanged. Returns the weights' copy. Whether
/// they are the weights a plan was made with is the model's weights id's
/// to tell, not the objects' stamps.
pub async fn model_copy(url: &str) -> Result<PathBuf> {
    let weights = match S3Location::parse(url)? {
        Some(l) if !l.is_glob() && !l.key.is_empty() => l,
        _ => bail!("{url}: not the URL of one model (s3://BUCKET/KEY.safetensors)"),
    };
    let store = connect(&weights).with_context(|| url.to_string())?;
    let cache = cache_root()?;
    let metadata = S3Location {
        bucket: weights.bucket.clone(),
        key: Path::new(&weights.key)
            .with_extension("json")
            .to_string_lossy()
            .into_owned(),
    };
    let mut copies = Vec::with_capacity(2);
    for object in [&weights, &metadata] {
        let listed = objects_in(store.as_ref(), object)
            .await
            .with_context(|| object.to_string())?;
        let Some(meta) = listed.iter().find(|o| o.location.as_ref() == object.key) else {
            bail!(
                "{object}: no such object (a model is its weights, X.safetensors, with its \
                 metadata, X.json, beside them)"
            );
        };
        copies.push(cached_copy(store.as_ref(), object, meta, &cache).await?);
    }
    Ok(copies.swap_remove(0))
}

/// Where a model bound for `remote` is trained: its place in the cache, so
/// an interrupted training resumes from its partial checkpoints there.
/// Fails at once without credentials, before anything is trained.
pub fn staged_model(remote: &S3Location) -> Result<PathBuf> {
    connect(remote)?;
    Ok(copy_path(&cache_root()?, &remote.bucket, &remote.key))
}

/// Checks that a model can be stored at `remote` before the training that
/// ends in storing it (minutes or hours): one small object put beside it and
/// deleted again. A bucket that is not there, a name the store refuses, or
/// credentials that may not write fail here, naming the URL, instead of
/// after the training.
pub async fn check_storable(remote: &S3Location) -> Result<()> {
    let store = connect(remote).with_context(|| remote.to_string())?;
    let probe = format!("{}.uqcast-probe-{}", remote.key, std::process::id());
    let at = ObjectPath::from(probe.as_str());
    let body = object_store::PutPayload::from_static(b"uqcast checks it can store here\n");
    store.put(&at, body).await.with_context(|| {
        format!(
            "{}: cannot store there (checked before training)",
            remote.url(&remote.key)
        )
    })?;
    if let Err(e) = store.delete(&at).await {
        tracing::warn!("{}: not removed: {e}", remote.url(&probe));
    }
    Ok(())
}

/// Stores a trained model (`X.safetensors` and `X.json` beside it) at
/// `remote`: the weights first, then the metadata, each one PUT, which S3
/// makes visible whole. S3 has no two-object transaction: a run that reads
/// between the two PUTs of a model replaced in place pairs the new weights
/// with the old metadata (its provenance records the new weights' id).
pub async fn store_model(local: &Path, remote: &S3Location) -> Result<()> {
    let store = connect(remote).with_context(|| remote.to_string())?;
    let metadata = Path::new(&remote.key).with_extension("json");
    for (file, key) in [
        (local.to_path_buf(), remote.key.clone()),
        (
            local.with_extension("json"),
            metadata.to_string_lossy().into_owned(),
        ),
    ] {
        let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
        store
            .put(&ObjectPath::from(key.as_str()), bytes.into())
            .await
            .with_context(|| format!("storing {}", remote.url(&key)))?;
    }
    Ok(())
}

/// Downloads a planned object into `cache`, if it still has the planned stamp.
async fn fetch_planned(
    store: &dyn ObjectStore,
    location: &S3Location,
    planned: &ObjectCopy,
    cache: &Path,
) -> Result<PathBuf> {
    let meta = as_planned(store, location, planned).await?;
    cached_copy(store, location, &meta, cache).await
}

/// The planned object's listing, if it still has the planned stamp.
async fn as_planned(
    store: &dyn ObjectStore,
    location: &S3Location,
    planned: &ObjectCopy,
) -> Result<ObjectMeta> {
    let objects = objects_in(store, location)
        .await
        .with_context(|| format!("{}: a plan names it, this process has no copy", planned.url))?;
    let Some(meta) = objects.iter().find(|o| o.location.as_ref() == location.key) else {
        bail!(
            "{}: planned, no longer in the bucket; the objects changed since the query was \
             planned",
            planned.url
        );
    };
    let now = stamp(meta);
    if now != planned.stamp {
        bail!(
            "{}: changed since the query was planned (planned as {}, stored now as {now})",
            planned.url,
            planned.stamp
        );
    }
    Ok(meta.clone())
}

/// Records `local` as a copy of `location`'s object, for [`origin`] and [`in_urls`].
fn remember(cache: &Path, location: &S3Location, local: &Path, stamp: &str) {
    prune::mark_used(local);
    let bucket = (
        format!("{}/", cache.join("s3").join(&location.bucket).display()),
        format!("s3://{}/", location.bucket),
    );
    if let Ok(mut known) = CACHED_BUCKETS.lock()
        && !known.contains(&bucket)
    {
        known.push(bucket);
    }
    let key = local
        .strip_prefix(cache.join("s3").join(&location.bucket))
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(mut copies) = COPIES.lock() {
        copies.insert(
            local.to_path_buf(),
            ObjectCopy {
                url: location.url(&key),
                stamp: stamp.to_string(),
            },
        );
    }
}

/// `message` with every local copy's path written as the `s3://` URL it is a
/// copy of: the user named the object, not the cache, and a file's errors
/// (at inspection or mid-scan) come from code that knows only the copy.
pub fn in_urls(message: &str) -> String {
    let buckets = CACHED_BUCKETS.lock().map(|b| b.clone()).unwrap_or_default();
    buckets
        .iter()
        .fold(message.to_string(), |m, (local, url)| m.replace(local, url))
}

/// How errors of this process's scans and plans name its copies: by the
/// `s3://` URLs they are copies of (a session extension, see [`in_urls`]).
pub fn file_names() -> FileNames {
    FileNames::new(in_urls)
}

/// Registers the bucket's store with `ctx`, for DataFusion to read or write
/// `s3://BUCKET/…` paths itself.
pub fn register_store(ctx: &SessionContext, location: &S3Location) -> Result<()> {
    register_bucket(ctx, &location.bucket, connect(location)?)
}

/// Registers `store` with `ctx` as the one that reads and writes
/// `s3://BUCKET/…` paths.
pub fn register_bucket(
    ctx: &SessionContext,
    bucket: &str,
    store: Arc<dyn ObjectStore>,
) -> Result<()> {
    let url = url::Url::parse(&format!("s3://{bucket}")).context("bucket URL")?;
    ctx.register_object_store(&url, store);
    Ok(())
}

/// Makes an `s3://` location readable in `ctx`: registers the bucket's
/// store, and for NetCDF describes the objects the location names, from
/// copies in the local cache whose ETag and size still match, else (for
/// classic files) from their headers, else from fresh downloads.
pub async fn prepare(ctx: &SessionContext, location: &S3Location) -> Result<S3Table> {
    // A bad cache limit is an error before any work, not after a download.
    prune::limit()?;
    let (store, objects) = objects_of(location).await?;
    let named = select(location, &objects)?;
    if named
        .iter()
        .all(|o| extension(o.location.as_ref()) == "parquet")
    {
        register_bucket(ctx, &location.bucket, store)?;
        let folder =
            !location.is_glob() && !objects.iter().any(|o| o.location.as_ref() == location.key);
        return Ok(S3Table::Parquet(folder.then_some(objects)));
    }
    let cache = cache_root()?;
    let files = futures::stream::iter(named.into_iter().map(|meta| {
        let store = store.clone();
        let cache = cache.clone();
        async move { headers::inspect_object(store.as_ref(), location, &meta, &cache).await }
    }))
    .buffered(headers::PARALLEL_HEADERS)
    .try_collect::<Vec<_>>()
    .await?;
    Ok(S3Table::Netcdf(files))
}

/// How this process's scans make the S3 objects they read present: an
/// object planned from its header (or a copy since removed) is fetched when
/// a scan first opens it, if the object still has its planned stamp; only
/// the records the scan reads, where those are few ([`partial`]). A session
/// extension, see [`LocalCopies`].
pub fn local_copies() -> LocalCopies {
    LocalCopies::new(|path, steps, in_scan| {
        if origin(path).is_none() {
            return Ok(path.to_path_buf());
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| format!("{}: no runtime to fetch it on", path.display()))?;
        handle
            .block_on(partial::present(path, steps, in_scan))
            .map_err(|e| format!("{e:#}"))
    })
}

/// The objects `location` names (a key, a glob or a folder), listed now.
pub async fn named_objects(location: &S3Location) -> Result<Vec<ObjectMeta>> {
    let (_, objects) = objects_of(location).await?;
    select(location, &objects)
}

/// What changes when an object is stored again: its size, ETag and
/// last-modified time.
pub fn object_stamp(meta: &ObjectMeta) -> String {
    format!(
        "{} {} {}",
        meta.size,
        meta.e_tag.as_deref().unwrap_or("-"),
        meta.last_modified.to_rfc3339()
    )
}

/// The objects a location names, as a local path would: one key, a glob
/// over keys (`*` stays within one folder), or a "folder" whose own
/// NetCDF or Parquet objects (Parquet at any depth: Hive partitions).
fn select(location: &S3Location, objects: &[ObjectMeta]) -> Result<Vec<ObjectMeta>> {
    let named: Vec<ObjectMeta> = if location.is_glob() {
        let pattern = glob::Pattern::new(&location.key).context("not a valid glob")?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::default()
        };
        objects
            .iter()
            .filter(|o| pattern.matches_with(o.location.as_ref(), options))
            .cloned()
            .collect()
    } else if let Some(exact) = objects.iter().find(|o| o.location.as_ref() == location.key) {
        vec![exact.clone()]
    } else {
        let folder = format!("{}/", location.key.trim_end_matches('/'));
        let folder = if location.key.is_empty() { "" } else { &folder };
        let below: Vec<&ObjectMeta> = objects
            .iter()
            .filter(|o| o.location.as_ref().starts_with(folder))
            .collect();
        let own_netcdf: Vec<ObjectMeta> = below
            .iter()
            .filter(|o| {
                let rest = &o.location.as_ref()[folder.len()..];
                !rest.contains('/')
                    && uqcast_netcdf::catalog::NETCDF_EXTENSIONS.contains(&extension(rest).as_str())
            })
            .map(|o| (*o).clone())
            .collect();
        if own_netcdf.is_empty() {
            below
                .into_iter()
                .filter(|o| extension(o.location.as_ref()) == "parquet")
                .cloned()
                .collect()
        } else {
            own_netcdf
        }
    };
    if named.is_empty() {
        let listed = if objects.is_empty() {
            format!(
                "nothing is stored under {}",
                location.url(location.list_prefix())
            )
        } else {
            let keys: Vec<&str> = objects
                .iter()
                .take(5)
                .map(|o| o.location.as_ref())
                .collect();
            format!(
                "{} object(s) under {}, none NetCDF or Parquet named by it (first: {})",
                objects.len(),
                location.url(location.list_prefix()),
                keys.join(", ")
            )
        };
        bail!("no NetCDF or Parquet objects found: {listed}");
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            location: ObjectPath::from(key),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size: 1,
            e_tag: None,
            version: None,
        }
    }

    fn keys(location: &str, objects: &[&str]) -> Result<Vec<String>> {
        let location = S3Location::parse(location)?.expect("an s3 location");
        let objects: Vec<ObjectMeta> = objects.iter().map(|k| meta(k)).collect();
        Ok(select(&location, &objects)?
            .iter()
            .map(|o| o.location.to_string())
            .collect())
    }

    #[test]
    fn locations_parse_like_urls() -> Result<()> {
        assert_eq!(S3Location::parse("data/x.nc")?, None);
        let l = S3Location::parse("s3://b/era5/*.nc")?.expect("s3");
        assert_eq!((l.bucket.as_str(), l.key.as_str()), ("b", "era5/*.nc"));
        assert_eq!(l.list_prefix(), "era5/");
        let l = S3Location::parse("s3://b/y=*/m/*.nc")?.expect("s3");
        assert_eq!(l.list_prefix(), "");
        assert!(S3Location::parse("s3:///x.nc").is_err());
        let gs = S3Location::parse("gs://b/x.nc").expect_err("gs is refused");
        assert!(gs.to_string().contains("gs:// locations are not supported"));
        Ok(())
    }

    /// A plan's object is fetched only while it is the object planned with:
    /// replaced or removed since, it is refused, naming it.
    #[tokio::test]
    async fn a_planned_object_is_fetched_only_as_planned() -> Result<()> {
        let store = object_store::memory::InMemory::new();
        let location = S3Location::parse("s3://b/era5/a.nc")?.expect("an s3 location");
        let key = ObjectPath::from("era5/a.nc");
        store.put(&key, b"as planned".to_vec().into()).await?;
        let listed = objects_in(&store, &location).await?;
        let planned = ObjectCopy {
            url: "s3://b/era5/a.nc".into(),
            stamp: stamp(&listed[0]),
        };
        let cache = tempfile::tempdir()?;
        let local = fetch_planned(&store, &location, &planned, cache.path()).await?;
        assert_eq!(std::fs::read(&local)?, b"as planned");
        assert_eq!(origin(&local), Some(planned.clone()));
        assert!(is_fresh(&local, &planned.stamp));

        store.put(&key, b"written since".to_vec().into()).await?;
        let e = fetch_planned(&store, &location, &planned, cache.path())
            .await
            .expect_err("replaced since planning");
        let e = format!("{e:#}");
        assert!(
            e.starts_with(&format!(
                "s3://b/era5/a.nc: changed since the query was planned (planned as {}, stored \
                 now as ",
                planned.stamp
            )),
            "{e}"
        );
        // The copy made before is still the planned object's.
        assert_eq!(std::fs::read(&local)?, b"as planned");

        store.delete(&key).await?;
        let e = fetch_planned(&store, &location, &planned, cache.path())
            .await
            .expect_err("removed since planning");
        assert!(
            format!("{e:#}").contains("s3://b/era5/a.nc: planned, no longer in the bucket"),
            "{e:#}"
        );
        Ok(())
    }

    #[test]
    fn selection_follows_local_paths() -> Result<()> {
        let objects = [
            "era5/2021/a.nc",
            "era5/2021/b.nc",
            "era5/2022/c.nc",
            "era5/readme.txt",
            "era5/top.nc",
            "out/forecast/year=2021/month=3/x.parquet",
        ];
        // A glob's `*` stays in its folder, as on disk.
        assert_eq!(keys("s3://b/era5/*.nc", &objects)?, ["era5/top.nc"]);
        assert_eq!(
            keys("s3://b/era5/*/*.nc", &objects)?,
            ["era5/2021/a.nc", "era5/2021/b.nc", "era5/2022/c.nc"]
        );
        // A folder names its own NetCDF files, not its subfolders'.
        assert_eq!(keys("s3://b/era5/", &objects)?, ["era5/top.nc"]);
        assert_eq!(
            keys("s3://b/era5/2021", &objects)?,
            ["era5/2021/a.nc", "era5/2021/b.nc"]
        );
        assert_eq!(keys("s3://b/era5/2022/c.nc", &objects)?, ["era5/2022/c.nc"]);
        // Parquet below a folder at any depth (Hive partitions).
        assert_eq!(
            keys("s3://b/out/forecast", &objects)?,
            ["out/forecast/year=2021/month=3/x.parquet"]
        );
        let missing = keys("s3://b/era5/2023/*.nc", &objects).expect_err("nothing there");
        assert!(
            missing
                .to_string()
                .contains("no NetCDF or Parquet objects found"),
            "{missing}"
        );
        Ok(())
    }
}
