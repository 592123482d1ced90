//! Spatially smooth Gaussian noise with exactly unit variance in every cell.
//!
//! White N(0, 1) noise is smoothed by a separable Gaussian kernel; near the
//! edges fewer neighbours contribute, so each cell is divided by the exact
//! standard deviation of its own weighted sum. Per-cell variance is then 1 by
//! construction, which keeps the innovation-variance map an exact truth.

use rand::Rng;
use rand_distr::StandardNormal;

/// A reusable smoother for one grid shape.
#[derive(Debug, Clone)]
pub struct SmoothNoise {
    rows: usize,
    cols: usize,
    kernel: Vec<f64>,
    /// 1 / sqrt(Σ w²) over the valid taps, per row and per column.
    row_norm: Vec<f64>,
    col_norm: Vec<f64>,
}

impl SmoothNoise {
    /// `radius`: kernel half-width in cells (σ = radius / 2).
    pub fn new(rows: usize, cols: usize, radius: usize) -> Self {
        let sigma = (radius.max(1) as f64) / 2.0;
        let kernel: Vec<f64> = (-(radius as isize)..=radius as isize)
            .map(|d| (-(d as f64).powi(2) / (2.0 * sigma * sigma)).exp())
            .collect();
        let norms = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    let s: f64 = kernel
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| (i + k).checked_sub(radius).is_some_and(|j| j < n))
                        .map(|(_, w)| w * w)
                        .sum();
                    1.0 / s.sqrt()
                })
                .collect()
        };
        Self {
            rows,
            cols,
            row_norm: norms(rows),
            col_norm: norms(cols),
            kernel,
        }
    }

    /// One field of smooth unit-variance noise, row-major.
    pub fn sample(&self, rng: &mut impl Rng) -> Vec<f64> {
        let (rows, cols) = (self.rows, self.cols);
        let white: Vec<f64> = (0..rows * cols)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        let r = self.kernel.len() / 2;
        let mut along = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let mut s = 0.0;
                for (k, w) in self.kernel.iter().enumerate() {
                    if let Some(jj) = (j + k).checked_sub(r).filter(|&jj| jj < cols) {
                        s += w * white[i * cols + jj];
                    }
                }
                along[i * cols + j] = s;
            }
        }
        let mut out = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let mut s = 0.0;
                for (k, w) in self.kernel.iter().enumerate() {
                    if let Some(ii) = (i + k).checked_sub(r).filter(|&ii| ii < rows) {
                        s += w * along[ii * cols + j];
                    }
                }
                out[i * cols + j] = s * self.row_norm[i] * self.col_norm[j];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn unit_variance_everywhere_including_edges() {
        let noise = SmoothNoise::new(6, 9, 3);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 4000;
        let mut sum2 = vec![0.0; 54];
        for _ in 0..n {
            for (a, x) in sum2.iter_mut().zip(noise.sample(&mut rng)) {
                *a += x * x;
            }
        }
        // Sample variance of 4000 draws: standard error ≈ sqrt(2/4000) ≈ 0.022; allow 5σ.
        for (cell, s) in sum2.iter().enumerate() {
            let var = s / n as f64;
            assert!((var - 1.0).abs() < 0.11, "cell {cell}: variance {var}");
        }
    }

    #[test]
    fn neighbours_are_correlated() {
        let noise = SmoothNoise::new(1, 200, 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let x = noise.sample(&mut rng);
        let lag1: f64 = x.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / 199.0;
        assert!(lag1 > 0.6, "lag-1 correlation {lag1}");
    }
}
