//! The MLP denoiser for vector data: concat(x_t, time embedding, y) → x-shaped output.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use super::PrimaryNetwork;
use crate::embedding::timestep_embedding;
use crate::error::{CandleContext, Result};
use crate::layout::{ParamId, ParamLayout, Params};

/// Shape of the MLP denoiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Dimension of x (1 for the toy).
    pub data_dim: usize,
    /// Dimension of the condition y.
    pub cond_dim: usize,
    pub time_dim: usize,
    pub hidden: Vec<usize>,
    /// Diffusion steps T (for the embedding's scale).
    pub steps: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            data_dim: 1,
            cond_dim: 1,
            time_dim: 8,
            hidden: vec![32, 32, 32],
            steps: 100,
        }
    }
}

/// SiLU MLP with generated weights.
#[derive(Debug, Clone)]
pub struct PrimaryMlp {
    config: MlpConfig,
    layout: ParamLayout,
    layers: Vec<(ParamId, ParamId)>,
}

impl PrimaryMlp {
    pub fn new(config: &MlpConfig) -> Self {
        let mut layout = ParamLayout::default();
        let mut width = config.data_dim + config.time_dim + config.cond_dim;
        let mut layers = Vec::new();
        let widths: Vec<usize> = config
            .hidden
            .iter()
            .copied()
            .chain([config.data_dim])
            .collect();
        for (i, &w) in widths.iter().enumerate() {
            layers.push((
                layout.weight(format!("l{i}.weight"), &[w, width]),
                layout.bias(format!("l{i}.bias"), &[w]),
            ));
            width = w;
        }
        Self {
            config: config.clone(),
            layout,
            layers,
        }
    }
}

impl PrimaryNetwork for PrimaryMlp {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn forward(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
    ) -> Result<Tensor> {
        let emb = timestep_embedding(steps, self.config.steps, self.config.time_dim, x_t.device())?;
        let mut h = Tensor::cat(&[x_t, &emb, cond], D::Minus1).ctx("MLP input")?;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h
                .matmul(&params.get(*w).t().ctx("MLP")?)
                .and_then(|x| x.broadcast_add(params.get(*b)))
                .ctx("MLP layer")?;
            if i + 1 < self.layers.len() {
                h = h.silu().ctx("MLP activation")?;
            }
        }
        Ok(h)
    }

    fn sample_input_like(&self, cond: &Tensor) -> Result<Tensor> {
        Tensor::zeros(
            (cond.dim(0).ctx("MLP input")?, self.config.data_dim),
            cond.dtype(),
            cond.device(),
        )
        .ctx("MLP input")
    }

    fn config(&self) -> super::PrimaryConfig {
        super::PrimaryConfig::Mlp(self.config.clone())
    }
}
