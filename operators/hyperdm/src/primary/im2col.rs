//! 3×3, stride-1, zero-padded convolution as one batched GEMM over an
//! im2col matrix, NCHW throughout.
//!
//! candle 0.11's CPU conv2d first converts the input to NHWC and then fills
//! its columns one element at a time, per 512-pixel tile, with the GEMM of
//! each tile run inside the parallel tile loop. Here the columns are written
//! in one pass of row copies (each column row is the input plane shifted by
//! one tap) and the product is one GEMM per group of images (see
//! `COLUMN_BYTES`). The speed-up is measured
//! in the crate README (sampling benchmark). The op has a backward pass, so
//! training goes through it as well; off the CPU the caller keeps candle's
//! conv2d. 1×1 convolutions need no columns: [`conv1x1`] is one GEMM.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// `x` `[B, C, H, W]` → columns `[B, C·9, H·W]`; row `c·9 + 3·dy + dx`
/// holds `x[c, y + dy − 1, x + dx − 1]` (0 outside), matching a kernel
/// `[C_out, C, 3, 3]` reshaped to `[C_out, C·9]`.
struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col-3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, h, w) = layout.shape().dims4()?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("im2col needs a contiguous input".into()))?;
        let input = &storage.as_slice::<f32>()?[start..end];
        let plane = h * w;
        let mut out = vec![0f32; batch * channels * 9 * plane];
        for (bc, src) in input.chunks_exact(plane).enumerate() {
            let rows = &mut out[bc * 9 * plane..(bc + 1) * 9 * plane];
            for (tap, dst) in rows.chunks_exact_mut(plane).enumerate() {
                let (dy, dx) = (tap / 3, tap % 3);
                // Output columns x with x + dx − 1 inside [0, w).
                let (x0, x1) = (usize::from(dx == 0), w - usize::from(dx == 2));
                if x0 >= x1 {
                    continue;
                }
                for y in 0..h {
                    let Some(sy) = (y + dy).checked_sub(1).filter(|&sy| sy < h) else {
                        continue;
                    };
                    let s = sy * w + x0 + dx - 1;
                    dst[y * w + x0..y * w + x1].copy_from_slice(&src[s..s + (x1 - x0)]);
                }
            }
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, channels * 9, plane)),
        ))
    }

    /// Each tap's gradient goes back to the input shifted by that tap: the
    /// sum of the nine shifted planes (col2im).
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (batch, channels, h, w) = arg.dims4()?;
        let taps = grad_res.reshape((batch, channels, 9, h, w))?;
        let mut padded: Option<Tensor> = None;
        for tap in 0..9 {
            let (dy, dx) = (tap / 3, tap % 3);
            let g = taps
                .narrow(2, tap, 1)?
                .squeeze(2)?
                .pad_with_zeros(2, dy, 2 - dy)?
                .pad_with_zeros(3, dx, 2 - dx)?;
            padded = Some(match padded {
                Some(p) => (p + g)?,
                None => g,
            });
        }
        let padded = padded.ok_or_else(|| candle_core::Error::Msg("no taps".into()))?;
        Ok(Some(padded.narrow(2, 1, h)?.narrow(3, 1, w)?))
    }
}

/// `x` `[B, C_in, H, W]` (f32, CPU) ⊛ `kernel` `[C_out, C_in, 3, 3]`,
/// stride 1, padding 1, no bias → `[B, C_out, H, W]`.
pub fn conv3x3(x: &Tensor, kernel: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, cin, h, w) = x.dims4()?;
    let cout = kernel.dim(0)?;
    let kernel = kernel.reshape((cout, cin * 9))?;
    // Columns are 9× the input. Past glibc's largest mmap threshold (32 MiB)
    // every allocation maps fresh pages and faults them in, which took as
    // long as the GEMM itself, so images go through in groups of ≤ 8 MiB.
    let per_image = cin * 9 * h * w * std::mem::size_of::<f32>();
    let group = (COLUMN_BYTES / per_image.max(1)).clamp(1, batch.max(1));
    let x = x.contiguous()?;
    let mut outputs = Vec::with_capacity(batch.div_ceil(group));
    for start in (0..batch).step_by(group) {
        let images = group.min(batch - start);
        let columns = x.narrow(0, start, images)?.apply_op1(Im2Col3x3)?;
        outputs.push(kernel.broadcast_matmul(&columns)?);
    }
    Tensor::cat(&outputs, 0)?.reshape((batch, cout, h, w))
}

/// A 1×1 convolution (the U-Net's residual skips, attention's q/k/v and
/// output) as what it is, one GEMM per image: `[C_out, C_in] × [C_in, H·W]`.
/// No columns are needed; candle's conv2d would copy to NHWC and back.
pub fn conv1x1(x: &Tensor, kernel: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, cin, h, w) = x.dims4()?;
    let cout = kernel.dim(0)?;
    kernel
        .reshape((cout, cin))?
        .broadcast_matmul(&x.reshape((batch, cin, h * w))?)?
        .reshape((batch, cout, h, w))
}

/// The largest im2col matrix built at once.
const COLUMN_BYTES: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::gaussian;
    use candle_core::{Device, Var};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap()
    }

    /// Same values and same input and kernel gradients as candle's conv2d
    /// (float32 sums in another order: within 1e-4 on values of order 1),
    /// at sizes with odd and single-pixel sides, for both kernel sizes.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let shapes = [(2, 3, 5, 7, 9), (1, 16, 8, 4, 4), (3, 1, 2, 1, 6)];
        for (size, (batch, cin, cout, h, w)) in
            [3, 1].into_iter().flat_map(|k| shapes.map(|s| (k, s)))
        {
            let x =
                Var::from_tensor(&gaussian(&mut rng, &[batch, cin, h, w], &dev).unwrap()).unwrap();
            let k = gaussian(&mut rng, &[cout, cin, size, size], &dev).unwrap();
            let k = Var::from_tensor(&k.affine(0.3, 0.0).unwrap()).unwrap();
            let weights = gaussian(&mut rng, &[batch, cout, h, w], &dev).unwrap();
            let (ours, theirs) = if size == 3 {
                (conv3x3(&x, &k).unwrap(), x.conv2d(&k, 1, 1, 1, 1).unwrap())
            } else {
                (conv1x1(&x, &k).unwrap(), x.conv2d(&k, 0, 1, 1, 1).unwrap())
            };
            assert_eq!(ours.dims(), theirs.dims());
            assert!(largest_difference(&ours, &theirs) < 1e-4);
            let grads = |y: &Tensor| {
                let g = (y * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                (g.get(&x).unwrap().clone(), g.get(&k).unwrap().clone())
            };
            let ((gx, gk), (hx, hk)) = (grads(&ours), grads(&theirs));
            assert!(largest_difference(&gx, &hx) < 1e-4, "input gradient");
            assert!(largest_difference(&gk, &hk) < 1e-3, "kernel gradient");
        }
    }
}
