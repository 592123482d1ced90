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
    // A training minibatch has far more rows than there are steps: embed
    // each step once and copy its row (the same floats either way).
    let data = if steps.len() > total && steps.iter().all(|&t| t < total) {
        let table = embed((0..total).collect::<Vec<_>>().as_slice(), total, dim);
        let mut data = Vec::with_capacity(steps.len() * dim);
        for &t in steps {
            data.extend_from_slice(&table[t * dim..(t + 1) * dim]);
        }
        data
    } else {
        embed(steps, total, dim)
    };
    Tensor::from_vec(data, (steps.len(), dim), device).ctx("timestep embedding")
}

/// The embedding of each step, row after row.
fn embed(steps: &[usize], total: usize, dim: usize) -> Vec<f32> {
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
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many rows (embedded once per step and copied) and few rows (embedded
    /// one by one) give the same floats, odd widths included; t/T = ½ at
    /// the first octave is sin(π/2) = 1, cos(π/2) = 0.
    #[test]
    fn many_rows_embed_as_few_do() {
        let total = 10;
        for dim in [16, 7] {
            let steps: Vec<usize> = (0..40).map(|i| (i * 7 + 3) % total).collect();
            let many = timestep_embedding(&steps, total, dim, &Device::Cpu).unwrap();
            assert_eq!(many.dims(), [40, dim]);
            let many: Vec<Vec<f32>> = many.to_vec2().unwrap();
            for (row, &t) in many.iter().zip(&steps) {
                let one = timestep_embedding(&[t], total, dim, &Device::Cpu).unwrap();
                assert_eq!(
                    row,
                    &one.to_vec2::<f32>().unwrap()[0],
                    "step {t}, dim {dim}"
                );
            }
            let half = dim / 2;
            let mid = &many[steps.iter().position(|&t| t == 5).unwrap()];
            assert!(
                (mid[0] - 1.0).abs() < 1e-7 && mid[half].abs() < 1e-7,
                "{mid:?}"
            );
        }
    }
}
