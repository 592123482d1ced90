//! HyperDM (Chan, Molina, Metzler, NeurIPS 2024) in candle: a Bayesian
//! hyper-network generates the weights of a conditional diffusion model, so
//! one trained model yields both aleatoric (AU = E_i[Var_j]) and epistemic
//! (EU = Var_i[E_j]) uncertainty from M weight draws × N samples.
//!
//! Choices (see the crate README for the reasoning):
//! - ε-prediction with T = 100 by default (the paper); x₀-prediction optional;
//! - linear β (paper) or log-SNR-uniform schedules; DDPM, DDIM (η = 0) and
//!   DPM-Solver++(2M) (the forecast pipeline's: DDIM-20 samples 0.73 of the
//!   variance even with an exact denoiser);
//! - AdamW; one fresh z per minibatch by default; no KL term, optionally an
//!   anchor per network (`TrainConfig::anchor`, see [`HyperDm::loss`]) that
//!   the hyper-network can follow through a linear z skip (`HyperConfig::z_skip`);
//! - population variances (ddof = 0) so AU + EU is the total variance exactly.

pub mod checkpoint;
pub mod device;
pub mod embedding;
pub mod error;
mod host;
pub mod hyper;
pub mod layout;
pub mod method;
pub mod model;
pub mod moments;
pub mod optim;
pub mod primary;
pub mod sampler;
pub mod schedule;
pub mod startup;
pub mod toy;

pub use device::{default_device, device_name};
pub use error::{HyperdmError, Result};
pub use hyper::{HyperConfig, HyperForm};
pub use method::Method;
pub use model::{HyperDm, Progress, TrainConfig, TrainingData, WeightSource};
pub use moments::Moments;
pub use primary::{
    Activation, MlpConfig, PrimaryConfig, PrimaryMlp, PrimaryNetwork, PrimaryUnet, UnetConfig,
};
pub use sampler::Sampler;
pub use schedule::{DiffusionConfig, Prediction, ScheduleKind};
