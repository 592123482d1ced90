//! Hyperslab reads of one step of one variable, decoded to Float32.
//!
//! libnetcdf is not thread-safe; the netcdf crate serialises every call behind
//! one process-wide lock. Only the raw read happens under that lock: decoding
//! (unpacking, fill → NULL) runs outside it, so partitions overlap decoding
//! with each other's reads. Where they apply, the stored bytes do not go
//! through libnetcdf at all: NetCDF3 steps are read by each partition itself
//! ([`crate::classic_reads`]), and NetCDF4 chunks are fetched on the I/O
//! thread but inflated by the partition ([`crate::chunks`]).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use datafusion::arrow::array::Float32Array;
use datafusion::physical_plan::metrics::Time;

use crate::cf::RawSample;
use crate::classic_reads::ClassicFile;
use crate::error::{NetcdfError, Result};
use crate::inspect::{StoredType, VariableInfo};
use crate::io_thread::RemoteFile;

/// An open file positioned for step reads.
#[derive(Debug)]
pub struct StepReader {
    file: RemoteFile,
    direct: Direct,
    /// Variables read through libnetcdf after all: the direct read did not
    /// apply to their layout, or their bytes were damaged.
    through_libnetcdf: Mutex<HashSet<String>>,
}

/// How a file's steps are read when libnetcdf is not needed.
#[derive(Debug)]
enum Direct {
    /// NetCDF3: by the partition itself ([`crate::classic_reads`]).
    Classic(ClassicFile),
    /// NetCDF4: chunks fetched on the I/O thread, inflated by the
    /// partition ([`crate::chunks`]).
    Chunks,
    /// Everything through libnetcdf.
    Off,
}

/// `UQCAST_NETCDF4_INFLATE=libnetcdf` reads NetCDF4 chunks through
/// libnetcdf, as before [`crate::chunks`] (to compare, or to rule it out).
pub const INFLATE_VAR: &str = "UQCAST_NETCDF4_INFLATE";

/// `UQCAST_NETCDF3_READ=libnetcdf` reads NetCDF3 steps through libnetcdf,
/// as before [`crate::classic_reads`].
pub const CLASSIC_VAR: &str = "UQCAST_NETCDF3_READ";

/// Whether the environment variable `name` leaves direct reads on.
fn allowed(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "libnetcdf")
}

fn direct_chunks_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| allowed(INFLATE_VAR))
}

fn direct_classic_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| allowed(CLASSIC_VAR))
}

/// Which cells of a step to read: latitude and longitude index ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hyperslab {
    pub latitude: Range<usize>,
    pub longitude: Range<usize>,
}

impl Hyperslab {
    pub fn cells(&self) -> usize {
        self.latitude.len() * self.longitude.len()
    }
}

impl StepReader {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        // Opened through libnetcdf first: it checks the file, and reads
        // whatever the direct reads leave to it.
        let file = RemoteFile::open(path)?;
        let direct = if crate::chunks::is_hdf5(path) {
            if direct_chunks_allowed() {
                Direct::Chunks
            } else {
                Direct::Off
            }
        } else {
            direct_classic_allowed()
                .then(|| ClassicFile::open(path))
                .flatten()
                .map_or(Direct::Off, Direct::Classic)
        };
        Ok(Self {
            file,
            direct,
            through_libnetcdf: Mutex::new(HashSet::new()),
        })
    }

    /// Reads step `index` of `variable` over `slab`, decoded with the file's
    /// packing (an expver variable's slices merged); `read_time` measures
    /// the read of the stored values, not their decoding.
    pub fn read(
        &self,
        variable: &VariableInfo,
        index: usize,
        slab: &Hyperslab,
        read_time: &Time,
    ) -> Result<Float32Array> {
        let step = index..index + 1;
        let (latitude, longitude) = (slab.latitude.clone(), slab.longitude.clone());
        let extents = match &variable.expver {
            Some(expver) => vec![step, 0..expver.slices(), latitude, longitude],
            None => vec![step, latitude, longitude],
        };
        macro_rules! decode {
            ($t:ty) => {{
                let raw = self.read_raw::<$t>(&variable.name, extents, read_time)?;
                variable.packing.decode(raw)
            }};
        }
        let decoded = match variable.stored {
            StoredType::I8 => decode!(i8),
            StoredType::U8 => decode!(u8),
            StoredType::I16 => decode!(i16),
            StoredType::U16 => decode!(u16),
            StoredType::I32 => decode!(i32),
            StoredType::U32 => decode!(u32),
            StoredType::F32 => decode!(f32),
            StoredType::F64 => decode!(f64),
        };
        // Every expver slice was read; one field comes back.
        Ok(match &variable.expver {
            Some(expver) => expver.merge(&decoded, slab.cells()),
            None => decoded,
        })
    }
}

impl StepReader {
    /// The stored values of one hyperslab: read directly where
    /// [`Direct`] applies, else whole through libnetcdf. `read_time` times
    /// the I/O (and a NetCDF4 read's wait for the I/O thread).
    fn read_raw<T: RawSample>(
        &self,
        name: &str,
        extents: Vec<Range<usize>>,
        read_time: &Time,
    ) -> Result<Vec<T>> {
        let _span = tracing::trace_span!("netcdf_read", variable = name).entered();
        let declined = || {
            self.through_libnetcdf
                .lock()
                .map_or(true, |names| names.contains(name))
        };
        if !matches!(self.direct, Direct::Off) && !declined() {
            if let Some(values) = self.read_direct::<T>(name, &extents, read_time)? {
                return Ok(values);
            }
            if let Ok(mut names) = self.through_libnetcdf.lock() {
                names.insert(name.to_string());
            }
        }
        let _timer = read_time.timer();
        let (path, name) = (self.file.path().to_path_buf(), name.to_string());
        self.file.with(move |file| {
            let var = file
                .variable(&name)
                .ok_or_else(|| NetcdfError::MissingVariable {
                    path: path.clone(),
                    variable: name.clone(),
                    available: vec![],
                })?;
            let mut raw = vec![T::default(); extents.iter().map(|r| r.len()).product()];
            var.get_values_into(&mut raw, extents)
                .map_err(|source| NetcdfError::Read {
                    path,
                    variable: name,
                    source,
                })?;
            Ok(raw)
        })
    }
}

impl StepReader {
    /// The values read without libnetcdf, or `None` where that does not
    /// apply (then the caller reads through libnetcdf).
    fn read_direct<T: RawSample>(
        &self,
        name: &str,
        extents: &[Range<usize>],
        read_time: &Time,
    ) -> Result<Option<Vec<T>>> {
        match &self.direct {
            Direct::Classic(file) => {
                let _timer = read_time.timer();
                Ok(file.read::<T>(name, extents))
            }
            Direct::Chunks => {
                let (path, variable, slab) = (
                    self.file.path().to_path_buf(),
                    name.to_string(),
                    extents.to_vec(),
                );
                let raw = {
                    let _timer = read_time.timer();
                    self.file.with(move |_| {
                        Ok(crate::chunks::read(&path, &variable, &slab, size_of::<T>()))
                    })?
                };
                Ok(raw.and_then(|r| crate::chunks::assemble::<T>(&r, extents)))
            }
            Direct::Off => Ok(None),
        }
    }
}

/// libnetcdf's values of the variable `v` of `path` over `extents`: what
/// tests compare the direct reads with.
#[cfg(test)]
pub(crate) fn libnetcdf_values<T: RawSample>(
    path: &std::path::Path,
    extents: &[Range<usize>],
) -> Vec<T> {
    let (path, extents) = (path.to_path_buf(), extents.to_vec());
    crate::io_thread::run(move || {
        let file = netcdf::open(&path).unwrap();
        let v = file.variable("v").unwrap();
        let mut out = vec![T::default(); extents.iter().map(|r| r.len()).product()];
        v.get_values_into(&mut out, extents).unwrap();
        out
    })
}
