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
//!
//! Training lives in `training` (the CPU's side-by-side gradients in
//! `networks_side_by_side` and `rows_side_by_side`), inference in `sampling`.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, HyperdmError, Result};
use crate::hyper::{HyperConfig, HyperForm, HyperNetwork};
use crate::method::Method;
use crate::optim::{AdamW, AdamWConfig};
use crate::primary::PrimaryNetwork;
use crate::sampler::gaussian;
use crate::schedule::{DiffusionConfig, Schedule};

mod members_stacked;
mod networks_side_by_side;
mod rows_side_by_side;
mod sampling;
mod side_by_side;
mod training;

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
}

// Compiled (and linted) in every test build, so the GPU checks cannot rot
// where no GPU is; they run only in a `cuda` build.
#[cfg(test)]
mod on_gpu;
#[cfg(test)]
mod tests;
