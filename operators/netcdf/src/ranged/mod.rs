//! NetCDF4 (HDF5) files planned without being downloaded.
//!
//! A NetCDF4 file keeps its metadata in HDF5 structures anywhere in the
//! file, found by following addresses from its superblock, so no fixed
//! range holds it as a classic file's header does. Instead HDF5 opens the
//! file through a driver that fetches by range ([`driver`]), and a walk
//! ([`walk`]) makes it read everything libnetcdf reads to open and describe
//! the file: object headers, attributes, coordinates and each variable's
//! chunk index. The blocks fetched, written at their offsets in a sparse
//! file, then open in libnetcdf as the file does; the chunk index says
//! which bytes hold each step, so a scan fetches only the steps it reads.
//!
//! The walk runs on the I/O thread, which waits on each fetch.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::ops::Range;

pub(crate) mod driver;
pub use driver::{BLOCK, Fetch};
mod walk;

use crate::hdf5_ffi::*;
use driver::{SOURCE, Source};

/// A variable stored in chunks, with every written chunk's first index
/// along its first (time) dimension and its bytes' place in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkedVariable {
    pub name: String,
    pub steps_per_chunk: u64,
    pub chunks: Vec<(u64, Range<u64>)>,
}

/// What a walk learnt of a file: the bytes it fetched (metadata and
/// coordinates), as (offset, bytes) runs, and its chunked variables.
#[derive(Debug, Clone)]
pub struct RangedPlan {
    pub parts: Vec<(u64, Vec<u8>)>,
    pub variables: Vec<ChunkedVariable>,
}

/// The byte ranges of the chunks holding step `step` of `variables`,
/// sorted, each once.
pub fn step_ranges<'a>(
    variables: impl IntoIterator<Item = &'a ChunkedVariable>,
    step: usize,
) -> Vec<Range<u64>> {
    let step = step as u64;
    let mut ranges: Vec<Range<u64>> = variables
        .into_iter()
        .flat_map(|v| {
            v.chunks
                .iter()
                .filter(move |(first, _)| *first <= step && step < first + v.steps_per_chunk)
                .map(|(_, bytes)| bytes.clone())
        })
        .collect();
    ranges.sort_by_key(|r| (r.start, r.end));
    ranges.dedup();
    ranges
}

/// How planning a file by range ended.
#[derive(Debug)]
pub enum Outcome {
    Planned(RangedPlan),
    /// HDF5 could not read it this way (a damaged file, or a layout this
    /// does not plan); the words say why. The whole file tells the user.
    NotPlanned(String),
    /// A fetch failed; the words say why.
    FetchFailed(String),
}

/// Plans the HDF5 file `name` of `size` bytes, whose first bytes are
/// `seed`, fetching the rest through `fetch`, on the I/O thread. A crash
/// of HDF5 on the file's metadata is reported naming `name`, as for a file
/// on disk ([`crate::fatal`]).
pub fn plan(name: &str, size: u64, seed: Vec<u8>, fetch: Fetch) -> Outcome {
    let Ok(c_name) = CString::new(name) else {
        return Outcome::NotPlanned("a name with a NUL byte".into());
    };
    let walked = crate::io_thread::run_on(std::path::Path::new(name), move || {
        Ok(plan_here(&c_name, size, &seed, fetch))
    });
    walked.unwrap_or_else(|e| Outcome::NotPlanned(e.to_string()))
}

fn plan_here(name: &CString, size: u64, seed: &[u8], fetch: Fetch) -> Outcome {
    let Some(driver) = driver::driver_id() else {
        return Outcome::NotPlanned("HDF5 refused the ranged driver".into());
    };
    // SAFETY: plain HDF5 calls; the property list is closed by its Handle.
    // HDF5's own error printer would write a stack for every probe.
    silence_errors();
    let fapl = unsafe {
        Handle::open(H5Pcreate(H5P_CLS_FILE_ACCESS_ID_g), H5Pclose)
            .filter(|p| H5Pset_driver(p.0, driver, std::ptr::null()) >= 0)
    };
    let Some(fapl) = fapl else {
        return Outcome::NotPlanned("HDF5 refused the ranged driver".into());
    };
    SOURCE.with(|s| *s.borrow_mut() = Some(Source::new(size, seed, fetch)));
    let walked = walk::walk(name, fapl.0);
    let Some(source) = SOURCE.with(|s| s.borrow_mut().take()) else {
        return Outcome::NotPlanned("the walk lost its file".into());
    };
    if let Some(failure) = source.failure.clone() {
        return Outcome::FetchFailed(failure);
    }
    match walked {
        Ok(variables) => Outcome::Planned(RangedPlan {
            parts: source.into_parts(),
            variables,
        }),
        Err(walk::Stop(why)) => Outcome::NotPlanned(why),
    }
}

#[cfg(test)]
mod tests;
