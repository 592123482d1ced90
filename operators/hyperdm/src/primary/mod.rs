//! Primary (diffusion) networks whose weights are generated, not trained.
//!
//! A primary network declares its parameters in a [`ParamLayout`] and runs
//! with any generated [`Params`]; gradients therefore reach only the
//! hyper-network that produced them.

mod bias;
mod cpu_values;
mod fused;
mod im2col;
pub mod mlp;
mod relu;
pub mod unet;

use candle_core::Tensor;

use crate::error::{CandleContext, Result};
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
    /// Widths of the hidden activations MC-Dropout may mask, in order;
    /// empty where the network does not support dropout.
    fn dropout_widths(&self) -> Vec<usize> {
        Vec::new()
    }
    /// As [`PrimaryNetwork::forward`], with each hidden activation multiplied
    /// by its mask (`[B, width]` or `[1, width]`, entries 0 or 1/(1 − p)).
    fn forward_masked(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
        masks: &[Tensor],
    ) -> Result<Tensor> {
        if masks.is_empty() {
            self.forward(params, x_t, steps, cond)
        } else {
            Err(crate::error::HyperdmError::Config {
                field: "method",
                problem: "this primary network has no dropout (MC-Dropout needs the MLP)".into(),
            })
        }
    }
    /// What every sampling pass of one network over the conditions `cond`
    /// `[C, ...]` shares, whatever the diffusion step and the sample (the
    /// MLP: the conditions' part of its first layer), made once per network
    /// instead of at each of the sampler's steps for each of the N samples.
    /// `None` where nothing is shared.
    fn sampling_context(&self, _params: &Params, _cond: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Sampling's pass over rows `start..start + B` of `repeated` (the
    /// conditions repeated N times, `[C·N, ...]`), every row at diffusion
    /// step `step`; `x_t` is `[B, ...]`. The values of
    /// [`PrimaryNetwork::forward_masked`], which this default runs.
    fn forward_sampling(
        &self,
        network: &SamplingNetwork<'_>,
        x_t: &Tensor,
        step: usize,
        repeated: &Tensor,
        start: usize,
    ) -> Result<Tensor> {
        step_by_step(self, network, x_t, step, repeated, start)
    }
    /// K networks at once on their own rows: `params` stacked
    /// ([`ParamLayout::slice_stacked`]), `x_t` and `cond` `[K, R, ...]`,
    /// `steps` the K·R rows' steps in that order; returns `[K, R, ...]`.
    /// Training several weight draws per update goes through here, so a
    /// network that can batch its members (the MLP) runs one batched matmul
    /// per layer instead of K small passes. This default runs them in turn.
    fn forward_stacked(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
    ) -> Result<Tensor> {
        let members = x_t.dim(0).ctx("stacked forward")?;
        let rows = steps.len() / members.max(1);
        let outputs = (0..members)
            .map(|k| {
                self.forward(
                    &params.member(k)?,
                    &x_t.get(k).ctx("stacked forward")?,
                    &steps[k * rows..(k + 1) * rows],
                    &cond.get(k).ctx("stacked forward")?,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&outputs, 0).ctx("stacked forward")
    }
    /// Whether [`PrimaryNetwork::forward_stacked`] batches its members
    /// (rather than running them in turn), so that stacking members pays.
    fn batches_members(&self) -> bool {
        false
    }
    /// A zero x_t for the given conditions (`[B, ...]`), shaped as a sample.
    fn sample_input_like(&self, cond: &Tensor) -> Result<Tensor>;
    /// The configuration, for checkpoints.
    fn config(&self) -> PrimaryConfig;
}

/// Sampling's pass through [`PrimaryNetwork::forward_masked`], every row
/// at `step`: the default of [`PrimaryNetwork::forward_sampling`], and what
/// a network that overrides it runs where its own pass does not apply.
pub(crate) fn step_by_step<P: PrimaryNetwork + ?Sized>(
    primary: &P,
    network: &SamplingNetwork<'_>,
    x_t: &Tensor,
    step: usize,
    repeated: &Tensor,
    start: usize,
) -> Result<Tensor> {
    let rows = x_t.dim(0).ctx("sampling pass")?;
    primary.forward_masked(
        network.params,
        x_t,
        &vec![step; rows],
        &repeated.narrow(0, start, rows).ctx("sampling pass")?,
        network.masks,
    )
}

/// One network while it samples.
#[derive(Debug)]
pub struct SamplingNetwork<'a> {
    pub params: &'a Params,
    /// MC-Dropout's masks, fixed for all the network's samples; empty
    /// otherwise.
    pub masks: &'a [Tensor],
    /// From [`PrimaryNetwork::sampling_context`].
    pub context: Option<Tensor>,
}

/// Which primary network a checkpoint holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PrimaryConfig {
    Mlp(MlpConfig),
    Unet(UnetConfig),
}
