//! Planning over NetCDF objects without downloading them. A classic NetCDF
//! file (the CDS's NetCDF3) keeps all its metadata in a header at its start
//! and its coordinates in a few byte ranges the header locates; those bytes,
//! fetched by range, describe the file as completely as the whole file
//! does. A NetCDF4 file's metadata is found by walking it through HDF5,
//! fetching blocks as HDF5 asks for them ([`uqcast_netcdf::ranged`]). The
//! object's steps are fetched when a scan first reads them
//! ([`super::local_copies`]), so a query over a month of a year's objects
//! downloads that month's.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use uqcast_netcdf::classic::Layout;
use uqcast_netcdf::inspect::FileInfo;
use uqcast_netcdf::ranged::{self, Fetch, Outcome, RangedPlan};

use super::kept_plans::{self, KeptPlan};
use super::partial::{HeaderPlan, StepBytes, remember_plan};
use super::{
    ObjectCopy, S3Location, as_planned, cache_root, cached_copy, copy_path, is_fresh, remember,
    stamp,
};

/// Objects whose headers are read at once: each takes a few small requests,
/// so planning a table of many objects waits on round trips, not bandwidth.
pub(super) const PARALLEL_HEADERS: usize = 16;

/// Bytes fetched first for a header, then four times as many while it
/// does not fit: a CDS header is a few KiB.
const FIRST_READ: u64 = 64 * 1024;

/// One NetCDF object, described for planning: from its cached copy while
/// that is fresh; else from the plan kept of it ([`kept_plans`]) while that
/// is the object's; else from its header and coordinates fetched by range,
/// where it is a classic file, or from the blocks a walk of it fetched,
/// where it is a NetCDF4 file (its path is where a scan will find its
/// copy, and the plan is kept for later processes); else (a layout neither
/// plans, or a file that does not read as it should, which its copy then
/// reports) downloaded whole.
pub(super) async fn inspect_object(
    store: &dyn ObjectStore,
    location: &S3Location,
    meta: &ObjectMeta,
    cache: &Path,
) -> Result<FileInfo> {
    let key = meta.location.as_ref();
    let local = copy_path(cache, &location.bucket, key);
    let stamp = stamp(meta);
    if !is_fresh(&local, &stamp) {
        let url = location.url(key);
        let kept_at = kept_plans::plan_path(cache, &location.bucket, key);
        let mut planned = from_kept(&kept_at, &stamp, meta.size, &local, &url).await;
        if planned.is_none() {
            planned = plan_by_range(store, meta, &local, &url).await?;
            if let Some((_, steps, parts)) = &planned {
                keep_plan(&kept_at, &stamp, steps, parts, &url);
            }
        }
        if let Some((mut info, steps, parts)) = planned {
            info.path = local.clone();
            remember(cache, location, &local, &stamp);
            let size = meta.size;
            remember_plan(&local, HeaderPlan { steps, parts, size });
            return Ok(info);
        }
    }
    let copy = {
        let _slot = DOWNLOAD_SLOTS.acquire().await?;
        cached_copy(store, location, meta, cache).await?
    };
    inspect(copy).await
}

/// An object's description, where its steps lie, and the bytes fetched
/// for them (each with its offset).
type Planned = (FileInfo, StepBytes, Vec<(u64, Vec<u8>)>);

/// The object planned from bytes fetched by range: its header and
/// coordinates, or a walk of its metadata; `None` where neither plans it.
async fn plan_by_range(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    local: &Path,
    url: &str,
) -> Result<Option<Planned>> {
    let head = store
        .get_range(&meta.location, 0..FIRST_READ.min(meta.size))
        .await
        .with_context(|| format!("{url}: reading its first bytes"))?;
    if head.starts_with(HDF5_SIGNATURE) {
        return from_walk(store, meta, head.to_vec(), local, url).await;
    }
    let Some((layout, parts)) = header_and_coordinates(store, meta, head).await? else {
        return Ok(None);
    };
    let info = inspect_parts(&parts, meta.size, local, url).await?;
    tracing::debug!(
        "{url}: planned from its header and coordinates, {} bytes in {} ranges",
        parts.iter().map(|(_, b)| b.len()).sum::<usize>(),
        parts.len()
    );
    Ok(Some((info, StepBytes::Records(layout), parts)))
}

/// The object planned from the plan kept of it, with no request; `None`
/// where none is kept for its stamp, or the kept bytes do not describe it
/// (it is then planned anew, and any error comes from that).
async fn from_kept(
    kept_at: &Path,
    stamp: &str,
    size: u64,
    local: &Path,
    url: &str,
) -> Option<Planned> {
    let kept = kept_plans::load(kept_at, stamp)?;
    let info = inspect_parts(&kept.parts, size, local, url).await.ok()?;
    let steps = match kept.chunks {
        Some(variables) => StepBytes::Chunks {
            variables,
            steps: info.times.len(),
        },
        None => match kept.parts.first() {
            Some((0, header)) => StepBytes::Records(Layout::read(&header[..]).ok()??),
            _ => return None,
        },
    };
    tracing::debug!("{url}: planned from the plan kept in {}", kept_at.display());
    Some((info, steps, kept.parts))
}

/// Keeps a plan made here for later processes; a plan that cannot be kept
/// (a full disk, say) costs them its requests, so it is logged, not an error.
fn keep_plan(kept_at: &Path, stamp: &str, steps: &StepBytes, parts: &[(u64, Vec<u8>)], url: &str) {
    let chunks = match steps {
        StepBytes::Records(_) => None,
        StepBytes::Chunks { variables, .. } => Some(variables.clone()),
    };
    let plan = KeptPlan {
        parts: parts.to_vec(),
        chunks,
    };
    if let Err(e) = kept_plans::keep(kept_at, stamp, &plan) {
        tracing::warn!("{url}: its plan was not kept: {e:#}");
    }
}

/// The first bytes of every HDF5 file uqcast reads (NetCDF4 writes its
/// superblock at the start).
const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";

/// A NetCDF4 object described from the blocks a walk of it fetched, with
/// its gridded variables' chunks; `None` where the walk or the description
/// does not succeed (the whole file then says why).
async fn from_walk(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    head: Vec<u8>,
    local: &Path,
    url: &str,
) -> Result<Option<Planned>> {
    let Some(RangedPlan { parts, variables }) = walk(store, meta, head, url).await? else {
        return Ok(None);
    };
    let Ok(info) = inspect_parts(&parts, meta.size, local, url).await else {
        return Ok(None);
    };
    let gridded: Vec<_> = variables
        .into_iter()
        .filter(|c| info.variables.iter().any(|v| v.name == c.name))
        .collect();
    let steps = StepBytes::Chunks {
        variables: gridded,
        steps: info.times.len(),
    };
    Ok(Some((info, steps, parts)))
}

/// Walks a NetCDF4 object on the I/O thread, serving the blocks its HDF5
/// driver asks for from `store` here; `None` where HDF5 cannot walk it.
async fn walk(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    head: Vec<u8>,
    url: &str,
) -> Result<Option<RangedPlan>> {
    type Reply = std::sync::mpsc::Sender<Result<Vec<Vec<u8>>, String>>;
    let (asks, mut asked) = tokio::sync::mpsc::unbounded_channel::<(Vec<Range<u64>>, Reply)>();
    let fetch: Fetch = Box::new(move |ranges: &[Range<u64>]| {
        let cancelled = || "planning was cancelled".to_string();
        let (reply, answer) = std::sync::mpsc::channel();
        asks.send((ranges.to_vec(), reply))
            .map_err(|_| cancelled())?;
        answer.recv().map_err(|_| cancelled())?
    });
    let (name, size) = (url.to_string(), meta.size);
    let mut walking = tokio::task::spawn_blocking(move || ranged::plan(&name, size, head, fetch));
    let (mut requests, mut fetched) = (1u64, FIRST_READ.min(meta.size));
    loop {
        tokio::select! {
            Some((ranges, reply)) = asked.recv() => {
                requests += 1;
                fetched += ranges.iter().map(|r| r.end - r.start).sum::<u64>();
                let got = store
                    .get_ranges(&meta.location, &ranges)
                    .await
                    .map(|parts| parts.into_iter().map(|b| b.to_vec()).collect())
                    .map_err(|e| e.to_string());
                // The walk waits for this answer; if it is gone, so is the need.
                let _ = reply.send(got);
            }
            outcome = &mut walking => {
                return match outcome.context("the NetCDF4 planning task failed")? {
                    Outcome::Planned(plan) => {
                        tracing::debug!(
                            "{}: planned from {} bytes in {} requests",
                            url,
                            fetched,
                            requests
                        );
                        Ok(Some(plan))
                    }
                    Outcome::NotPlanned(why) => {
                        tracing::debug!("{url}: downloaded to plan: {why}");
                        Ok(None)
                    }
                    Outcome::FetchFailed(why) => bail!("{url}: reading its metadata: {why}"),
                };
            }
        }
    }
}

/// Whole objects downloaded at once while a table is planned; headers are
/// read [`PARALLEL_HEADERS`] objects at a time.
static DOWNLOAD_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// A planned object described as [`inspect_object`] describes it, if it
/// still has its planned stamp: for a process running a plan another made
/// (an executor), which then fetches only what its tasks read.
pub async fn describe_planned(planned: &ObjectCopy) -> Result<FileInfo> {
    let location = planned.location()?;
    let cache = cache_root()?;
    if let Some(local) = planned.fresh_copy(&location, &cache) {
        return inspect(local).await;
    }
    let store = planned.store(&location)?;
    let meta = as_planned(store.as_ref(), &location, planned).await?;
    inspect_object(store.as_ref(), &location, &meta, &cache).await
}

/// The object's layout, and the header's bytes and the coordinates' byte
/// ranges, each with where it lies in the object; `None` if the object is
/// not a classic file, or does not hold all the header says it does (its
/// copy reports why).
async fn header_and_coordinates(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    head: bytes::Bytes,
) -> Result<Option<(Layout, Vec<(u64, Vec<u8>)>)>> {
    let mut wanted = head.len() as u64;
    let mut header = head;
    let (header, layout) = loop {
        if header.len() as u64 != wanted {
            header = store.get_range(&meta.location, 0..wanted).await?;
        }
        match Layout::read(&header[..]) {
            Ok(Some(layout)) => break (header, layout),
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && wanted < meta.size => {
                wanted = (wanted * 4).min(meta.size);
            }
            Err(_) => return Ok(None),
        }
    };
    if layout.data_end() > meta.size {
        return Ok(None);
    }
    // Coordinates stored next to the header (the usual place of the
    // non-record ones, and of the first record's time) came with it. Only
    // the header and the coordinates are kept: the rest of the first read
    // is data, and plans are kept for every object a table holds.
    let fetched = header.len() as u64;
    let (near, far): (Vec<Range<u64>>, Vec<Range<u64>>) = layout
        .coordinate_ranges()
        .into_iter()
        .partition(|r| r.end <= fetched);
    let coordinates = store.get_ranges(&meta.location, &far).await?;
    let Some(header_bytes) = header.get(..layout.header_len as usize) else {
        return Ok(None);
    };
    let mut parts = vec![(0, header_bytes.to_vec())];
    for r in near {
        parts.push((r.start, header[r.start as usize..r.end as usize].to_vec()));
    }
    parts.extend(
        far.iter()
            .map(|r| r.start)
            .zip(coordinates.iter().map(|b| b.to_vec())),
    );
    Ok(Some((layout, parts)))
}

/// Inspects `parts` of an object of `size` bytes, written where they lie
/// in a sparse file beside `local` (the rest reads as zeros, and nothing
/// inspection reads is in the rest). Errors name the object by `url`.
async fn inspect_parts(
    parts: &[(u64, Vec<u8>)],
    size: u64,
    local: &Path,
    url: &str,
) -> Result<FileInfo> {
    use std::io::{Seek, SeekFrom, Write};
    let parent = local.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{url}: cache folder {}", parent.display()))?;
    let sparse = tempfile::Builder::new()
        .prefix(".header-")
        .tempfile_in(parent)
        .with_context(|| format!("{url}: a header file in {}", parent.display()))?;
    let mut file = sparse.as_file();
    file.set_len(size)?;
    for (offset, bytes) in parts {
        file.seek(SeekFrom::Start(*offset))?;
        file.write_all(bytes)?;
    }
    let path = sparse.path().to_path_buf();
    let named = path.display().to_string();
    inspect(path)
        .await
        .map_err(|e| anyhow::anyhow!(format!("{e:#}").replace(&named, url)))
}

async fn inspect(path: PathBuf) -> Result<FileInfo> {
    tokio::task::spawn_blocking(move || FileInfo::inspect(&path))
        .await
        .context("NetCDF inspection task failed")?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use uqcast_netcdf::{Encoding, Grid, GridVariable, write_era5};

    use super::*;
    use crate::session::s3::{objects_in, origin};

    /// 2021-01-01T00:00Z in microseconds, and six hours.
    const START: i64 = 1_609_459_200_000_000;
    const SIX_HOURS: i64 = 6 * 3_600_000_000;

    /// An ERA5-like file of five steps on a 3 × 4 grid, as its bytes.
    fn era5_bytes(encoding: Encoding) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.nc");
        let values = (0..5 * 12).map(|i| 250.0 + i as f32 * 0.25).collect();
        write_era5(
            &path,
            encoding,
            Grid {
                latitude: vec![50.0, 49.0, 48.0],
                longitude: vec![0.0, 1.0, 2.0, 3.0],
                times: (0..5).map(|k| START + k * SIX_HOURS).collect(),
                era5t_from: None,
            },
            vec![GridVariable::new("t2m", "K", "2 metre temperature", values)],
        )
        .unwrap();
        std::fs::read(path).unwrap()
    }

    /// A store holding `bytes` as `key`, the object's location, and its
    /// listing.
    async fn stored(bytes: Vec<u8>, key: &str) -> Result<(InMemory, S3Location, ObjectMeta)> {
        let store = InMemory::new();
        store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await?;
        let location = S3Location::parse(&format!("s3://b/{key}"))?.expect("an s3 location");
        let meta = objects_in(&store, &location).await?.remove(0);
        Ok((store, location, meta))
    }

    /// The object `key` stored as `bytes`, described as a table would plan it.
    async fn planned(bytes: Vec<u8>, key: &str, cache: &Path) -> Result<FileInfo> {
        let (store, location, meta) = stored(bytes, key).await?;
        inspect_object(&store, &location, &meta, cache).await
    }

    /// A plan made once is kept, and planning the unchanged object again
    /// (another process) in a store that has no object, so that any request
    /// fails, describes it as before and places its steps as before, for
    /// NetCDF3 and NetCDF4.
    #[tokio::test]
    async fn an_unchanged_object_is_planned_again_from_its_kept_plan() -> Result<()> {
        for (encoding, key) in [(Encoding::Nc3, "era5/k3.nc"), (Encoding::Nc4, "era5/k4.nc")] {
            let cache = tempfile::tempdir()?;
            let copy = copy_path(cache.path(), "b", key);
            let (store, location, meta) = stored(era5_bytes(encoding), key).await?;
            let placed = || {
                let plan = super::super::partial::plan_of(&copy).expect("a plan");
                (0..5).map(|s| plan.step_ranges(s)).collect::<Vec<_>>()
            };
            let first = inspect_object(&store, &location, &meta, cache.path()).await?;
            let first_placed = placed();
            assert!(
                first_placed
                    .iter()
                    .all(|r| r.as_ref().is_some_and(|r| !r.is_empty())),
                "{first_placed:?}"
            );
            let again = inspect_object(&InMemory::new(), &location, &meta, cache.path())
                .await
                .with_context(|| format!("{encoding:?}"))?;
            assert_eq!(format!("{first:?}"), format!("{again:?}"), "{encoding:?}");
            assert_eq!(placed(), first_placed, "{encoding:?}");
            assert!(
                !copy.exists(),
                "{encoding:?}: planning downloaded the object"
            );
        }
        Ok(())
    }

    /// A kept plan is not used for a changed object (another stamp), nor
    /// when it is damaged: the object is planned anew, and a damaged plan
    /// replaced by a good one.
    #[tokio::test]
    async fn a_kept_plan_of_a_changed_object_or_damaged_is_not_used() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let key = "era5/c.nc";
        let (store, location, meta) = stored(era5_bytes(Encoding::Nc4), key).await?;
        let info = inspect_object(&store, &location, &meta, cache.path()).await?;

        let mut changed = meta.clone();
        changed.e_tag = Some("another".into());
        let e = inspect_object(&InMemory::new(), &location, &changed, cache.path())
            .await
            .expect_err("a changed object is planned anew, from a store without it");
        assert!(
            format!("{e:#}").contains("reading its first bytes"),
            "{e:#}"
        );

        let kept = kept_plans::plan_path(cache.path(), "b", key);
        let mut damaged = std::fs::read(&kept)?;
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        std::fs::write(&kept, &damaged)?;
        assert!(
            inspect_object(&InMemory::new(), &location, &meta, cache.path())
                .await
                .is_err(),
            "a damaged plan is not used"
        );
        let again = inspect_object(&store, &location, &meta, cache.path()).await?;
        assert_eq!(format!("{info:?}"), format!("{again:?}"));
        assert_ne!(
            std::fs::read(&kept)?,
            damaged,
            "the damaged plan is replaced"
        );
        assert!(kept_plans::load(&kept, &stamp(&meta)).is_some());
        Ok(())
    }

    /// A NetCDF3 file in `dir` as [`era5_bytes`] makes it, then `edit`ed
    /// in define mode (its header rewritten).
    fn edited_nc3(
        dir: &Path,
        edit: impl FnOnce(&mut netcdf::FileMut) -> netcdf::Result<()>,
    ) -> Result<PathBuf> {
        let path = dir.join("edited.nc");
        std::fs::write(&path, era5_bytes(Encoding::Nc3))?;
        let mut file = netcdf::append(&path)?;
        file.redef()?;
        edit(&mut file)?;
        file.close()?;
        Ok(path)
    }

    fn same_description(planned: &FileInfo, inspected: &FileInfo) {
        let mut planned = planned.clone();
        planned.path = inspected.path.clone();
        assert_eq!(format!("{planned:?}"), format!("{inspected:?}"));
    }

    /// A NetCDF3 object (time a record variable, so its values lie one per
    /// record between the data) is described from its header and
    /// coordinates exactly as from the whole file, and not downloaded.
    #[tokio::test]
    async fn a_classic_object_is_described_from_its_header_without_a_download() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let bytes = era5_bytes(Encoding::Nc3);
        let whole = tempfile::NamedTempFile::new()?;
        std::fs::write(whole.path(), &bytes)?;
        let inspected = FileInfo::inspect(whole.path())?;
        assert_eq!(inspected.times.len(), 5);

        let info = planned(bytes, "era5/nc3.nc", cache.path()).await?;
        same_description(&info, &inspected);
        let copy = copy_path(cache.path(), "b", "era5/nc3.nc");
        assert_eq!(info.path, copy);
        assert!(!copy.exists(), "planning downloaded the object");
        let planned = origin(&copy).expect("the planned object is remembered");
        assert_eq!(planned.url, "s3://b/era5/nc3.nc");
        // Nothing but the (absent) copy's folder is left in the cache.
        let left: Vec<_> = std::fs::read_dir(copy.parent().unwrap())?.collect();
        assert!(left.is_empty(), "{left:?}");
        Ok(())
    }

    /// A NetCDF4 object is described from the blocks a walk of it fetched,
    /// exactly as from the whole file, and not downloaded; its plan knows
    /// where each step's chunks lie.
    #[tokio::test]
    async fn a_netcdf4_object_is_described_from_a_walk_without_a_download() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let bytes = era5_bytes(Encoding::Nc4);
        let whole = tempfile::NamedTempFile::new()?;
        std::fs::write(whole.path(), &bytes)?;
        let info = planned(bytes, "era5/nc4.nc", cache.path()).await?;
        let copy = copy_path(cache.path(), "b", "era5/nc4.nc");
        assert_eq!(info.path, copy);
        assert!(!copy.exists(), "planning downloaded the object");
        same_description(&info, &FileInfo::inspect(whole.path())?);
        let plan = super::super::partial::plan_of(&copy).expect("a plan");
        match &plan.steps {
            StepBytes::Chunks { variables, steps } => {
                assert_eq!(*steps, 5);
                let names: Vec<&str> = variables.iter().map(|v| v.name.as_str()).collect();
                assert_eq!(names, ["t2m"], "only gridded variables");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    /// A NetCDF4 object cut short does not walk: it is downloaded, and
    /// reported as the whole file is, naming its copy.
    #[tokio::test]
    async fn a_truncated_netcdf4_object_is_reported_from_its_copy() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let mut bytes = era5_bytes(Encoding::Nc4);
        bytes.truncate(bytes.len() * 2 / 3);
        let e = planned(bytes.clone(), "era5/cut4.nc", cache.path())
            .await
            .expect_err("truncated");
        let copy = copy_path(cache.path(), "b", "era5/cut4.nc");
        assert_eq!(std::fs::read(&copy)?, bytes, "downloaded whole");
        assert!(
            format!("{e:#}").contains(&copy.display().to_string()),
            "{e:#}"
        );
        Ok(())
    }

    /// A classic object cut short is reported as the whole file would be,
    /// naming the object's copy (which a session names by URL).
    #[tokio::test]
    async fn a_truncated_classic_object_is_reported_from_its_copy() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let mut bytes = era5_bytes(Encoding::Nc3);
        bytes.truncate(bytes.len() - 10);
        let e = planned(bytes, "era5/cut.nc", cache.path())
            .await
            .expect_err("truncated");
        let copy = copy_path(cache.path(), "b", "era5/cut.nc");
        assert!(
            format!("{e:#}").contains(&format!("{}: truncated", copy.display())),
            "{e:#}"
        );
        Ok(())
    }

    /// A header larger than the first read is read whole by reading more.
    #[tokio::test]
    async fn a_header_longer_than_the_first_read_is_read_whole() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let dir = tempfile::tempdir()?;
        let path = edited_nc3(dir.path(), |file| {
            let history = "x".repeat(3 * FIRST_READ as usize);
            file.add_attribute("history", history.as_str())?;
            Ok(())
        })?;
        let bytes = std::fs::read(&path)?;
        let layout = Layout::read(&bytes[..])?.expect("classic");
        assert!(layout.header_len > FIRST_READ, "{}", layout.header_len);
        let info = planned(bytes, "era5/long.nc", cache.path()).await?;
        same_description(&info, &FileInfo::inspect(&path)?);
        assert!(!copy_path(cache.path(), "b", "era5/long.nc").exists());
        Ok(())
    }

    /// A header that does not describe an ERA5 file is refused naming the
    /// object by its URL, not the sparse file it was inspected in.
    #[tokio::test]
    async fn a_bad_header_is_refused_naming_the_object() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let dir = tempfile::tempdir()?;
        let path = edited_nc3(dir.path(), |file| {
            let mut time = file.variable_mut("time").expect("a time variable");
            time.put_attribute("units", "fortnights since the flood")?;
            Ok(())
        })?;
        let e = planned(std::fs::read(&path)?, "era5/bad.nc", cache.path())
            .await
            .expect_err("bad time units");
        let e = format!("{e:#}");
        assert!(
            e.starts_with("s3://b/era5/bad.nc: attribute 'time:units': unknown time unit"),
            "{e}"
        );
        assert!(!e.contains(".header-"), "{e}");
        Ok(())
    }
}
