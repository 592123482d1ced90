//! The paper's toy problem: x = sin(y) + η, η ~ N(0, σ²), y ~ U(−5, 5).
//!
//! The true aleatoric variance is σ² everywhere; epistemic variance should
//! fall as the training set grows and rise where y was never seen.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

use crate::error::{CandleContext, Result};
use crate::hyper::HyperConfig;
use crate::model::{HyperDm, Progress, TrainConfig, TrainingData};
use crate::optim::AdamWConfig;
use crate::primary::{MlpConfig, PrimaryMlp};
use crate::sampler::Sampler;
use crate::schedule::{DiffusionConfig, Prediction, ScheduleKind};

/// y is fed to the network divided by this, so the condition lies in [−1, 1].
const Y_SCALE: f32 = 5.0;

/// `TrainConfig::anchor` is the prior's weight for a training set of this
/// many pairs. A prior counts once for the whole data set, so in a loss
/// averaged over pairs its weight falls as 1/|D|: `run` scales it by
/// `PRIOR_REFERENCE_PAIRS / |D|`. Without that, the anchor outweighs the
/// data by the same factor whatever the data size, and EU cannot shrink as
/// data grow.
pub const PRIOR_REFERENCE_PAIRS: usize = 500;

/// A toy training set.
#[derive(Debug, Clone)]
pub struct ToyData {
    pub y: Vec<f32>,
    pub x: Vec<f32>,
}

impl ToyData {
    /// `n` pairs; y avoids the open band `gap` when given.
    pub fn generate(n: usize, sigma2: f64, gap: Option<(f64, f64)>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut y, mut x) = (Vec::with_capacity(n), Vec::with_capacity(n));
        while y.len() < n {
            let v: f64 = rng.random_range(-5.0..5.0);
            if gap.is_some_and(|(lo, hi)| v > lo && v < hi) {
                continue;
            }
            let noise: f64 = rng.sample(StandardNormal);
            y.push(v as f32);
            x.push((v.sin() + sigma2.sqrt() * noise) as f32);
        }
        Self { y, x }
    }
}

impl TrainingData for ToyData {
    fn len(&self) -> usize {
        self.y.len()
    }

    fn batch(&self, rows: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let x: Vec<f32> = rows.iter().map(|&r| self.x[r]).collect();
        let y: Vec<f32> = rows.iter().map(|&r| self.y[r] / Y_SCALE).collect();
        Ok((
            Tensor::from_vec(x, (rows.len(), 1), device).ctx("toy batch")?,
            Tensor::from_vec(y, (rows.len(), 1), device).ctx("toy batch")?,
        ))
    }
}

/// Everything a toy run needs.
#[derive(Debug, Clone)]
pub struct ToySettings {
    pub hyper: HyperConfig,
    pub mlp: MlpConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub members: usize,
    pub samples: usize,
    pub sampler: Sampler,
}

impl Default for ToySettings {
    fn default() -> Self {
        Self {
            // Anchored training through a z skip: see `PRIOR_REFERENCE_PAIRS`
            // and the crate README's toy table for the measurements.
            hyper: HyperConfig {
                z_skip: true,
                ..HyperConfig::default()
            },
            mlp: MlpConfig::default(),
            // v-prediction on a log-SNR schedule: see the crate README for the
            // measurements (ε with log-SNR does not learn; linear β under-states
            // small variances; x₀ collapses them).
            diffusion: DiffusionConfig {
                schedule: ScheduleKind::LogSnr,
                prediction: Prediction::V,
                ..DiffusionConfig::default()
            },
            train: TrainConfig {
                iterations: 12_000,
                batch_size: 256,
                z_per_step: 1,
                antithetic: true,
                optimizer: AdamWConfig {
                    lr: 3e-3,
                    ..AdamWConfig::default()
                },
                final_lr_fraction: 0.02,
                seed: 0,
                anchor: 0.003,
            },
            members: 10,
            samples: 1000,
            sampler: Sampler::Ddim { steps: 100 },
        }
    }
}

/// Per-test-point results of one trained model.
#[derive(Debug, Clone, Serialize)]
pub struct ToyOutcome {
    pub test_y: Vec<f64>,
    pub mean: Vec<f64>,
    pub au: Vec<f64>,
    pub eu: Vec<f64>,
    pub train_seconds: f64,
    pub sample_seconds: f64,
}

impl ToyOutcome {
    /// Mean of `values` over test points whose y satisfies `keep`.
    pub fn average(&self, values: &[f64], keep: impl Fn(f64) -> bool) -> f64 {
        let picked: Vec<f64> = self
            .test_y
            .iter()
            .zip(values)
            .filter(|(y, _)| keep(**y))
            .map(|(_, v)| *v)
            .collect();
        picked.iter().sum::<f64>() / picked.len().max(1) as f64
    }
}

/// Evenly spaced test points in [lo, hi].
pub fn grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1).max(1) as f64)
        .collect()
}

/// Trains on `data` and predicts at `test_y`.
pub fn run(
    data: &ToyData,
    settings: &ToySettings,
    test_y: &[f64],
    device: &Device,
    progress: impl FnMut(Progress),
) -> Result<ToyOutcome> {
    let mlp = MlpConfig {
        steps: settings.diffusion.steps,
        ..settings.mlp.clone()
    };
    let model = HyperDm::new(
        PrimaryMlp::new(&mlp),
        &settings.hyper,
        &settings.diffusion,
        device,
        settings.train.seed,
    )?;
    let mut optimizer = model.optimizer(&settings.train.optimizer);
    let train = TrainConfig {
        anchor: settings.train.anchor * PRIOR_REFERENCE_PAIRS as f64 / data.len().max(1) as f64,
        ..settings.train.clone()
    };
    let started = Instant::now();
    model.fit(data, &train, &mut optimizer, progress)?;
    let train_seconds = started.elapsed().as_secs_f64();

    let cond: Vec<f32> = test_y.iter().map(|&y| y as f32 / Y_SCALE).collect();
    let cond = Tensor::from_vec(cond, (test_y.len(), 1), device).ctx("toy test points")?;
    let started = Instant::now();
    let m = model.predict(
        &cond,
        settings.members,
        settings.samples,
        settings.sampler,
        settings.train.seed ^ 0x5eed,
    )?;
    let sample_seconds = started.elapsed().as_secs_f64();
    let flat = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .ctx("toy results")?
            .into_iter()
            .map(f64::from)
            .collect())
    };
    Ok(ToyOutcome {
        test_y: test_y.to_vec(),
        mean: flat(&m.mean)?,
        au: flat(&m.au)?,
        eu: flat(&m.eu)?,
        train_seconds,
        sample_seconds,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A short run must tell two noise levels apart: AU tracks σ².
    #[test]
    fn au_tracks_the_noise_level() {
        au_tracks_the_noise_level_on(&Device::Cpu);
    }

    /// The check of `au_tracks_the_noise_level` on `device` (the GPU tests
    /// run it too).
    pub(crate) fn au_tracks_the_noise_level_on(device: &Device) {
        let mut settings = ToySettings {
            samples: 200,
            members: 3,
            ..ToySettings::default()
        };
        settings.train.iterations = 1500;
        // The anchor and the z skip slow the fit (Adam moves every skip entry
        // by about the learning rate from the first step): 1,500 steps are
        // enough for the plain objective only (antithetic pairs halve the
        // rows each z sees, which also slows a run this short).
        settings.train.anchor = 0.0;
        settings.hyper.z_skip = false;
        settings.train.antithetic = false;
        let test_y = grid(-4.0, 4.0, 9);
        let au = |sigma2| {
            let data = ToyData::generate(500, sigma2, None, 1);
            let out = run(&data, &settings, &test_y, device, |_| {}).unwrap();
            out.average(&out.au, |_| true)
        };
        let (low, high) = (au(0.01), au(0.25));
        // True ratio 25; a short run (1,500 steps) must get at least 5×. It
        // over-states small σ² (narrow distributions need longer training:
        // the 12,000-step default lands within 10%), so the low bound is 4×.
        assert!(high > 5.0 * low, "AU {low} at σ²=0.01 vs {high} at σ²=0.25");
        assert!((0.125..0.5).contains(&high), "AU {high} at σ²=0.25");
        assert!((0.005..0.04).contains(&low), "AU {low} at σ²=0.01");
    }

    /// Anchored training with the z skip keeps the generated networks apart
    /// where the data say nothing: EU inside a left-out band of y is many
    /// times EU where the data are (the `toy gap` acceptance asks ≥ 10×).
    #[test]
    fn anchored_members_disagree_inside_a_gap() {
        let mut settings = ToySettings {
            samples: 64,
            members: 8,
            sampler: Sampler::Ddim { steps: 50 },
            ..ToySettings::default()
        };
        settings.train.iterations = 5000;
        let data = ToyData::generate(500, 0.01, Some((-1.5, 1.5)), 0);
        let test_y = grid(-4.5, 4.5, 37);
        let out = run(&data, &settings, &test_y, &Device::Cpu, |_| {}).unwrap();
        let inside = out.average(&out.eu, |y| y.abs() > 2.0);
        let gap = out.average(&out.eu, |y| y.abs() < 1.0);
        assert!(
            gap > 10.0 * inside,
            "EU {gap} in the gap vs {inside} in the data"
        );
    }

    #[test]
    fn gap_leaves_a_hole() {
        let d = ToyData::generate(300, 0.01, Some((-1.0, 1.0)), 2);
        assert!(
            d.y.iter()
                .all(|y| !(-1.0..=1.0).contains(y) || *y == -1.0 || *y == 1.0)
        );
        assert_eq!(d.len(), 300);
    }
}
