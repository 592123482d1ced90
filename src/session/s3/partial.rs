//! Partial copies of NetCDF objects: the metadata and coordinates planning
//! fetched (a classic file's header; the blocks a NetCDF4 file's walk read,
//! see [`uqcast_netcdf::ranged`]), and only the steps scans have asked for
//! (a classic file's records; a NetCDF4 file's chunks), each at its offset
//! in a sparse file the size of the object. libnetcdf reads such a file as
//! the object, and a scan reads only steps that are in it. So a query of
//! one day of a month-long object fetches that day's steps, not the month.
//!
//! A partial copy of `s3://BUCKET/KEY` is `CACHE/s3-steps/BUCKET/KEY`, with
//! `KEY.steps` beside it: the object's stamp, then the records the copy
//! holds, appended once their bytes are on disk. Writers take an OS lock
//! on `KEY.steps.lock`, so processes sharing a cache do not interleave.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use object_store::ObjectStore;
use uqcast_netcdf::classic::Layout;
use uqcast_netcdf::ranged::ChunkedVariable;

use super::{ObjectCopy, as_planned, cache_root, copy_of, fetch_lock, is_fresh, origin};

/// A scan reading more than this share of an object's records (in all its
/// partitions) downloads it whole: one request instead of one per record.
const WHOLE_ABOVE: f64 = 0.25;

/// What planning learnt of an object it described without downloading it.
#[derive(Debug)]
pub(super) struct HeaderPlan {
    pub steps: StepBytes,
    /// The metadata's and coordinates' bytes, each with its offset.
    pub parts: Vec<(u64, Vec<u8>)>,
    pub size: u64,
}

/// Where an object's steps lie.
#[derive(Debug)]
pub(super) enum StepBytes {
    /// A classic file's records, one a step.
    Records(Layout),
    /// A NetCDF4 file's gridded variables' chunks, of `steps` steps.
    Chunks {
        variables: Vec<ChunkedVariable>,
        steps: usize,
    },
}

/// The objects this process planned from headers, by the path of their copy.
static PLANNED: Mutex<BTreeMap<PathBuf, Arc<HeaderPlan>>> = Mutex::new(BTreeMap::new());

/// Remembers how the object whose copy is `copy` was planned.
pub(super) fn remember_plan(copy: &Path, plan: HeaderPlan) {
    if let Ok(mut planned) = PLANNED.lock() {
        planned.insert(copy.to_path_buf(), Arc::new(plan));
    }
}

pub(super) fn plan_of(copy: &Path) -> Option<Arc<HeaderPlan>> {
    PLANNED.lock().ok()?.get(copy).cloned()
}

impl HeaderPlan {
    /// How many steps the object has.
    fn steps(&self) -> usize {
        match &self.steps {
            StepBytes::Records(layout) => layout.records as usize,
            StepBytes::Chunks { steps, .. } => *steps,
        }
    }

    /// The byte ranges holding step `r` of every gridded variable.
    pub(super) fn step_ranges(&self, r: usize) -> Option<Vec<Range<u64>>> {
        match &self.steps {
            StepBytes::Records(layout) => self.record(layout, r).map(|range| vec![range]),
            StepBytes::Chunks { variables, .. } => {
                Some(uqcast_netcdf::ranged::step_ranges(variables, r))
            }
        }
    }

    /// The steps, beyond `held`, whose every byte range is in `fetched` or
    /// belongs to a step in `held`: a NetCDF4 chunk of several steps
    /// fetched for one brings the others with it.
    fn steps_present(&self, held: &BTreeSet<usize>, fetched: &[Range<u64>]) -> Vec<usize> {
        let key = |r: &Range<u64>| (r.start, r.end);
        let mut have: BTreeSet<(u64, u64)> = fetched.iter().map(key).collect();
        for &h in held {
            have.extend(self.step_ranges(h).unwrap_or_default().iter().map(key));
        }
        (0..self.steps())
            .filter(|t| !held.contains(t))
            .filter(|&t| {
                self.step_ranges(t)
                    .is_some_and(|rs| !rs.is_empty() && rs.iter().all(|r| have.contains(&key(r))))
            })
            .collect()
    }

    /// The byte range of record `r` (every record variable's step `r`).
    fn record(&self, layout: &Layout, r: usize) -> Option<Range<u64>> {
        let start = layout
            .variables
            .iter()
            .filter(|v| v.is_record)
            .map(|v| v.begin)
            .min()?;
        let from = start + r as u64 * layout.record_size;
        Some(from..(from + layout.record_size).min(self.size))
    }

    /// Whether `steps` are the object's, and a scan reading `in_scan`
    /// steps reads few enough for them to be fetched alone.
    fn reads_records(&self, steps: &[usize], in_scan: usize) -> bool {
        let records = self.steps();
        records > 0
            && steps.iter().all(|&s| s < records)
            && (steps.len().max(in_scan) as f64) <= WHOLE_ABOVE * records as f64
    }
}

/// The file a scan partition opens for `copy` to read `steps` (the whole
/// scan reads `in_scan`): `copy` itself when it is a local file or a fresh
/// copy; a partial copy holding `steps` when the object was planned from
/// its header and the scan reads few of its records; else the whole
/// object, downloaded (one request, not one per record, and once for all
/// partitions).
pub(super) async fn present(copy: &Path, steps: &[usize], in_scan: usize) -> Result<PathBuf> {
    let Some(planned) = origin(copy) else {
        return Ok(copy.to_path_buf());
    };
    if is_fresh(copy, &planned.stamp) {
        return Ok(copy.to_path_buf());
    }
    match plan_of(copy) {
        Some(plan) if plan.reads_records(steps, in_scan) => {
            with_records(&planned, &plan, steps).await
        }
        _ => copy_of(&planned).await,
    }
}

/// The partial copy of `planned` holding `steps`, fetching the records it lacks.
async fn with_records(planned: &ObjectCopy, plan: &HeaderPlan, steps: &[usize]) -> Result<PathBuf> {
    let location = planned.location()?;
    let cache = cache_root()?;
    let partial = cache
        .join("s3-steps")
        .join(&location.bucket)
        .join(&location.key);
    name_in_errors(&cache, &location.bucket);
    let lock = fetch_lock(&partial);
    let _writing = lock.lock().await;
    // Other processes sharing the cache: one writer of a partial copy at a
    // time, or a copy started anew could lose records another listed.
    let _shared = lock_between_processes(&partial)
        .with_context(|| format!("{}: partial copy {}", planned.url, partial.display()))?;
    let held = records_held(&partial, &planned.stamp);
    let mut missing: Vec<usize> = steps
        .iter()
        .copied()
        .filter(|s| !held.contains(s))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        super::prune::mark_used(&partial);
        return Ok(partial);
    }
    let store = planned.store(&location)?;
    let meta = as_planned(store.as_ref(), &location, planned).await?;
    // The byte ranges holding the missing steps, each once (a NetCDF4
    // chunk may hold several steps).
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for &r in &missing {
        let holding = plan
            .step_ranges(r)
            .with_context(|| format!("{}: no record variables", planned.url))?;
        for range in holding {
            if !ranges.contains(&range) {
                ranges.push(range);
            }
        }
    }
    let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    eprintln!(
        "reading {} of {} steps of {} ({bytes} bytes) into {}",
        missing.len(),
        plan.steps(),
        planned.url,
        partial.display()
    );
    let records = store
        .get_ranges(&meta.location, &ranges)
        .await
        .with_context(|| format!("{}: reading {} steps", planned.url, missing.len()))?;
    let fetched: Vec<(u64, &[u8])> = ranges
        .iter()
        .zip(&records)
        .map(|(range, data)| (range.start, &data[..]))
        .collect();
    let mut listed: BTreeSet<usize> = missing.iter().copied().collect();
    listed.extend(plan.steps_present(&held, &ranges));
    let listed: Vec<usize> = listed.into_iter().collect();
    store_records(
        &partial,
        plan,
        &planned.stamp,
        held.is_empty(),
        &listed,
        &fetched,
    )
    .with_context(|| format!("{}: partial copy {}", planned.url, partial.display()))?;
    super::keep_within_limit(&cache)?;
    Ok(partial)
}

/// Writes the bytes holding `steps` (offset, bytes) into the partial copy,
/// started anew when `fresh`, and lists the steps once they are on disk.
fn store_records(
    partial: &Path,
    plan: &HeaderPlan,
    stamp: &str,
    fresh: bool,
    steps: &[usize],
    bytes: &[(u64, &[u8])],
) -> std::io::Result<()> {
    if fresh {
        start_partial(partial, plan, stamp)?;
    }
    let file = std::fs::OpenOptions::new().write(true).open(partial)?;
    for (offset, data) in bytes {
        file.write_all_at(data, *offset)?;
    }
    file.sync_data()?;
    let mut list = std::fs::OpenOptions::new()
        .append(true)
        .open(steps_file(partial))?;
    let lines: String = steps.iter().map(|r| format!("{r}\n")).collect();
    std::io::Write::write_all(&mut list, lines.as_bytes())
}

/// Makes errors that name a partial copy name its object instead.
fn name_in_errors(cache: &Path, bucket: &str) {
    let pair = (
        format!("{}/", cache.join("s3-steps").join(bucket).display()),
        format!("s3://{bucket}/"),
    );
    if let Ok(mut known) = super::CACHED_BUCKETS.lock()
        && !known.contains(&pair)
    {
        known.push(pair);
    }
}

/// An OS lock on `KEY.steps.lock`, held until dropped.
fn lock_between_processes(partial: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(format!("{}.steps.lock", partial.display()))?;
    match file.lock() {
        // A filesystem without locks: this process's lock still orders its own scans.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
        other => other?,
    }
    Ok(file)
}

fn steps_file(partial: &Path) -> PathBuf {
    PathBuf::from(format!("{}.steps", partial.display()))
}

/// The records a partial copy holds, if it is one of the object as `stamp`
/// describes it; none otherwise (a copy of an older object starts over).
fn records_held(partial: &Path, stamp: &str) -> BTreeSet<usize> {
    let Ok(text) = std::fs::read_to_string(steps_file(partial)) else {
        return BTreeSet::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(stamp) || !partial.is_file() {
        return BTreeSet::new();
    }
    lines.filter_map(|l| l.parse().ok()).collect()
}

/// A new partial copy: the object's size, its header and coordinates, and
/// a list of records holding only the stamp. The file lands under a
/// temporary name, so a copy is never found without its header.
fn start_partial(partial: &Path, plan: &HeaderPlan, stamp: &str) -> std::io::Result<()> {
    let parent = partial
        .parent()
        .ok_or_else(|| std::io::Error::other("a partial copy's path has no folder"))?;
    std::fs::create_dir_all(parent)?;
    let fresh = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(parent)?;
    fresh.as_file().set_len(plan.size)?;
    for (offset, bytes) in &plan.parts {
        fresh.as_file().write_all_at(bytes, *offset)?;
    }
    fresh.as_file().sync_data()?;
    fresh.persist(partial).map_err(|e| e.error)?;
    std::fs::write(steps_file(partial), format!("{stamp}\n"))
}

#[cfg(test)]
mod tests {
    use uqcast_netcdf::{Encoding, Grid, GridVariable, write_era5};

    use super::*;

    const STEPS: usize = 8;

    fn t2m(step: usize, cell: usize) -> f32 {
        250.0 + step as f32 * 1.5 + cell as f32 * 0.25
    }

    /// A NetCDF3 file of eight steps on a 3 × 4 grid, as its bytes.
    fn nc3_bytes() -> Vec<u8> {
        nc3_bytes_with(None)
    }

    /// The same, ERA5T from step `era5t_from` on (an expver dimension).
    fn nc3_bytes_with(era5t_from: Option<usize>) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.nc");
        let start = 1_609_459_200_000_000_i64;
        write_era5(
            &path,
            Encoding::Nc3,
            Grid {
                latitude: vec![50.0, 49.0, 48.0],
                longitude: vec![0.0, 1.0, 2.0, 3.0],
                times: (0..STEPS as i64)
                    .map(|k| start + k * 6 * 3_600_000_000)
                    .collect(),
                era5t_from,
            },
            vec![GridVariable::new(
                "t2m",
                "K",
                "2 metre temperature",
                (0..STEPS)
                    .flat_map(|s| (0..12).map(move |c| t2m(s, c)))
                    .collect(),
            )],
        )
        .unwrap();
        std::fs::read(path).unwrap()
    }

    /// The plan planning makes of `bytes`: header and coordinates.
    fn plan_of_bytes(bytes: &[u8]) -> HeaderPlan {
        let layout = Layout::read(bytes).unwrap().expect("classic");
        let mut parts = vec![(0, bytes[..layout.header_len as usize].to_vec())];
        for r in layout.coordinate_ranges() {
            parts.push((r.start, bytes[r.start as usize..r.end as usize].to_vec()));
        }
        HeaderPlan {
            steps: StepBytes::Records(layout),
            parts,
            size: bytes.len() as u64,
        }
    }

    /// `copy` holding `records` of `bytes`' object, as planned from them.
    fn partial_copy(bytes: &[u8], copy: &Path, records: &[usize]) -> HeaderPlan {
        let plan = plan_of_bytes(bytes);
        let held: Vec<(usize, u64, &[u8])> = records
            .iter()
            .map(|&r| {
                let range = plan.step_ranges(r).unwrap().remove(0);
                (
                    r,
                    range.start,
                    &bytes[range.start as usize..range.end as usize],
                )
            })
            .collect();
        let (steps, bytes): (Vec<usize>, Vec<(u64, &[u8])>) =
            held.into_iter().map(|(r, o, b)| (r, (o, b))).unzip();
        store_records(copy, &plan, "etag-1", true, &steps, &bytes).unwrap();
        plan
    }

    /// A partial copy of an object mixing ERA5 and ERA5T (each record holds
    /// both expver slices of its step) reads its steps, merged, as written:
    /// step 2 from the ERA5 slice, step 5 from the ERA5T one.
    #[test]
    fn a_partial_copy_of_an_expver_object_reads_its_steps_merged() {
        use datafusion::arrow::array::Array;
        use datafusion::physical_plan::metrics::Time;
        use uqcast_netcdf::inspect::FileInfo;
        use uqcast_netcdf::reader::{Hyperslab, StepReader};

        let bytes = nc3_bytes_with(Some(4));
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("bucket/f.nc");
        partial_copy(&bytes, &partial, &[2, 5]);
        let info = FileInfo::inspect(&partial).unwrap();
        let t2m_info = info.variable("t2m").unwrap();
        assert!(t2m_info.expver.is_some());
        let reader = StepReader::open(&partial).unwrap();
        let slab = Hyperslab {
            latitude: 0..3,
            longitude: 0..4,
        };
        for step in [2, 5] {
            let got = reader.read(t2m_info, step, &slab, &Time::new()).unwrap();
            assert_eq!(got.null_count(), 0, "step {step}");
            for (cell, value) in got.values().iter().enumerate() {
                let want = t2m(step, cell);
                assert!(
                    (value - want).abs() < 0.01,
                    "step {step} cell {cell}: {value} vs {want}"
                );
            }
        }
    }

    /// A NetCDF4 chunk of two steps fetched for one of them brings the
    /// other; a step is present only once all its variables' chunks are.
    #[test]
    fn a_chunk_of_several_steps_brings_them_all() {
        use uqcast_netcdf::ranged::ChunkedVariable;
        let variable = |name: &str, chunks: Vec<(u64, Range<u64>)>| ChunkedVariable {
            name: name.into(),
            steps_per_chunk: 2,
            chunks,
        };
        let plan = HeaderPlan {
            steps: StepBytes::Chunks {
                variables: vec![
                    variable("t2m", vec![(0, 100..200), (2, 200..300), (4, 300..400)]),
                    variable("sp", vec![(0, 400..500), (2, 500..600), (4, 600..700)]),
                ],
                steps: 6,
            },
            parts: vec![],
            size: 1000,
        };
        let none = BTreeSet::new();
        assert_eq!(plan.steps_present(&none, &[100..200, 400..500]), [0, 1]);
        assert!(
            plan.steps_present(&none, &[200..300, 300..400]).is_empty(),
            "sp's chunk missing"
        );
        let held = BTreeSet::from([2]);
        assert_eq!(
            plan.steps_present(&held, &[]),
            [3],
            "step 2's chunks hold step 3"
        );
        assert_eq!(plan.steps_present(&held, &[300..400, 600..700]), [3, 4, 5]);
    }

    /// A partial copy holding records 2 and 5 reads, at those steps, as the
    /// object does; the records it holds are listed under the object's
    /// stamp, and under another stamp it holds none.
    #[test]
    fn a_partial_copy_reads_its_records_as_the_object() {
        let bytes = nc3_bytes();
        let plan = plan_of_bytes(&bytes);
        assert!(plan.reads_records(&[2], 1));
        assert!(plan.reads_records(&[2, 5], 2));
        assert!(!plan.reads_records(&[0, 1, 2], 3), "over a quarter: whole");
        assert!(
            !plan.reads_records(&[2], 6),
            "a partition reading one step of a scan reading six: whole"
        );
        assert!(!plan.reads_records(&[STEPS], 1), "no such record");
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("bucket/f.nc");
        let held: Vec<(usize, u64, Vec<u8>)> = [2, 5]
            .iter()
            .map(|&r| {
                let range = plan.step_ranges(r).unwrap().remove(0);
                (
                    r,
                    range.start,
                    bytes[range.start as usize..range.end as usize].to_vec(),
                )
            })
            .collect();
        let parts: Vec<(u64, &[u8])> = held.iter().map(|(_, o, b)| (*o, &b[..])).collect();
        store_records(&partial, &plan, "etag-1", true, &[2], &parts[..1]).unwrap();
        store_records(&partial, &plan, "etag-1", false, &[5], &parts[1..]).unwrap();
        assert_eq!(records_held(&partial, "etag-1"), BTreeSet::from([2, 5]));
        assert!(records_held(&partial, "etag-2").is_empty());
        assert_eq!(
            std::fs::metadata(&partial).unwrap().len(),
            bytes.len() as u64
        );

        let file = netcdf::open(&partial).unwrap();
        let t2m_var = file.variable("t2m").unwrap();
        let packed = |step: usize| -> Vec<f64> {
            let raw: Vec<i16> = t2m_var.get_values((step..step + 1, .., ..)).unwrap();
            let scale: f64 = t2m_var
                .attribute_value("scale_factor")
                .unwrap()
                .unwrap()
                .try_into()
                .unwrap();
            let offset: f64 = t2m_var
                .attribute_value("add_offset")
                .unwrap()
                .unwrap()
                .try_into()
                .unwrap();
            raw.iter().map(|&v| f64::from(v) * scale + offset).collect()
        };
        for step in [2, 5] {
            for (cell, value) in packed(step).iter().enumerate() {
                let want = f64::from(t2m(step, cell));
                assert!(
                    (value - want).abs() < 0.01,
                    "step {step} cell {cell}: {value} vs {want}"
                );
            }
        }
        let times: Vec<i32> = file.variable("time").unwrap().get_values(..).unwrap();
        let hours = |s: usize| times[s] - times[0];
        assert_eq!(
            (hours(2), hours(5)),
            (12, 30),
            "held records' times: {times:?}"
        );
    }
}
