//! Primary (diffusion) networks whose weights are generated, not trained.
//!
//! A primary network declares its parameters in a [`ParamLayout`] and runs
//! with any generated [`Params`]; gradients therefore reach only the
//! hyper-network that produced them.

pub mod mlp;
pub mod unet;

use candle_core::Tensor;

use crate::error::Result;
use crate::layout::{ParamLayout, Params};

pub use mlp::{Activation, MlpConfig, PrimaryMlp};
pub use unet::{PrimaryUnet, UnetConfig};

/// A conditional denoiser s(x_t, t | y; φ).
pub trait PrimaryNetwork: Send + Sync {
    fn layout(&self) -> &ParamLayout;
    /// `x_t`: `[B, ...]`, `steps`: the step of each row, `cond`: `[B, ...]`;
    /// returns the prediction (ε or x₀) with the shape of `x_t`.
    fn forward(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
    ) -> Result<Tensor>;
    /// A zero x_t for the given conditions (`[B, ...]`), shaped as a sample.
    fn sample_input_like(&self, cond: &Tensor) -> Result<Tensor>;
    /// The configuration, for checkpoints.
    fn config(&self) -> PrimaryConfig;
}

/// Which primary network a checkpoint holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PrimaryConfig {
    Mlp(MlpConfig),
    Unet(UnetConfig),
}
