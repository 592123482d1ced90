//! `HyperDm`: a hyper-network that generates a conditional diffusion model.
//!
//! Training updates only the hyper-network θ: per step, z ~ N(0, I) is drawn
//! (one z per minibatch, as the reference code; `z_per_step > 1` splits the
//! minibatch between several draws), φ = h_θ(z) is sliced into the primary
//! network's tensors, and the denoising loss back-propagates into θ.
//!
//! Inference: M draws of z, each generating its weights once, each running N
//! samples of every condition as one batch; moments are accumulated member by
//! member ([`crate::moments`]).
//!
//! Members share their diffusion noise (common random numbers): member i and
//! member k start from the same x_T and see the same sampler noise; only z
//! differs. Each member's mean still converges to its own, but the Monte
//! Carlo error common to all members cancels in Var_i[E_j]. With independent
//! noise EU cannot fall below AU/N (≈ 1e-5 for the toy at N = 1,000), which
//! hides the actual disagreement between networks.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, HyperdmError, Result};
use crate::hyper::{HyperConfig, HyperNetwork};
use crate::moments::{MomentAccumulator, Moments};
use crate::optim::{AdamW, AdamWConfig};
use crate::primary::PrimaryNetwork;
use crate::sampler::{Sampler, gaussian, sample};
use crate::schedule::{DiffusionConfig, Prediction, Schedule};

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub iterations: u64,
    pub batch_size: usize,
    /// z draws per minibatch (1: the reference code's choice).
    pub z_per_step: usize,
    pub optimizer: AdamWConfig,
    /// The learning rate decays (cosine) to this fraction of `optimizer.lr`.
    pub final_lr_fraction: f64,
    pub seed: u64,
    /// Pull of each generated network toward its own random anchor (0: off).
    /// See [`HyperDm::loss`].
    #[serde(default)]
    pub anchor: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            iterations: 4000,
            batch_size: 128,
            z_per_step: 1,
            optimizer: AdamWConfig::default(),
            final_lr_fraction: 0.05,
            seed: 0,
            anchor: 0.0,
        }
    }
}

/// A training set the model can draw minibatches from.
pub trait TrainingData {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The (x₀, condition) tensors of the given rows.
    fn batch(&self, rows: &[usize], device: &Device) -> Result<(Tensor, Tensor)>;
}

/// Reported every so often while training.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub iteration: u64,
    pub iterations: u64,
    pub loss: f32,
    pub elapsed_seconds: f64,
}

/// The variables of `varmap` with their names, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let data = match varmap.data().lock() {
        Ok(d) => d,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The model: hyper-network, primary network, schedule and parameters.
pub struct HyperDm<P: PrimaryNetwork> {
    pub primary: P,
    pub hyper: HyperNetwork,
    pub hyper_config: HyperConfig,
    pub diffusion: DiffusionConfig,
    pub schedule: Schedule,
    pub varmap: VarMap,
    pub device: Device,
}

impl<P: PrimaryNetwork + std::fmt::Debug> std::fmt::Debug for HyperDm<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperDm")
            .field("primary", &self.primary)
            .field("hyper", &self.hyper_config)
            .field("diffusion", &self.diffusion)
            .field("parameters", &self.parameter_count())
            .finish()
    }
}

impl<P: PrimaryNetwork> HyperDm<P> {
    /// Builds the model with seeded initial weights (uniform ±1/√fan_in).
    pub fn new(
        primary: P,
        hyper_config: &HyperConfig,
        diffusion: &DiffusionConfig,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let hyper = HyperNetwork::new(vb.pp("hyper"), hyper_config, primary.layout().total())?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, var) in named_vars(&varmap) {
            let dims = var.dims().to_vec();
            let fan_in = if name.ends_with("weight") {
                dims.last().copied().unwrap_or(1)
            } else {
                dims[0].max(1)
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            var.set(&Tensor::from_vec(values, dims, device).ctx("initialising")?)
                .ctx("initialising")?;
        }
        Ok(Self {
            primary,
            hyper,
            hyper_config: hyper_config.clone(),
            diffusion: diffusion.clone(),
            schedule: Schedule::new(diffusion),
            varmap,
            device: device.clone(),
        })
    }

    /// Trainable parameters (the hyper-network only).
    pub fn parameter_count(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// An optimiser over this model's variables.
    pub fn optimizer(&self, config: &AdamWConfig) -> AdamW {
        AdamW::new(named_vars(&self.varmap), config.clone())
    }

    /// The fixed random map z ↦ A·z of anchored training: A `[z_dim, P]`
    /// with N(0, 1/z_dim) entries, so each anchor parameter is N(0, 1) over z
    /// (the standardised scale the layout's gains turn into weights).
    pub fn anchor_map(&self, seed: u64) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::MAX - 1);
        let z_dim = self.hyper.z_dim();
        gaussian(
            &mut rng,
            &[z_dim, self.primary.layout().total()],
            &self.device,
        )?
        .affine(1.0 / (z_dim as f64).sqrt(), 0.0)
        .ctx("anchor map")
    }

    /// The denoising loss of one minibatch for `z_per_step` weight draws.
    ///
    /// With `anchor = Some((A, λ))` the loss adds λ·mean((φ(z) − A·z)²):
    /// anchored ensembling (Pearce et al., 2020) across z. Where the data
    /// pin a network down, every z fits them alike; where they do not (away
    /// from the training inputs), each network stays near its own random
    /// anchor, so the members keep disagreeing there. Without it the
    /// hyper-network learns to ignore z and EU collapses everywhere.
    pub fn loss(
        &self,
        x0: &Tensor,
        cond: &Tensor,
        z_per_step: usize,
        anchor: Option<(&Tensor, f64)>,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let batch = x0.dim(0).ctx("loss")?;
        let draws = z_per_step.clamp(1, batch);
        let z = gaussian(rng, &[draws, self.hyper.z_dim()], &self.device)?;
        let flat = self.hyper.forward(&z)?;
        let mut total: Option<Tensor> = match anchor {
            Some((map, weight)) if weight > 0.0 => Some(
                (flat.clone() - z.matmul(map).ctx("anchor")?)
                    .and_then(|d| d.sqr())
                    .and_then(|d| d.mean_all())
                    .and_then(|d| d.affine(weight * draws as f64, 0.0))
                    .ctx("anchor")?,
            ),
            _ => None,
        };
        for d in 0..draws {
            let (start, end) = (d * batch / draws, (d + 1) * batch / draws);
            let (x0, cond) = (
                x0.narrow(0, start, end - start).ctx("loss")?,
                cond.narrow(0, start, end - start).ctx("loss")?,
            );
            let params = self.primary.layout().slice(&flat.get(d).ctx("loss")?)?;
            let steps: Vec<usize> = (0..end - start)
                .map(|_| rng.random_range(0..self.schedule.steps()))
                .collect();
            let eps = gaussian(rng, x0.dims(), &self.device)?;
            let mut bshape = vec![1; x0.rank()];
            bshape[0] = steps.len();
            let sa: Vec<f32> = steps
                .iter()
                .map(|&t| self.schedule.alpha_bars[t].sqrt() as f32)
                .collect();
            let sb: Vec<f32> = steps
                .iter()
                .map(|&t| (1.0 - self.schedule.alpha_bars[t]).sqrt() as f32)
                .collect();
            let sa = Tensor::from_vec(sa, bshape.as_slice(), &self.device).ctx("loss")?;
            let sb = Tensor::from_vec(sb, bshape.as_slice(), &self.device).ctx("loss")?;
            let x_t = (x0.broadcast_mul(&sa).ctx("loss")? + eps.broadcast_mul(&sb).ctx("loss")?)
                .ctx("loss")?;
            let out = self.primary.forward(&params, &x_t, &steps, &cond)?;
            let target = match self.diffusion.prediction {
                Prediction::Epsilon => eps,
                Prediction::X0 => x0,
                Prediction::V => (eps.broadcast_mul(&sa).ctx("loss")?
                    - x0.broadcast_mul(&sb).ctx("loss")?)
                .ctx("loss")?,
            };
            let l = (out - target)
                .and_then(|d| d.sqr())
                .and_then(|d| d.mean_all())
                .ctx("loss")?;
            total = Some(match total {
                Some(t) => (t + l).ctx("loss")?,
                None => l,
            });
        }
        let total = total.ok_or(HyperdmError::Config {
            field: "batch_size",
            problem: "empty minibatch".into(),
        })?;
        total.affine(1.0 / draws as f64, 0.0).ctx("loss")
    }

    /// Trains from `optimizer.step` up to `config.iterations`. Step k uses the
    /// random stream k of `config.seed`, so a resumed run repeats exactly.
    pub fn fit(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        optimizer: &mut AdamW,
        progress: impl FnMut(Progress),
    ) -> Result<()> {
        self.fit_until(data, config, optimizer, config.iterations, progress)
    }

    /// As [`HyperDm::fit`], but stops after update `stop` (for checkpointing
    /// part-way: the learning-rate schedule still follows `config.iterations`).
    pub fn fit_until(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        optimizer: &mut AdamW,
        stop: u64,
        mut progress: impl FnMut(Progress),
    ) -> Result<()> {
        if data.is_empty() || config.batch_size == 0 {
            return Err(HyperdmError::Config {
                field: "train",
                problem: "needs data and batch_size > 0".into(),
            });
        }
        let anchor = if config.anchor > 0.0 {
            Some(self.anchor_map(config.seed)?)
        } else {
            None
        };
        let started = Instant::now();
        let report_every = (config.iterations / 20).max(1);
        while optimizer.step < config.iterations.min(stop) {
            let k = optimizer.step;
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            rng.set_stream(k);
            let rows: Vec<usize> = (0..config.batch_size)
                .map(|_| rng.random_range(0..data.len()))
                .collect();
            let (x0, cond) = data.batch(&rows, &self.device)?;
            let loss = self.loss(
                &x0,
                &cond,
                config.z_per_step,
                anchor.as_ref().map(|a| (a, config.anchor)),
                &mut rng,
            )?;
            let progress_fraction = k as f64 / config.iterations.max(1) as f64;
            let floor = config.final_lr_fraction;
            let lr = config.optimizer.lr
                * (floor
                    + (1.0 - floor)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress_fraction).cos()));
            optimizer.step(&loss, lr)?;
            if optimizer.step.is_multiple_of(report_every) || optimizer.step == config.iterations {
                progress(Progress {
                    iteration: optimizer.step,
                    iterations: config.iterations,
                    loss: loss.to_scalar::<f32>().ctx("loss")?,
                    elapsed_seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        Ok(())
    }

    /// Draws `members` weight sets and `samples` predictions per member for
    /// every condition in `cond` (`[C, ...]`); returns per-element moments
    /// with shape `[C, ...sample]`.
    pub fn predict(
        &self,
        cond: &Tensor,
        members: usize,
        samples: usize,
        sampler: Sampler,
        seed: u64,
    ) -> Result<Moments> {
        self.predict_seeded(cond, members, samples, sampler, seed, seed)
    }

    /// As [`HyperDm::predict`], with the weight draws (z) and the diffusion
    /// noise seeded apart: conditions predicted in several calls (chunks of
    /// a field) must share `weight_seed` to see the same M networks, while
    /// each call takes its own `noise_seed`.
    pub fn predict_seeded(
        &self,
        cond: &Tensor,
        members: usize,
        samples: usize,
        sampler: Sampler,
        weight_seed: u64,
        noise_seed: u64,
    ) -> Result<Moments> {
        let conditions = cond.dim(0).ctx("predict")?;
        let sample_shape = self.sample_shape(cond)?;
        let repeated = Tensor::cat(&vec![cond; samples], 0).ctx("predict")?;
        let mut acc = MomentAccumulator::default();
        let mut shared_noise = ChaCha8Rng::seed_from_u64(noise_seed);
        shared_noise.set_stream(u64::MAX);
        for member in 0..members {
            let mut z_rng = ChaCha8Rng::seed_from_u64(weight_seed);
            z_rng.set_stream(member as u64);
            let z = gaussian(&mut z_rng, &[1, self.hyper.z_dim()], &self.device)?;
            let mut rng = shared_noise.clone();
            // Weights are generated once per member and detached: no graph is kept.
            let flat = self.hyper.forward(&z)?.detach().squeeze(0).ctx("predict")?;
            let params = self.primary.layout().slice(&flat)?;
            let mut shape = vec![samples * conditions];
            shape.extend_from_slice(&sample_shape);
            let x_t = gaussian(&mut rng, &shape, &self.device)?;
            let x0 = sample(&self.schedule, sampler, x_t, &mut rng, |x, t| {
                self.primary
                    .forward(&params, x, &vec![t; samples * conditions], &repeated)
            })?;
            let mut per = vec![samples, conditions];
            per.extend_from_slice(&sample_shape);
            acc.push(&x0.reshape(per).ctx("predict")?)?;
        }
        acc.finish()
    }

    /// The shape of one sample for these conditions (without the batch axis).
    fn sample_shape(&self, cond: &Tensor) -> Result<Vec<usize>> {
        let one = cond.narrow(0, 0, 1).ctx("predict")?;
        Ok(self.primary.sample_input_like(&one)?.dims()[1..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::{MlpConfig, PrimaryMlp, PrimaryUnet, UnetConfig};
    use crate::toy::ToyData;

    fn toy_model() -> HyperDm<PrimaryMlp> {
        let mlp = MlpConfig {
            hidden: vec![8, 8],
            ..MlpConfig::default()
        };
        HyperDm::new(
            PrimaryMlp::new(&mlp),
            &HyperConfig::default(),
            &DiffusionConfig::default(),
            &Device::Cpu,
            3,
        )
        .unwrap()
    }

    /// Every hyper-network tensor gets a non-zero gradient; the primary
    /// network has no variables at all (its weights are generated).
    #[test]
    fn gradient_reaches_every_hyper_parameter_only() {
        let model = toy_model();
        let data = ToyData::generate(64, 0.01, None, 1);
        let (x0, cond) = data
            .batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu)
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let loss = model.loss(&x0, &cond, 2, None, &mut rng).unwrap();
        let grads = loss.backward().unwrap();
        let vars = named_vars(&model.varmap);
        assert!(
            vars.iter().all(|(name, _)| name.starts_with("hyper.")),
            "only hyper-network variables exist"
        );
        assert_eq!(vars.len(), 2 * (HyperConfig::default().hidden.len() + 1));
        for (name, var) in &vars {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }

    /// A few hundred steps must lower the loss on a fixed evaluation batch.
    #[test]
    fn training_lowers_the_loss() {
        let model = toy_model();
        let data = ToyData::generate(256, 0.01, None, 1);
        let eval = |m: &HyperDm<PrimaryMlp>| {
            let (x0, cond) = data
                .batch(&(0..256).collect::<Vec<_>>(), &Device::Cpu)
                .unwrap();
            let mut total = 0.0;
            for s in 0..8 {
                let mut rng = ChaCha8Rng::seed_from_u64(100 + s);
                total += m
                    .loss(&x0, &cond, 1, None, &mut rng)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            }
            total / 8.0
        };
        let before = eval(&model);
        let config = TrainConfig {
            iterations: 400,
            ..TrainConfig::default()
        };
        let mut opt = model.optimizer(&config.optimizer);
        model.fit(&data, &config, &mut opt, |_| {}).unwrap();
        let after = eval(&model);
        assert!(after < 0.7 * before, "loss {before} → {after}");
    }

    /// Identical members give EU = 0 exactly: with shared noise nothing but
    /// the weights can make members differ.
    #[test]
    fn eu_measures_weights_not_monte_carlo_noise() {
        let model = toy_model();
        let cond = Tensor::new(&[[0.1f32], [-0.5]], &Device::Cpu).unwrap();
        // Zero z-weights: every draw of z generates the same network.
        for (name, var) in named_vars(&model.varmap) {
            if name.starts_with("hyper.hidden0.weight") {
                var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
            }
        }
        let m = model.predict(&cond, 4, 50, Sampler::Ddpm, 7).unwrap();
        let eu: Vec<f32> = m.eu.flatten_all().unwrap().to_vec1().unwrap();
        let au: Vec<f32> = m.au.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            eu.iter().all(|&e| e < 1e-10),
            "EU {eu:?} for identical members"
        );
        assert!(au.iter().all(|&a| a > 1e-4), "AU {au:?}");
    }

    /// The U-Net keeps any input size, odd ones included (padding inside).
    #[test]
    fn unet_forward_at_odd_sizes_returns_the_input_size() {
        let unet = PrimaryUnet::new(&UnetConfig {
            base: 8,
            mults: vec![1, 2, 4],
            ..UnetConfig::default()
        })
        .unwrap();
        let model = HyperDm::new(
            unet,
            &HyperConfig {
                z_dim: 4,
                hidden: vec![4],
            },
            &DiffusionConfig::default(),
            &Device::Cpu,
            1,
        )
        .unwrap();
        let flat = model
            .hyper
            .forward(&Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let params = model.primary.layout().slice(&flat).unwrap();
        for (h, w) in [(7, 9), (13, 5), (16, 16), (1, 3)] {
            let x = Tensor::randn(0f32, 1.0, (2, 1, h, w), &Device::Cpu).unwrap();
            let out = model.primary.forward(&params, &x, &[3, 50], &x).unwrap();
            assert_eq!(out.dims(), &[2, 1, h, w]);
            let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|a| a.is_finite()));
        }
        let wrong = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(
            model
                .primary
                .forward(&params, &wrong, &[0], &wrong)
                .is_err(),
            "wrong channel count is an error"
        );
    }
}
