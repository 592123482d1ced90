//! Planning NetCDF4 files by range, checked against the whole file. The
//! partial copies here have every byte the walk did not fetch set to a
//! poison pattern, not zeros: any read of those bytes by libnetcdf or HDF5
//! would describe or read the file differently, or fail.

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::Array;
use datafusion::physical_plan::metrics::Time;

use super::*;
use crate::inspect::FileInfo;
use crate::reader::{Hyperslab, StepReader};
use crate::{Encoding, Grid, GridVariable, write_era5};

const STEPS: usize = 6;
const START: i64 = 1_609_459_200_000_000;
const SIX_HOURS: i64 = 6 * 3_600_000_000;

const NY: usize = 60;
const NX: usize = 80;
const CELLS: usize = NY * NX;

/// Values that deflate poorly, so the chunks span several fetch blocks
/// and a step can be missing from a partial copy.
fn value(variable: usize, step: usize, cell: usize) -> f32 {
    // splitmix64 of the cell's index.
    let mut z = ((variable * STEPS + step) * CELLS + cell) as u64;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    200.0 + (z % 100_000) as f32 / 1000.0
}

/// Fetches from `data`, as a store holding it would.
fn fetch_from(data: Vec<u8>) -> Fetch {
    Box::new(move |ranges: &[Range<u64>]| {
        Ok(ranges
            .iter()
            .map(|r| data[r.start as usize..r.end as usize].to_vec())
            .collect())
    })
}

/// A NetCDF4 file of six steps on a 60 × 80 grid (ERA5T from step 4 when
/// `era5t`), `t2m` and `sp`, `edit`ed after writing; its path and bytes.
fn nc4(
    dir: &Path,
    era5t: bool,
    edit: impl FnOnce(&mut netcdf::FileMut) + Send + 'static,
) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("whole.nc");
    let grid = Grid {
        latitude: (0..NY).map(|i| 60.0 - i as f64 * 0.25).collect(),
        longitude: (0..NX).map(|i| i as f64 * 0.25).collect(),
        times: (0..STEPS as i64).map(|k| START + k * SIX_HOURS).collect(),
        era5t_from: era5t.then_some(4),
    };
    let variables = ["t2m", "sp"]
        .iter()
        .enumerate()
        .map(|(v, name)| {
            let values = (0..STEPS)
                .flat_map(|s| (0..CELLS).map(move |c| value(v, s, c)))
                .collect();
            GridVariable::new(name, "K", name, values)
        })
        .collect();
    write_era5(&path, Encoding::Nc4, grid, variables).unwrap();
    // On the I/O thread, which keeps HDF5's error printer quiet.
    let appended = path.clone();
    crate::io_thread::run(move || {
        let mut file = netcdf::append(&appended).unwrap();
        edit(&mut file);
        file.close().unwrap();
    });
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// The walk over `bytes`, counting the bytes it fetched beyond `seed`.
fn planned(bytes: &[u8], seed: usize) -> (RangedPlan, u64) {
    let fetched = Arc::new(Mutex::new(0u64));
    let counter = Arc::clone(&fetched);
    let mut from_bytes = fetch_from(bytes.to_vec());
    let fetch: Fetch = Box::new(move |ranges: &[Range<u64>]| {
        *counter.lock().unwrap() += ranges.iter().map(|r| r.end - r.start).sum::<u64>();
        from_bytes(ranges)
    });
    let seed = bytes[..seed.min(bytes.len())].to_vec();
    match plan("s3://b/whole.nc", bytes.len() as u64, seed, fetch) {
        Outcome::Planned(plan) => (plan, *fetched.lock().unwrap()),
        other => panic!("not planned: {other:?}"),
    }
}

/// `bytes`' file with only `parts` and `ranges` of it, the rest poison.
fn poisoned(
    dir: &Path,
    bytes: &[u8],
    plan: &RangedPlan,
    ranges: &[Range<u64>],
) -> std::path::PathBuf {
    let mut copy = vec![0xA5u8; bytes.len()];
    for (offset, part) in &plan.parts {
        copy[*offset as usize..*offset as usize + part.len()].copy_from_slice(part);
    }
    for r in ranges {
        copy[r.start as usize..r.end as usize]
            .copy_from_slice(&bytes[r.start as usize..r.end as usize]);
    }
    let path = dir.join("partial.nc");
    std::fs::write(&path, copy).unwrap();
    path
}

fn read_step(path: &Path, variable: &str, step: usize) -> crate::Result<Vec<f32>> {
    let info = FileInfo::inspect(path)?;
    let reader = StepReader::open(path)?;
    let slab = Hyperslab {
        latitude: 0..NY,
        longitude: 0..NX,
    };
    let values = reader.read(info.variable(variable)?, step, &slab, &Time::new())?;
    assert_eq!(values.null_count(), 0);
    Ok(values.values().to_vec())
}

fn names(plan: &RangedPlan) -> Vec<String> {
    plan.variables.iter().map(|v| v.name.clone()).collect()
}

/// Checks a partial copy of the file holding steps 1 and 4 against it;
/// the last step, where the copy lacks it, must not read as the file's
/// (whether that was checked is returned).
fn check_partial(era5t: bool, edit: impl FnOnce(&mut netcdf::FileMut) + Send + 'static) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (whole, bytes) = nc4(dir.path(), era5t, edit);
    let (plan, fetched) = planned(&bytes, 4096);
    assert_eq!(names(&plan), ["sp", "t2m"], "by name");
    for v in &plan.variables {
        assert_eq!(v.steps_per_chunk, 1, "{v:?}");
        let steps: std::collections::BTreeSet<u64> = v.chunks.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps.len(), STEPS, "every step has its chunks: {v:?}");
    }
    let wanted: Vec<Range<u64>> = [1, 4]
        .iter()
        .flat_map(|&s| step_ranges(&plan.variables, s))
        .collect();
    let partial = poisoned(dir.path(), &bytes, &plan, &wanted);

    let (mut described, inspected) = (
        FileInfo::inspect(&partial).unwrap(),
        FileInfo::inspect(&whole).unwrap(),
    );
    described.path = inspected.path.clone();
    assert_eq!(format!("{described:?}"), format!("{inspected:?}"));
    let mut poison_checked = false;
    for (v, name) in ["t2m", "sp"].iter().enumerate() {
        for step in [1, 4] {
            let got = read_step(&partial, name, step).unwrap();
            let want: Vec<f32> = (0..CELLS).map(|c| value(v, step, c)).collect();
            assert_eq!(got, want, "{name} step {step}");
        }
        // A step not fetched is poison: the check can fail.
        // A step the copy lacks is poison, unless the walk's blocks held it.
        let last = step_ranges(plan.variables.iter().filter(|c| c.name == *name), STEPS - 1);
        let in_parts = |r: &Range<u64>| {
            plan.parts
                .iter()
                .any(|(o, b)| *o <= r.start && r.end <= o + b.len() as u64)
        };
        if !last.iter().all(in_parts) {
            poison_checked = true;
            let truth: Vec<f32> = (0..CELLS).map(|c| value(v, STEPS - 1, c)).collect();
            assert_ne!(
                read_step(&partial, name, STEPS - 1).ok(),
                Some(truth),
                "{name}"
            );
        }
    }
    assert!(
        fetched < bytes.len() as u64,
        "the walk fetched the whole file"
    );
    poison_checked
}

/// A NetCDF4 file as `uqcast synth` writes it (with the CDS's scalar
/// `number`), and `expver` as the CDS's current files have it, a string per
/// step, whose values HDF5 keeps in its global heap: described from the walk's bytes
/// exactly as from the whole file, and its held steps read as the file's.
#[test]
fn a_partial_copy_describes_and_reads_as_the_file() {
    let checked = check_partial(false, |file| {
        let mut expver = file.add_string_variable("expver", &["valid_time"]).unwrap();
        for step in 0..STEPS {
            expver
                .put_string(if step < 4 { "0001" } else { "0005" }, step)
                .unwrap();
        }
    });
    assert!(checked, "the last step was fetched");
}

/// ERA5T as older CDS files have it (an expver dimension), many
/// attributes on a variable (HDF5's dense attribute storage, as the CDS's
/// GRIB_ attributes make), a long history and a group.
#[test]
fn dense_attributes_expver_and_groups_are_fetched() {
    let checked = check_partial(true, |file| {
        let mut t2m = file.variable_mut("t2m").unwrap();
        for k in 0..30 {
            t2m.put_attribute(&format!("GRIB_key_{k}"), format!("value {k}").as_str())
                .unwrap();
        }
        file.add_attribute("history", "y".repeat(3 * BLOCK as usize).as_str())
            .unwrap();
        let mut group = file.add_group("provenance").unwrap();
        group.add_attribute("source", "ECMWF").unwrap();
    });
    assert!(checked, "the last step was fetched");
}

/// A gridded variable stored contiguously, not in chunks, has no chunk
/// index to find its steps by: the file is not planned (and is downloaded).
#[test]
fn a_contiguous_variable_is_not_planned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contiguous.nc");
    let written = path.clone();
    crate::io_thread::run(move || {
        let mut file = netcdf::create(&written).unwrap();
        file.add_dimension("valid_time", 2).unwrap();
        file.add_dimension("latitude", 3).unwrap();
        file.add_dimension("longitude", 4).unwrap();
        let mut t2m = file
            .add_variable::<f32>("t2m", &["valid_time", "latitude", "longitude"])
            .unwrap();
        // Fixed dimensions, no filters: libnetcdf stores it contiguously.
        t2m.put_values(&[280.0f32; 24], ..).unwrap();
    });
    let bytes = std::fs::read(&path).unwrap();
    let outcome = plan(
        "contiguous.nc",
        bytes.len() as u64,
        vec![],
        fetch_from(bytes),
    );
    assert!(
        matches!(&outcome, Outcome::NotPlanned(why) if why == "/t2m: not stored in chunks"),
        "{outcome:?}"
    );
}

/// Bytes that are not HDF5, and a file cut short, are not planned, and a
/// failing fetch is reported as such.
#[test]
fn unreadable_files_and_failed_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = nc4(dir.path(), false, |_| {});
    let junk = vec![7u8; 100_000];
    let outcome = plan(
        "junk.nc",
        junk.len() as u64,
        vec![],
        fetch_from(junk.clone()),
    );
    assert!(matches!(outcome, Outcome::NotPlanned(_)), "{outcome:?}");
    let cut = bytes[..bytes.len() / 2].to_vec();
    let outcome = plan("cut.nc", cut.len() as u64, vec![], fetch_from(cut.clone()));
    assert!(matches!(outcome, Outcome::NotPlanned(_)), "{outcome:?}");
    let failing: Fetch = Box::new(|_: &[Range<u64>]| Err("connection reset by peer".into()));
    let outcome = plan("x.nc", bytes.len() as u64, vec![], failing);
    assert!(
        matches!(&outcome, Outcome::FetchFailed(w) if w == "connection reset by peer"),
        "{outcome:?}"
    );
}

/// Chunks of two steps and two tiles: a step's ranges are both tiles
/// of the chunk holding it, in every variable, each once and sorted.
#[test]
fn a_step_is_every_tile_of_the_chunks_holding_it() {
    let t2m = ChunkedVariable {
        name: "t2m".into(),
        steps_per_chunk: 2,
        chunks: vec![(0, 500..600), (0, 100..200), (2, 300..400), (2, 700..800)],
    };
    let sp = ChunkedVariable {
        name: "sp".into(),
        steps_per_chunk: 1,
        chunks: vec![(3, 900..950)],
    };
    let both = [t2m.clone(), sp];
    assert_eq!(step_ranges(&both, 0), [100..200, 500..600]);
    assert_eq!(step_ranges(&both, 1), [100..200, 500..600]);
    assert_eq!(step_ranges(&both, 3), [300..400, 700..800, 900..950]);
    assert!(step_ranges(&both, 4).is_empty(), "past the last step");
    assert_eq!(step_ranges([&t2m, &t2m], 2), [300..400, 700..800]);
}
