//! Hyperslab reads of one step of one variable, decoded to Float32.
//!
//! libnetcdf is not thread-safe; the netcdf crate serialises every call behind
//! one process-wide lock. Only the raw read happens under that lock: decoding
//! (unpacking, fill → NULL) runs outside it, so partitions overlap decoding
//! with each other's reads.

use std::ops::Range;
use std::path::Path;

use datafusion::arrow::array::Float32Array;
use datafusion::physical_plan::metrics::Time;

use crate::cf::RawSample;
use crate::error::{NetcdfError, Result};
use crate::inspect::{FileInfo, StoredType, VariableInfo};

/// An open file positioned for step reads.
#[derive(Debug)]
pub struct StepReader {
    file: netcdf::File,
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
    pub fn open(info: &FileInfo) -> Result<Self> {
        Ok(Self { file: crate::inspect::open(&info.path)? })
    }

    /// Reads step `index` of `variable` over `slab`, decoded with the file's
    /// packing; `read_time` measures only the libnetcdf call.
    pub fn read(
        &self,
        path: &Path,
        variable: &VariableInfo,
        index: usize,
        slab: &Hyperslab,
        read_time: &Time,
    ) -> Result<Float32Array> {
        let var = self.file.variable(&variable.name).ok_or_else(|| NetcdfError::MissingVariable {
            path: path.to_path_buf(),
            variable: variable.name.clone(),
            available: vec![],
        })?;
        let extents = [index..index + 1, slab.latitude.clone(), slab.longitude.clone()];
        let n = slab.cells();
        let read_err = |source| NetcdfError::Read { path: path.to_path_buf(), variable: variable.name.clone(), source };
        macro_rules! decode {
            ($t:ty) => {{
                let raw = {
                    let _timer = read_time.timer();
                    read_raw::<$t>(&var, extents, n).map_err(read_err)?
                };
                Ok(variable.packing.decode(&raw))
            }};
        }
        match variable.stored {
            StoredType::I8 => decode!(i8),
            StoredType::U8 => decode!(u8),
            StoredType::I16 => decode!(i16),
            StoredType::U16 => decode!(u16),
            StoredType::I32 => decode!(i32),
            StoredType::U32 => decode!(u32),
            StoredType::F32 => decode!(f32),
            StoredType::F64 => decode!(f64),
        }
    }
}

fn read_raw<T: RawSample>(var: &netcdf::Variable<'_>, extents: [Range<usize>; 3], n: usize) -> netcdf::Result<Vec<T>> {
    let _span = tracing::trace_span!("netcdf_read", variable = %var.name(), cells = n).entered();
    let mut raw = vec![T::default(); n];
    var.get_values_into(&mut raw, extents)?;
    Ok(raw)
}
