//! Sinusoidal embedding of the diffusion step.

use candle_core::{Device, Tensor};

use crate::error::{CandleContext, Result};

/// `[B]` step indices → `[B, dim]` features: sin/cos of t/T at octave frequencies.
pub fn timestep_embedding(
    steps: &[usize],
    total: usize,
    dim: usize,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let mut data = Vec::with_capacity(steps.len() * dim);
    for &t in steps {
        let x = t as f64 / total.max(1) as f64;
        for k in 0..half {
            data.push((x * std::f64::consts::PI * (1u64 << k.min(20)) as f64).sin() as f32);
        }
        for k in 0..half {
            data.push((x * std::f64::consts::PI * (1u64 << k.min(20)) as f64).cos() as f32);
        }
        if dim % 2 == 1 {
            data.push(x as f32);
        }
    }
    Tensor::from_vec(data, (steps.len(), dim), device).ctx("timestep embedding")
}
