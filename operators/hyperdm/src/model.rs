//! `HyperDm`: a hyper-network that generates a conditional diffusion model.
//!
//! Training updates only the hyper-network θ: per step, z ~ N(0, I) is drawn
//! (one z per minibatch, as the reference code; `z_per_step > 1` splits the
//! minibatch between several draws; `antithetic` pairs each z with −z on
//! shared rows and noise), φ = h_θ(z) is sliced into the primary
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

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, HyperdmError, Result};
use crate::hyper::{HyperConfig, HyperForm, HyperNetwork};
use crate::layout::Params;
use crate::method::Method;
use crate::moments::{MomentAccumulator, Moments};
use crate::optim::{AdamW, AdamWConfig};
use crate::primary::PrimaryNetwork;
use crate::sampler::{Sampler, gaussian, sample};
use crate::schedule::{DiffusionConfig, Prediction, Schedule};
use rayon::prelude::*;

mod networks_side_by_side;
mod rows_side_by_side;
mod side_by_side;

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub iterations: u64,
    pub batch_size: usize,
    /// z draws per minibatch (1: the reference code's choice).
    pub z_per_step: usize,
    /// Each draw z is paired with −z on the same rows, steps and noise
    /// (half the rows each, so the cost is unchanged). See [`HyperDm::loss`].
    #[serde(default)]
    pub antithetic: bool,
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
            antithetic: false,
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

/// Where the members' weights live (see [`Method`]).
#[derive(Debug, Clone)]
pub enum WeightSource {
    /// HyperDM: φ = h_θ(z), only θ is trained.
    Hyper(HyperNetwork),
    /// The baselines: one trained flat parameter vector per ensemble member,
    /// or the single one MC-Dropout masks.
    Direct(Vec<Var>),
}

/// The model: weight source, primary network, schedule and parameters.
/// HyperDM and its baselines ([`Method`]) share this type: they differ only
/// in where a member's weights come from.
pub struct HyperDm<P: PrimaryNetwork> {
    pub primary: P,
    pub method: Method,
    pub weights: WeightSource,
    pub hyper_config: HyperConfig,
    pub diffusion: DiffusionConfig,
    pub schedule: Schedule,
    pub varmap: VarMap,
    pub device: Device,
}

impl<P: PrimaryNetwork + std::fmt::Debug> std::fmt::Debug for HyperDm<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperDm")
            .field("method", &self.method)
            .field("primary", &self.primary)
            .field("hyper", &self.hyper_config)
            .field("diffusion", &self.diffusion)
            .field("parameters", &self.parameter_count())
            .finish()
    }
}

impl<P: PrimaryNetwork> HyperDm<P> {
    /// A HyperDM model with seeded initial weights (see [`HyperDm::with_method`]).
    pub fn new(
        primary: P,
        hyper_config: &HyperConfig,
        diffusion: &DiffusionConfig,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        Self::with_method(
            primary,
            Method::Hyperdm,
            hyper_config,
            diffusion,
            device,
            seed,
        )
    }

    /// Builds the model for `method` with seeded initial weights: the
    /// hyper-network's layers uniform ±1/√fan_in (times
    /// [`HyperConfig::z_init`] for those that carry z); a baseline's flat vectors
    /// uniform ±1 scaled by the layout's gains (each weight ±1/√fan_in, each
    /// bias ±0.1) and stored scaled, like an ordinary network's; every
    /// ensemble member its own draw.
    pub fn with_method(
        primary: P,
        method: Method,
        hyper_config: &HyperConfig,
        diffusion: &DiffusionConfig,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let method = method.validated()?;
        if !(hyper_config.z_init.is_finite() && hyper_config.z_init >= 0.0) {
            return Err(HyperdmError::Config {
                field: "hyper.z_init",
                problem: format!("must be a number ≥ 0, got {}", hyper_config.z_init),
            });
        }
        if !(hyper_config.z_lr.is_finite() && hyper_config.z_lr > 0.0) {
            return Err(HyperdmError::Config {
                field: "hyper.z_lr",
                problem: format!("must be a number > 0, got {}", hyper_config.z_lr),
            });
        }
        if hyper_config.form == HyperForm::Rank1 && hyper_config.centred {
            return Err(HyperdmError::Config {
                field: "hyper.centred",
                problem: "the rank-1 form has its own shared base; centred is for the full form"
                    .into(),
            });
        }
        if matches!(method, Method::McDropout { .. }) && primary.dropout_widths().is_empty() {
            return Err(HyperdmError::Config {
                field: "method",
                problem: "MC-Dropout needs a primary network with dropout (the MLP)".into(),
            });
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let total = primary.layout().total();
        // The baseline's vectors, in member order (`named_vars` sorts by name).
        let direct = |n: usize| -> Result<WeightSource> {
            for k in 0..n {
                vb.get_with_hints(total, &format!("direct.member{k:03}"), Init::Const(0.0))
                    .ctx("building the baseline's weights")?;
            }
            Ok(WeightSource::Direct(
                named_vars(&varmap).into_iter().map(|(_, v)| v).collect(),
            ))
        };
        let gains = primary.layout().gains();
        let weights = match method {
            Method::Hyperdm => WeightSource::Hyper(HyperNetwork::for_layout(
                vb.pp("hyper"),
                hyper_config,
                primary.layout(),
            )?),
            Method::McDropout { .. } => direct(1)?,
            Method::Ensemble { members } => direct(members)?,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, var) in named_vars(&varmap) {
            let dims = var.dims().to_vec();
            // A baseline's vectors and the centred hyper-network's base are
            // networks in final units: uniform ±1 times the layout's gains.
            let whole_network = name.starts_with("direct.") || name == "hyper.base";
            let fan_in = if whole_network {
                1
            } else if name.ends_with("weight") {
                dims.last().copied().unwrap_or(1)
            } else {
                dims[0].max(1)
            };
            let z_init = match name.strip_prefix("hyper.") {
                Some(own) if HyperNetwork::carries_z(own) => hyper_config.z_init,
                _ => 1.0,
            };
            // Scaled after the draw, so every setting reads the same stream.
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut values: Vec<f32> = (0..var.elem_count())
                .map(|_| (rng.random_range(-bound..bound) * z_init) as f32)
                .collect();
            if name.starts_with("direct.") {
                values = primary.layout().scaled(&values);
            } else if name == "hyper.base" {
                // Without the +1 of normalisation scales: slicing adds it.
                values.iter_mut().zip(&gains).for_each(|(v, g)| *v *= g);
            }
            var.set(&Tensor::from_vec(values, dims, device).ctx("initialising")?)
                .ctx("initialising")?;
        }
        Ok(Self {
            primary,
            method,
            weights,
            hyper_config: hyper_config.clone(),
            diffusion: diffusion.clone(),
            schedule: Schedule::new(diffusion),
            varmap,
            device: device.clone(),
        })
    }

    /// The hyper-network (HyperDM only).
    pub fn hyper(&self) -> Result<&HyperNetwork> {
        match &self.weights {
            WeightSource::Hyper(h) => Ok(h),
            WeightSource::Direct(_) => Err(HyperdmError::Config {
                field: "method",
                problem: format!("a {} model has no hyper-network", self.method),
            }),
        }
    }

    /// Trainable parameters (the hyper-network, or the baseline's vectors).
    pub fn parameter_count(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// An optimiser over this model's variables; the layers that carry z
    /// learn at [`HyperConfig::z_lr`] times the common rate.
    pub fn optimizer(&self, config: &AdamWConfig) -> AdamW {
        let z_lr = self.hyper_config.z_lr;
        AdamW::new(named_vars(&self.varmap), config.clone()).with_lr_scales(|name| {
            match name.strip_prefix("hyper.") {
                Some(own) if HyperNetwork::carries_z(own) => z_lr,
                _ => 1.0,
            }
        })
    }

    /// The fixed random map z ↦ A·z of anchored training: A `[z_dim, P]`
    /// with N(0, 1/z_dim) entries, so each anchor parameter is N(0, 1) over z
    /// (the standardised scale the layout's gains turn into weights); for
    /// the rank-1 form `[z_dim, factors]`, one N(0, 1) anchor per factor.
    pub fn anchor_map(&self, seed: u64) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::MAX - 1);
        let z_dim = self.hyper()?.z_dim();
        gaussian(
            &mut rng,
            &[z_dim, self.hyper()?.anchored_width()?],
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
    ///
    /// With `antithetic`, each draw z is paired with −z on the same rows,
    /// steps and noise. A single z multiplies the minibatch's sampling noise
    /// into the z-dependent weights (the skip's gradient is g·zᵀ), and that
    /// noise stays behind as member disagreement the data never asked for:
    /// an EU floor. In a pair the noise enters as g·zᵀ + g·(−z)ᵀ and cancels
    /// to first order; what survives is the difference between the two
    /// networks' fits, which is what should shape z.
    pub fn loss(
        &self,
        x0: &Tensor,
        cond: &Tensor,
        z_per_step: usize,
        antithetic: bool,
        anchor: Option<(&Tensor, f64)>,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let draws = self.draws(x0, cond, z_per_step, antithetic, rng)?;
        let anchor_term = anchor_term(&draws, anchor)?;
        let order = &draws.order;
        let stack = |part: &dyn Fn(&(Noised, Tensor)) -> Tensor| -> Result<Tensor> {
            let parts: Vec<Tensor> = order.iter().map(|&d| part(&draws.noised[d])).collect();
            Tensor::stack(&parts, 0).ctx("loss")
        };
        let x_t = stack(&|(n, _)| n.x_t.clone())?;
        let target = stack(&|(n, _)| n.target.clone())?;
        let cond = stack(&|(_, c)| c.clone())?;
        let steps: Vec<usize> = order
            .iter()
            .flat_map(|&d| draws.noised[d].0.steps.iter().copied())
            .collect();
        let params = self.primary.layout().slice_stacked(&draws.flat)?;
        let out = self.primary.forward_stacked(&params, &x_t, &steps, &cond)?;
        // The mean over each network's rows, averaged over the networks.
        let data = (out - target)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .ctx("loss")?;
        match anchor_term {
            Some(anchor) => (anchor + data).ctx("loss"),
            None => Ok(data),
        }
    }

    /// One update's weight draws and their rows: z (each with −z after it
    /// when `antithetic`), the generated weights, and each draw's noised
    /// share of the minibatch.
    fn draws(
        &self,
        x0: &Tensor,
        cond: &Tensor,
        z_per_step: usize,
        antithetic: bool,
        rng: &mut impl Rng,
    ) -> Result<Draws> {
        let hyper = self.hyper()?;
        let batch = x0.dim(0).ctx("loss")?;
        if batch == 0 {
            return Err(HyperdmError::Config {
                field: "batch_size",
                problem: "empty minibatch".into(),
            });
        }
        let signs = if antithetic { 2 } else { 1 };
        let draws = z_per_step.clamp(1, (batch / signs).max(1));
        let z = gaussian(rng, &[draws, hyper.z_dim()], &self.device)?;
        let z = if antithetic {
            Tensor::cat(&[&z, &z.neg().ctx("loss")?], 0).ctx("loss")?
        } else {
            z
        };
        let (flat, anchored) = hyper.forward_anchored(&z)?;
        // Every network sees `rows` rows of its draw's share of the
        // minibatch; an antithetic pair shares its rows, steps and noise
        // (drawn once), so only the sign of z tells the two apart.
        let rows = ((batch / draws) / signs).max(1);
        let noised = (0..draws)
            .map(|d| {
                let start = d * batch / draws;
                let x0 = x0.narrow(0, start, rows).ctx("loss")?;
                let cond = cond.narrow(0, start, rows).ctx("loss")?;
                let noised = self.noised(&x0, rng)?;
                Ok((noised, cond))
            })
            .collect::<Result<Vec<_>>>()?;
        // Network k = s·draws + d (the order of `z`) runs on draw d's rows.
        let order: Vec<usize> = (0..signs).flat_map(|_| 0..draws).collect();
        Ok(Draws {
            z,
            flat,
            anchored,
            noised,
            order,
        })
    }

    /// A random step per row and x_t from x₀ and fresh noise, with the
    /// prediction's target.
    fn noised(&self, x0: &Tensor, rng: &mut impl Rng) -> Result<Noised> {
        let rows = x0.dim(0).ctx("loss")?;
        let steps: Vec<usize> = (0..rows)
            .map(|_| rng.random_range(0..self.schedule.steps()))
            .collect();
        let eps = gaussian(rng, x0.dims(), &self.device)?;
        let mut bshape = vec![1; x0.rank()];
        bshape[0] = rows;
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
        let target = match self.diffusion.prediction {
            Prediction::Epsilon => eps,
            Prediction::X0 => x0.clone(),
            Prediction::V => (eps.broadcast_mul(&sa).ctx("loss")?
                - x0.broadcast_mul(&sb).ctx("loss")?)
            .ctx("loss")?,
        };
        Ok(Noised { x_t, steps, target })
    }

    /// The denoising loss of one network (`params`, hidden activations
    /// multiplied by `masks` when given) on one minibatch: a random step
    /// per row, x_t from x₀ and fresh noise, squared error of the prediction.
    pub fn denoising_loss(
        &self,
        params: &Params,
        masks: &[Tensor],
        x0: &Tensor,
        cond: &Tensor,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let noised = self.noised(x0, rng)?;
        let out = self
            .primary
            .forward_masked(params, &noised.x_t, &noised.steps, cond, masks)?;
        (out - noised.target)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .ctx("loss")
    }

    /// Dropout masks for `rows` rows: per hidden width, entries 0 with
    /// probability p, else 1/(1 − p) (so activations keep their mean).
    ///
    /// A training update needs rows × (sum of widths) draws, ≈ 390,000 for
    /// the pipeline's cell model; drawn one float at a time on one thread
    /// they took as long as the network's own update. So each mask takes
    /// one seed from `rng` and is drawn in blocks of rows, block b from
    /// stream b of that seed, the blocks side by side, each entry from one
    /// 32-bit draw against p·2³². The masks depend on `rng` only, not on
    /// the number of threads.
    fn dropout_masks(&self, p: f64, rows: usize, rng: &mut impl Rng) -> Result<Vec<Tensor>> {
        /// Entries per block: a few microseconds of drawing each.
        const BLOCK: usize = 8 * 1024;
        let keep = (1.0 / (1.0 - p)) as f32;
        let threshold = (p.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64;
        self.primary
            .dropout_widths()
            .into_iter()
            .map(|width| {
                let seed: u64 = rng.random();
                let mut values = vec![0f32; rows * width];
                values
                    .par_chunks_mut(BLOCK)
                    .enumerate()
                    .for_each(|(block, chunk)| {
                        let mut stream = ChaCha8Rng::seed_from_u64(seed);
                        stream.set_stream(block as u64);
                        for v in chunk {
                            let dropped = u64::from(stream.next_u32()) < threshold;
                            *v = if dropped { 0.0 } else { keep };
                        }
                    });
                Tensor::from_vec(values, (rows, width), &self.device).ctx("dropout mask")
            })
            .collect()
    }

    /// The loss of training update `k`: a minibatch drawn from stream k of
    /// `config.seed` (so a resumed run repeats exactly), then by method:
    /// - HyperDM: [`HyperDm::loss`] with fresh z;
    /// - MC-Dropout: one network, a fresh dropout mask per row;
    /// - ensemble: every member its own minibatch and noise (stream k of its
    ///   own seed), losses averaged. The members share no parameter and
    ///   AdamW is element-wise and scale-free (up to its ε), so this is M
    ///   independent trainings run in lock step, at M times the cost of one.
    fn update_loss(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        anchor: Option<&Tensor>,
    ) -> Result<Tensor> {
        let draw = |seed: u64| Self::update_rows(&self.device, data, config, k, seed);
        match (&self.weights, self.method) {
            (WeightSource::Hyper(_), _) => {
                let (x0, cond, mut rng) = draw(config.seed)?;
                self.loss(
                    &x0,
                    &cond,
                    config.z_per_step,
                    config.antithetic,
                    anchor.map(|a| (a, config.anchor)),
                    &mut rng,
                )
            }
            (WeightSource::Direct(vars), Method::McDropout { p }) => {
                let (x0, cond, mut rng) = draw(config.seed)?;
                let params = self.primary.layout().slice_scaled(vars[0].as_tensor())?;
                let masks = self.dropout_masks(p, config.batch_size, &mut rng)?;
                self.denoising_loss(&params, &masks, &x0, &cond, &mut rng)
            }
            (WeightSource::Direct(vars), _) => {
                let mut total: Option<Tensor> = None;
                for (member, var) in vars.iter().enumerate() {
                    let seed = member_seed(config.seed, member);
                    let (x0, cond, mut rng) = draw(seed)?;
                    let params = self.primary.layout().slice_scaled(var.as_tensor())?;
                    let l = self.denoising_loss(&params, &[], &x0, &cond, &mut rng)?;
                    total = Some(match total {
                        Some(t) => (t + l).ctx("loss")?,
                        None => l,
                    });
                }
                // The mean, so the reported loss reads like one network's;
                // AdamW's steps do not depend on the loss scale.
                total
                    .ok_or(HyperdmError::Config {
                        field: "method.members",
                        problem: "an ensemble needs at least one member".into(),
                    })?
                    .affine(1.0 / vars.len() as f64, 0.0)
                    .ctx("loss")
            }
        }
    }

    /// Update k's minibatch (x₀, condition) from stream k of `seed`, and
    /// that stream, to go on drawing the update's noise.
    fn update_rows(
        device: &Device,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        seed: u64,
    ) -> Result<(Tensor, Tensor, ChaCha8Rng)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(k);
        let rows: Vec<usize> = (0..config.batch_size)
            .map(|_| rng.random_range(0..data.len()))
            .collect();
        let (x0, cond) = data.batch(&rows, device)?;
        Ok((x0, cond, rng))
    }

    /// Update k's loss and gradients. On the CPU, HyperDM runs its networks
    /// side by side ([`HyperDm::loss_gradients`]) and the baselines their
    /// members and row shards ([`HyperDm::baseline_gradients`]), one per
    /// thread; on an accelerator [`HyperDm::update_loss`] back-propagates
    /// as one graph.
    fn update_gradients(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        anchor: Option<&Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        if matches!(self.weights, WeightSource::Hyper(_)) && self.device.is_cpu() {
            let (x0, cond, mut rng) =
                Self::update_rows(&self.device, data, config, k, config.seed)?;
            return self.loss_gradients(
                &x0,
                &cond,
                config.z_per_step,
                config.antithetic,
                anchor.map(|a| (a, config.anchor)),
                &mut rng,
            );
        }
        if self.device.is_cpu() {
            return self.baseline_gradients(data, config, k, rayon::current_num_threads());
        }
        let loss = self.update_loss(data, config, k, anchor)?;
        let grads = loss.backward().ctx("backward")?;
        Ok((loss, grads))
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
        // `loss` would quietly train fewer draws than asked for; a run
        // from any front end (pipeline, toy) says so instead.
        let signs = if config.antithetic { 2 } else { 1 };
        if matches!(self.weights, WeightSource::Hyper(_))
            && (config.z_per_step == 0 || config.z_per_step * signs > config.batch_size)
        {
            return Err(HyperdmError::Config {
                field: "train.z_per_step",
                problem: format!(
                    "{} z draws{} need at least one row each, and batch_size is {}",
                    config.z_per_step,
                    if config.antithetic {
                        ", each with its mirror −z,"
                    } else {
                        ""
                    },
                    config.batch_size
                ),
            });
        }
        let anchor = if config.anchor > 0.0 && matches!(self.weights, WeightSource::Hyper(_)) {
            Some(self.anchor_map(config.seed)?)
        } else {
            None
        };
        let started = Instant::now();
        let report_every = (config.iterations / 20).max(1);
        while optimizer.step < config.iterations.min(stop) {
            let k = optimizer.step;
            let (loss, grads) = self.update_gradients(data, config, k, anchor.as_ref())?;
            let progress_fraction = k as f64 / config.iterations.max(1) as f64;
            let floor = config.final_lr_fraction;
            let lr = config.optimizer.lr
                * (floor
                    + (1.0 - floor)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress_fraction).cos()));
            optimizer.apply(&grads, lr)?;
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
        self.predict_each(
            cond,
            members,
            samples,
            sampler,
            (weight_seed, noise_seed),
            |_, _| Ok(()),
        )
    }

    /// As [`HyperDm::predict_seeded`] (`seeds` = (weight, noise)), also
    /// handing each member's samples `[N, C, ...sample]` to `visit` (for
    /// scores that need every sample, such as the ensemble CRPS).
    pub fn predict_each(
        &self,
        cond: &Tensor,
        members: usize,
        samples: usize,
        sampler: Sampler,
        seeds: (u64, u64),
        mut visit: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Moments> {
        if members == 0 || samples == 0 {
            return Err(HyperdmError::Config {
                field: "predict",
                problem: format!(
                    "needs at least one member and one sample, got M = {members}, N = {samples}"
                ),
            });
        }
        let (weight_seed, noise_seed) = seeds;
        let sample_shape = self.sample_shape(cond)?;
        let repeated = Tensor::cat(&vec![cond; samples], 0).ctx("predict")?;
        let mut shared_noise = ChaCha8Rng::seed_from_u64(noise_seed);
        shared_noise.set_stream(u64::MAX);
        let run = |member: usize| {
            self.member_samples(
                member,
                weight_seed,
                &shared_noise,
                (&repeated, samples, &sample_shape),
                sampler,
            )
        };
        let mut acc = MomentAccumulator::default();
        let members_at_once = self.members_at_once(members);
        let order: Vec<usize> = (0..members).collect();
        for group in order.chunks(members_at_once) {
            let x0s: Vec<Result<Tensor>> = if group.len() > 1 {
                group.par_iter().map(|&member| run(member)).collect()
            } else {
                group.iter().map(|&member| run(member)).collect()
            };
            // Visited and accumulated in member order, whatever finished first.
            for (&member, x0) in group.iter().zip(x0s) {
                let x0 = x0?;
                visit(member, &x0)?;
                acc.push(&x0)?;
            }
        }
        acc.finish()
    }

    /// How many members sample side by side. On the CPU, one per thread of
    /// the pool: a member's forward passes are small GEMMs and element-wise
    /// operations that split badly over threads (the U-Net bench kept two
    /// cores only 1.25 busy), while whole members are independent work of
    /// equal size. Results do not depend on it: every member has its own
    /// weights and its own copy of the shared noise stream. Accelerators run
    /// members one after another, each forward already filling the device.
    fn members_at_once(&self, members: usize) -> usize {
        if self.device.is_cpu() {
            rayon::current_num_threads().clamp(1, members.max(1))
        } else {
            1
        }
    }

    /// Member `member`'s N samples of every condition: `[N, C, ...sample]`.
    /// `batch` is (the conditions repeated N times, N, the sample shape).
    fn member_samples(
        &self,
        member: usize,
        weight_seed: u64,
        shared_noise: &ChaCha8Rng,
        batch: (&Tensor, usize, &[usize]),
        sampler: Sampler,
    ) -> Result<Tensor> {
        let (repeated, samples, sample_shape) = batch;
        let rows = repeated.dim(0).ctx("predict")?;
        let (params, masks) = self.member_network(member, weight_seed)?;
        // Common random numbers: every member starts from the same noise, so
        // members differ by their weights only.
        let mut rng = shared_noise.clone();
        let mut shape = vec![rows];
        shape.extend_from_slice(sample_shape);
        let x_t = gaussian(&mut rng, &shape, &self.device)?;
        let x0 = sample(&self.schedule, sampler, x_t, &mut rng, |x, t| {
            self.primary
                .forward_masked(&params, x, &vec![t; rows], repeated, &masks)
        })?;
        let mut per = vec![samples, rows / samples];
        per.extend_from_slice(sample_shape);
        x0.reshape(per).ctx("predict")
    }

    /// Member `member`'s network: its weights (detached, no graph is kept)
    /// and, for MC-Dropout, its dropout masks, fixed for all its samples.
    /// HyperDM draws z and MC-Dropout its masks from stream `member` of
    /// `weight_seed`, so every chunk of a field sees the same M networks.
    fn member_network(&self, member: usize, weight_seed: u64) -> Result<(Params, Vec<Tensor>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(weight_seed);
        rng.set_stream(member as u64);
        match (&self.weights, self.method) {
            (WeightSource::Hyper(hyper), _) => {
                let z = gaussian(&mut rng, &[1, hyper.z_dim()], &self.device)?;
                let flat = hyper.forward(&z)?.detach().squeeze(0).ctx("predict")?;
                Ok((self.primary.layout().slice(&flat)?, Vec::new()))
            }
            (WeightSource::Direct(vars), Method::McDropout { p }) => {
                let params = self
                    .primary
                    .layout()
                    .slice_scaled(&vars[0].as_tensor().detach())?;
                Ok((params, self.dropout_masks(p, 1, &mut rng)?))
            }
            (WeightSource::Direct(vars), _) => {
                let var = vars.get(member).ok_or_else(|| HyperdmError::Config {
                    field: "members",
                    problem: format!(
                        "asked for {} or more members of an ensemble of {}",
                        member + 1,
                        vars.len()
                    ),
                })?;
                Ok((
                    self.primary
                        .layout()
                        .slice_scaled(&var.as_tensor().detach())?,
                    Vec::new(),
                ))
            }
        }
    }

    /// The shape of one sample for these conditions (without the batch axis).
    fn sample_shape(&self, cond: &Tensor) -> Result<Vec<usize>> {
        let one = cond.narrow(0, 0, 1).ctx("predict")?;
        Ok(self.primary.sample_input_like(&one)?.dims()[1..].to_vec())
    }
}

/// See [`HyperDm::draws`]: network k has weights `flat[k]`, drawn from
/// `z[k]`, and runs on `noised[order[k]]` (its x_t, steps and target, and
/// the rows' conditions).
struct Draws {
    z: Tensor,
    flat: Tensor,
    /// What the anchor pulls toward A·z (see `HyperNetwork::forward_anchored`).
    anchored: Tensor,
    noised: Vec<(Noised, Tensor)>,
    order: Vec<usize>,
}

/// λ·mean((φ(z) − A·z)²) for `anchor = Some((A, λ))` with λ > 0 (the
/// rank-1 form: its factors in place of φ).
fn anchor_term(draws: &Draws, anchor: Option<(&Tensor, f64)>) -> Result<Option<Tensor>> {
    match anchor {
        Some((map, weight)) if weight > 0.0 => Ok(Some(
            (draws.anchored.clone() - draws.z.matmul(map).ctx("anchor")?)
                .and_then(|d| d.sqr())
                .and_then(|d| d.mean_all())
                .and_then(|d| d.affine(weight, 0.0))
                .ctx("anchor")?,
        )),
        _ => Ok(None),
    }
}

/// Ensemble member `member`'s training seed: its own minibatches and noise.
fn member_seed(seed: u64, member: usize) -> u64 {
    seed ^ (member as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One draw's noised rows: x_t, each row's step and the training target.
struct Noised {
    x_t: Tensor,
    steps: Vec<usize>,
    target: Tensor,
}

#[cfg(test)]
mod tests {
    use super::side_by_side::in_pool;
    use super::*;
    use crate::primary::{MlpConfig, PrimaryMlp, PrimaryUnet, UnetConfig};
    use crate::toy::ToyData;

    /// The small toy-sized model every test here builds: an 8-8 MLP denoiser
    /// whose weights come from `method`.
    fn small_model(method: Method, hyper: &HyperConfig, seed: u64) -> HyperDm<PrimaryMlp> {
        let mlp = MlpConfig {
            hidden: vec![8, 8],
            ..MlpConfig::default()
        };
        HyperDm::with_method(
            PrimaryMlp::new(&mlp),
            method,
            hyper,
            &DiffusionConfig::default(),
            &Device::Cpu,
            seed,
        )
        .unwrap()
    }

    fn toy_model() -> HyperDm<PrimaryMlp> {
        small_model(Method::Hyperdm, &HyperConfig::default(), 3)
    }

    /// Every hyper-network tensor gets a non-zero gradient; the primary
    /// network has no variables at all (its weights are generated).
    #[test]
    fn gradient_reaches_every_hyper_parameter_only() {
        gradient_reaches_every_hyper_parameter(false);
        gradient_reaches_every_hyper_parameter(true);
    }

    fn gradient_reaches_every_hyper_parameter(z_skip: bool) {
        let config = HyperConfig {
            z_skip,
            ..HyperConfig::default()
        };
        let model = small_model(Method::Hyperdm, &config, 3);
        let data = ToyData::generate(64, 0.01, None, 1);
        let (x0, cond) = data
            .batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu)
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let loss = model.loss(&x0, &cond, 2, false, None, &mut rng).unwrap();
        let grads = loss.backward().unwrap();
        let vars = named_vars(&model.varmap);
        assert!(
            vars.iter().all(|(name, _)| name.starts_with("hyper.")),
            "only hyper-network variables exist"
        );
        let skip = usize::from(z_skip);
        assert_eq!(vars.len(), 2 * (config.hidden.len() + 1) + skip);
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

    /// `z_init` scales how far apart the generated networks start, and
    /// nothing else: the difference between two z's networks shrinks by
    /// exactly that factor (same random stream), and a negative scale is
    /// refused. Tolerance: 1e-5 relative (float rounding).
    #[test]
    fn z_init_scales_how_far_apart_the_networks_start() {
        let z = Tensor::new(
            &[
                [0.5f32, -1.0, 0.3, 1.2, -0.7, 0.1, 0.9, -0.4],
                [-0.2, 0.8, 1.1, -0.6, 0.4, -1.3, 0.0, 0.7],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let spread = |z_init: f64| -> Vec<f32> {
            let config = HyperConfig {
                z_skip: true,
                z_init,
                ..HyperConfig::default()
            };
            let phi = small_model(Method::Hyperdm, &config, 3)
                .hyper()
                .unwrap()
                .forward(&z)
                .unwrap();
            (phi.get(0).unwrap() - phi.get(1).unwrap())
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (full, tenth) = (spread(1.0), spread(0.1));
        let norm = full.iter().map(|d| d * d).sum::<f32>().sqrt();
        assert!(norm > 1.0, "networks start apart at z_init 1: {norm}");
        for (f, t) in full.iter().zip(&tenth) {
            assert!((t - 0.1 * f).abs() <= 1e-5 * norm, "{t} vs 0.1 × {f}");
        }
        // Out of range: a negative start, and a z path that never learns.
        for (config, name) in [
            (
                HyperConfig {
                    z_init: -1.0,
                    ..HyperConfig::default()
                },
                "hyper.z_init",
            ),
            (
                HyperConfig {
                    z_lr: 0.0,
                    ..HyperConfig::default()
                },
                "hyper.z_lr",
            ),
        ] {
            let refused = HyperDm::new(
                PrimaryMlp::new(&MlpConfig::default()),
                &config,
                &DiffusionConfig::default(),
                &Device::Cpu,
                0,
            );
            assert!(
                matches!(refused, Err(HyperdmError::Config { field, .. }) if field == name),
                "{name}"
            );
        }
    }

    /// The `hyper.base` vector of a centred or rank-1 hyper-network.
    fn shared_base(model: &HyperDm<PrimaryMlp>) -> Vec<f32> {
        named_vars(&model.varmap)
            .into_iter()
            .find(|(name, _)| name == "hyper.base")
            .expect("the hyper-network has a base")
            .1
            .as_tensor()
            .to_vec1()
            .unwrap()
    }

    /// A base drawn like a plain network's weights: uniform ±gain, so its
    /// mean square over gain² is 1/3 (within 10%).
    fn assert_starts_like_a_plain_network(base: &[f32], gains: &[f32]) {
        let ratio = base
            .iter()
            .zip(gains)
            .map(|(b, g)| (b / g).powi(2))
            .sum::<f32>()
            / base.len() as f32;
        assert!((ratio - 1.0 / 3.0).abs() < 0.1 / 3.0, "mean square {ratio}");
    }

    /// A centred hyper-network generates a shared base plus a deviation odd
    /// in z: φ(z) + φ(−z) is twice the base (in standardised units), the two
    /// networks differ, and the base starts as a plain network's
    /// initialisation (each value within ± its gain, spread like uniform
    /// ±gain: mean square gain²/3 within 10%). Tolerance 1e-5 relative.
    #[test]
    fn centred_networks_are_a_base_plus_an_odd_deviation() {
        let config = HyperConfig {
            z_skip: true,
            centred: true,
            ..HyperConfig::default()
        };
        let model = small_model(Method::Hyperdm, &config, 3);
        let z = Tensor::new(
            &[[0.5f32, -1.0, 0.3, 1.2, -0.7, 0.1, 0.9, -0.4]],
            &Device::Cpu,
        )
        .unwrap();
        let both = Tensor::cat(&[&z, &z.neg().unwrap()], 0).unwrap();
        let phi = model.hyper().unwrap().forward(&both).unwrap();
        let plus: Vec<f32> = phi.get(0).unwrap().to_vec1().unwrap();
        let minus: Vec<f32> = phi.get(1).unwrap().to_vec1().unwrap();
        let gains = model.primary.layout().gains();
        let base = shared_base(&model);
        let scale = plus.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut apart = 0f32;
        for (((p, m), b), g) in plus.iter().zip(&minus).zip(&base).zip(&gains) {
            assert!(
                (p + m - 2.0 * b / g).abs() <= 1e-5 * scale,
                "{p} + {m} vs 2 × {b}/{g}"
            );
            assert!(b.abs() <= *g, "base {b} beyond its gain {g}");
            apart += (p - m).powi(2);
        }
        assert!(apart.sqrt() > 1.0, "z and −z generate the same network");
        assert_starts_like_a_plain_network(&base, &gains);
    }

    /// A rank-1 hyper-network scales one shared base: member z's weight
    /// matrix divided by the base is the outer product (1 + r)(1 + s)ᵀ (its
    /// 2×2 minors vanish), two members differ in every weight, the base
    /// starts as a plain network's initialisation (mean square gain²/3
    /// within 10%), and it refuses the centred option.
    /// Tolerance 1e-4 relative to the minor's terms.
    #[test]
    fn rank1_members_scale_a_shared_base_by_row_and_column() {
        let config = HyperConfig {
            z_skip: true,
            form: HyperForm::Rank1,
            ..HyperConfig::default()
        };
        let model = small_model(Method::Hyperdm, &config, 3);
        let z = Tensor::new(
            &[
                [0.5f32, -1.0, 0.3, 1.2, -0.7, 0.1, 0.9, -0.4],
                [-0.2, 0.8, 1.1, -0.6, 0.4, -1.3, 0.2, 0.7],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let phi: Vec<Vec<f32>> = model
            .hyper()
            .unwrap()
            .forward(&z)
            .unwrap()
            .to_vec2()
            .unwrap();
        let gains = model.primary.layout().gains();
        let base = shared_base(&model);
        // Member k's multiplier of every weight: final value over base.
        let factor = |k: usize, p: usize| phi[k][p] * gains[p] / base[p];
        let mut matrices = 0;
        for spec in model.primary.layout().specs() {
            if spec.shape.len() < 2 {
                continue;
            }
            matrices += 1;
            let (rows, cols) = (spec.shape[0], spec.numel() / spec.shape[0]);
            let at = |k, i, j| factor(k, spec.offset + i * cols + j);
            for k in 0..2 {
                for i in 1..rows {
                    for j in 1..cols {
                        let (a, b) = (at(k, i, j) * at(k, 0, 0), at(k, i, 0) * at(k, 0, j));
                        let scale = a.abs().max(b.abs()).max(1e-6);
                        assert!(
                            (a - b).abs() <= 1e-4 * scale,
                            "{} ({i}, {j}): {a} vs {b}",
                            spec.name
                        );
                    }
                }
            }
        }
        assert!(matrices >= 3, "the MLP has {matrices} weight matrices");
        for (p, (a, b)) in phi[0].iter().zip(&phi[1]).enumerate() {
            assert!((a - b).abs() > 1e-6 * a.abs(), "members share weight {p}");
        }
        assert_starts_like_a_plain_network(&base, &gains);

        let centred = HyperConfig {
            centred: true,
            ..config.clone()
        };
        let refused = HyperDm::with_method(
            PrimaryMlp::new(&MlpConfig::default()),
            Method::Hyperdm,
            &centred,
            &DiffusionConfig::default(),
            &Device::Cpu,
            3,
        );
        assert!(matches!(
            refused,
            Err(HyperdmError::Config {
                field: "hyper.centred",
                ..
            })
        ));
    }

    /// Antithetic pairs cancel the minibatch noise in the z path. With the
    /// output weights and the skip zeroed, every z generates the same
    /// network, so nothing in the data can tell z from −z: the skip's
    /// gradient must vanish for pairs (same rows, steps and noise), and not
    /// without them.
    #[test]
    fn antithetic_pairs_cancel_noise_in_the_skip_gradient() {
        let config = HyperConfig {
            z_skip: true,
            ..HyperConfig::default()
        };
        let data = ToyData::generate(64, 0.01, None, 1);
        let (x0, cond) = data
            .batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu)
            .unwrap();
        let skip_gradient = |antithetic: bool| -> f32 {
            let model = small_model(Method::Hyperdm, &config, 3);
            let vars = named_vars(&model.varmap);
            let find = |name: &str| &vars.iter().find(|(n, _)| n == name).unwrap().1;
            for name in ["hyper.out.weight", "hyper.skip"] {
                let var = find(name);
                var.set(&var.zeros_like().unwrap()).unwrap();
            }
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let loss = model
                .loss(&x0, &cond, 2, antithetic, None, &mut rng)
                .unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(find("hyper.skip")).unwrap();
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        let (single, paired) = (skip_gradient(false), skip_gradient(true));
        assert!(single > 1e-3, "no skip gradient without pairs: {single}");
        assert!(paired <= 1e-5 * single, "pairs {paired} vs single {single}");
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
                    .loss(&x0, &cond, 1, false, None, &mut rng)
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

    /// Members sampled side by side (a pool of three threads: two groups,
    /// 3 + 2) give what one thread gives member after member, and every
    /// member reaches `visit` in order. Tolerance 1e-6: the same operations
    /// on the same inputs, only scheduled differently.
    #[test]
    fn members_side_by_side_match_one_after_another() {
        let model = toy_model();
        let cond = Tensor::new(&[[0.3f32], [-1.2], [2.0]], &Device::Cpu).unwrap();
        let run = |threads: usize| {
            in_pool(threads, || {
                let mut visited = Vec::new();
                let m = model
                    .predict_each(&cond, 5, 40, Sampler::Ddpm, (4, 11), |member, x0| {
                        visited.push((member, x0.dims().to_vec()));
                        Ok(())
                    })
                    .unwrap();
                let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
                (visited, [flat(&m.mean), flat(&m.au), flat(&m.eu)])
            })
        };
        assert_eq!(
            model.members_at_once(5),
            rayon::current_num_threads().min(5)
        );
        let (seq_visits, seq) = run(1);
        let (par_visits, par) = run(3);
        let expected: Vec<(usize, Vec<usize>)> = (0..5).map(|m| (m, vec![40, 3, 1])).collect();
        assert_eq!(seq_visits, expected);
        assert_eq!(par_visits, expected);
        for (a, b) in seq.iter().zip(&par) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
            }
        }
        // Members do differ, so the check compared five distinct networks.
        assert!(seq[2].iter().all(|&eu| eu > 0.0), "EU {:?}", seq[2]);
        // No member or no sample is a named error, not an empty stack.
        for (members, samples) in [(0, 40), (5, 0)] {
            let err = model
                .predict(&cond, members, samples, Sampler::Ddpm, 4)
                .unwrap_err()
                .to_string();
            assert!(err.contains("predict") && err.contains("M = "), "{err}");
        }
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
                ..HyperConfig::default()
            },
            &DiffusionConfig::default(),
            &Device::Cpu,
            1,
        )
        .unwrap();
        let flat = model
            .hyper()
            .unwrap()
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

    fn baseline(method: Method, seed: u64) -> HyperDm<PrimaryMlp> {
        small_model(method, &HyperConfig::default(), seed)
    }

    fn flat(var: &Var) -> Vec<f32> {
        var.as_tensor().to_vec1().unwrap()
    }

    /// An ensemble member trains as it would alone: member 0 of an ensemble
    /// of 3 ends where an ensemble of 1 ends (same initial draw, same
    /// minibatches), and the other members end elsewhere.
    #[test]
    fn ensemble_members_train_independently() {
        let data = ToyData::generate(128, 0.01, None, 1);
        let config = TrainConfig {
            iterations: 30,
            batch_size: 32,
            ..TrainConfig::default()
        };
        let trained = |members| {
            let model = baseline(Method::Ensemble { members }, 5);
            let mut opt = model.optimizer(&config.optimizer);
            model.fit(&data, &config, &mut opt, |_| {}).unwrap();
            match &model.weights {
                WeightSource::Direct(vars) => vars.iter().map(flat).collect::<Vec<_>>(),
                WeightSource::Hyper(_) => unreachable!("an ensemble has direct weights"),
            }
        };
        let (one, three) = (trained(1), trained(3));
        let initial = match &baseline(Method::Ensemble { members: 1 }, 5).weights {
            WeightSource::Direct(vars) => flat(&vars[0]),
            WeightSource::Hyper(_) => unreachable!("an ensemble has direct weights"),
        };
        let largest = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            largest(&one[0], &initial) > 1e-2,
            "training moved the weights"
        );
        // Averaging the members' losses rescales the gradients by 1/3,
        // which AdamW undoes up to its ε and rounding: 1e-4 tolerance.
        let coupling = largest(&one[0], &three[0]);
        assert!(coupling < 1e-4, "member 0 moved {coupling} with company");
        assert!(largest(&three[0], &three[1]) > 1e-2);
        assert!(largest(&three[1], &three[2]) > 1e-2);
    }

    /// MC-Dropout members differ only by their masks: p = 0 gives EU = 0
    /// exactly (shared noise), p = 0.3 gives EU > 0; the masks are fixed per
    /// member, so two calls with the same weight seed agree.
    #[test]
    fn mc_dropout_members_differ_by_their_fixed_masks() {
        let cond = Tensor::new(&[[0.1f32], [-0.5], [2.0]], &Device::Cpu).unwrap();
        let eu = |p: f64| {
            let model = baseline(Method::McDropout { p }, 2);
            let m = model
                .predict_seeded(&cond, 4, 20, Sampler::Ddim { steps: 10 }, 3, 9)
                .unwrap();
            let again = model
                .predict_seeded(&cond, 4, 20, Sampler::Ddim { steps: 10 }, 3, 9)
                .unwrap();
            let v: Vec<f32> = m.eu.flatten_all().unwrap().to_vec1().unwrap();
            let w: Vec<f32> = again.eu.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(v, w, "seeded masks repeat");
            v
        };
        assert!(eu(0.0).iter().all(|&e| e < 1e-10));
        assert!(eu(0.3).iter().all(|&e| e > 1e-6));
    }

    /// Dropout masks hold 0 with probability p and 1/(1 − p) otherwise
    /// (40,000 entries per width: the drop rate is within 0.01 of p, four
    /// standard errors), repeat for the same stream, and do not depend on
    /// how many threads draw them.
    #[test]
    fn dropout_masks_drop_at_rate_p_whatever_the_threads() {
        let model = baseline(Method::McDropout { p: 0.3 }, 2);
        let draw = |threads: usize| {
            in_pool(threads, || {
                let mut rng = ChaCha8Rng::seed_from_u64(4);
                model
                    .dropout_masks(0.3, 5_000, &mut rng)
                    .unwrap()
                    .iter()
                    .map(|m| m.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let masks = draw(1);
        assert_eq!(masks, draw(3));
        // The small model has two hidden layers of 8.
        assert_eq!(masks.len(), 2);
        let keep = 1.0 / 0.7f32;
        for mask in &masks {
            assert!(mask.iter().all(|&v| v == 0.0 || v == keep));
            let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
            assert!((dropped - 0.3).abs() < 0.01, "drop rate {dropped}");
        }
        // Two widths from one stream are different masks.
        assert_ne!(masks[0][..100], masks[1][..100]);
    }

    /// Gradients reach the baseline's own vectors (every ensemble member;
    /// the one dropout network), and no hyper-network exists.
    #[test]
    fn baselines_train_their_direct_weights() {
        let data = ToyData::generate(64, 0.01, None, 1);
        let config = TrainConfig {
            batch_size: 16,
            ..TrainConfig::default()
        };
        for (method, vars) in [
            (Method::Ensemble { members: 3 }, 3),
            (Method::McDropout { p: 0.3 }, 1),
        ] {
            let model = baseline(method, 1);
            let names = named_vars(&model.varmap);
            assert_eq!(names.len(), vars);
            assert!(names.iter().all(|(n, _)| n.starts_with("direct.member")));
            assert!(model.hyper().is_err());
            let loss = model.update_loss(&data, &config, 0, None).unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in &names {
                assert!(grads.get(var).is_some(), "{method}: no gradient for {name}");
            }
        }
        let small = baseline(Method::Ensemble { members: 2 }, 1);
        let cond = Tensor::new(&[[0.0f32]], &Device::Cpu).unwrap();
        assert!(
            small.predict(&cond, 3, 2, Sampler::Ddpm, 0).is_err(),
            "three members of an ensemble of two"
        );
    }
}
