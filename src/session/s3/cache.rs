//! The local cache of S3 copies: where a copy lives (`CACHE/s3/BUCKET/KEY`),
//! the stamp beside it that says which object it is a copy of, downloads
//! that never leave a partial file under a copy's name, and the cache's
//! size limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::{COPIES, S3Location, prune, remember};

/// Where downloaded objects (and local NetCDF files' kept inspections) are
/// kept: `UQCAST_CACHE_DIR`, else the XDG cache folder, else `~/.cache`,
/// each with `uqcast/` below it.
pub(crate) fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("UQCAST_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no cache folder for S3 downloads: set UQCAST_CACHE_DIR (or HOME)")?;
    Ok(base.join("uqcast"))
}

pub(super) fn copy_path(cache: &Path, bucket: &str, key: &str) -> PathBuf {
    cache.join("s3").join(bucket).join(key)
}

/// What a copy is judged by: ETag, time and size (stores without ETags,
/// some S3-compatible ones, are judged by time and size).
pub(super) fn stamp(meta: &ObjectMeta) -> String {
    format!(
        "{} {} {}",
        meta.e_tag.as_deref().unwrap_or("-"),
        meta.last_modified.to_rfc3339(),
        meta.size
    )
}

fn stamp_file(local: &Path) -> PathBuf {
    PathBuf::from(format!("{}.etag", local.display()))
}

/// Whether `local` is a complete copy of the object as `stamp` describes it.
pub(super) fn is_fresh(local: &Path, stamp: &str) -> bool {
    let size = stamp.rsplit(' ').next().and_then(|s| s.parse::<u64>().ok());
    std::fs::read_to_string(stamp_file(local)).is_ok_and(|s| s == stamp)
        && std::fs::metadata(local).is_ok_and(|m| Some(m.len()) == size)
}

/// The lock of one local copy, for [`cached_copy`].
pub(super) fn fetch_lock(local: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>> =
        std::sync::Mutex::new(BTreeMap::new());
    match LOCKS.lock() {
        Ok(mut locks) => locks.entry(local.to_path_buf()).or_default().clone(),
        // A panic elsewhere: fetch unserialised rather than not at all.
        Err(_) => Arc::default(),
    }
}

/// Tells apart the downloads of one process (tasks of an executor may
/// fetch the same object at once).
static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The local copy of one object: `CACHE/s3/BUCKET/KEY`, with its ETag, time
/// and size beside it in `KEY.etag`; a copy is reused only while all match, and
/// a download lands under a temporary name and is renamed when complete, so
/// an interrupted one is never taken for a copy.
pub(super) async fn cached_copy(
    store: &dyn ObjectStore,
    location: &S3Location,
    meta: &ObjectMeta,
    cache: &Path,
) -> Result<PathBuf> {
    let key = meta.location.as_ref();
    let url = location.url(key);
    let local = copy_path(cache, &location.bucket, key);
    let stamp = stamp(meta);
    // One download per copy at a time: tasks that need it wait for the first.
    let lock = fetch_lock(&local);
    let _fetching = lock.lock().await;
    if is_fresh(&local, &stamp) {
        remember(cache, location, &local, &stamp);
        return Ok(local);
    }
    let parent = local.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{url}: cache folder {}", parent.display()))?;
    let partial = PathBuf::from(format!(
        "{}.part-{}-{}",
        local.display(),
        std::process::id(),
        DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    eprintln!(
        "downloading {url} ({} bytes) to {}",
        meta.size,
        local.display()
    );
    let written = download(store, meta, &partial).await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("{url}: download to {}", partial.display())));
    }
    std::fs::rename(&partial, &local)
        .with_context(|| format!("{url}: cache file {}", local.display()))?;
    let stamp_file = stamp_file(&local);
    std::fs::write(&stamp_file, &stamp)
        .with_context(|| format!("{url}: cache file {}", stamp_file.display()))?;
    remember(cache, location, &local, &stamp);
    keep_within_limit(cache)?;
    Ok(local)
}

/// Removes least recently used copies if the cache is over its limit
/// ([`prune`]), keeping every copy a plan of this process names.
pub(super) fn keep_within_limit(cache: &Path) -> Result<()> {
    let Some(limit) = prune::limit()? else {
        return Ok(());
    };
    let planned: Vec<PathBuf> = COPIES
        .lock()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    let (whole, partial) = (cache.join("s3"), cache.join("s3-steps"));
    let pinned = |file: &Path| {
        let copy = file
            .strip_prefix(&partial)
            .map_or_else(|_| file.to_path_buf(), |key| whole.join(key));
        planned.contains(&copy)
    };
    let removed = prune::prune(cache, limit, &pinned);
    if removed > 0 {
        eprintln!(
            "removed {removed} bytes of least recently used copies from {} ({}={})",
            cache.display(),
            prune::LIMIT_VARIABLE,
            std::env::var(prune::LIMIT_VARIABLE).unwrap_or_default()
        );
    }
    Ok(())
}

async fn download(store: &dyn ObjectStore, meta: &ObjectMeta, to: &Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(to)?);
    let mut stream = store.get(&meta.location).await?.into_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    if received != meta.size {
        bail!("received {received} of {} bytes", meta.size);
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
