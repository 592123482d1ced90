//! Plain-float access to CPU tensors, for the passes that are cheaper as
//! one loop than as a chain of small tensor operations (AdamW, the
//! hyper-network's gradients).

use candle_core::{CpuStorage, Storage, Tensor};

use crate::error::{CandleContext, Result};

/// Runs `f` on a tensor's floats in row-major order: in place for
/// contiguous f32 CPU storage, on a copy otherwise (another device, dtype
/// or a strided view).
pub(crate) fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        return f(&values[start..end]);
    }
    drop(storage);
    let copy = t
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .ctx("reading a tensor on the host")?;
    f(&copy)
}
