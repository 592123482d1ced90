//! What the CPU custom ops (the bias, ReLU and fused sampling passes) read
//! their inputs through.

use candle_core::{CpuStorage, Layout};

/// A contiguous f32 CPU storage's values; an error naming `op` otherwise.
pub(super) fn f32_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op} needs contiguous inputs")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}
