//! The MLP denoiser for vector data: concat(x_t, time embedding, y) → x-shaped output.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use super::bias::add_bias;
use super::relu::relu;
use super::{PrimaryNetwork, SamplingNetwork, fused, step_by_step};
use crate::embedding::timestep_embedding;
use crate::error::{CandleContext, Result};
use crate::layout::{ParamId, ParamLayout, Params};

/// The bytes of one layer's activations for the rows a sampling pass on the
/// CPU takes through the whole network at once (`forward_sampling`), so
/// that a layer's input and output stay in a core's cache: 1,024 rows of
/// the cell model's 64-wide layers. On the cell-model bench tiles of 512 to
/// 2,048 rows sampled alike, 4,096 rows 25% slower, and no tiles (32,000
/// rows) 17% slower.
const TILE_BYTES: usize = 256 * 1024;

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
    /// Hidden activation (SiLU unless stated; older checkpoints have none).
    #[serde(default)]
    pub activation: Activation,
}

/// The nonlinearity between layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x·σ(x): smooth, one `exp` per unit (the toy's choice).
    #[default]
    Silu,
    /// max(x, 0): piecewise linear and several times cheaper on a CPU,
    /// where `exp` dominates a small MLP run over many rows.
    Relu,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            data_dim: 1,
            cond_dim: 1,
            time_dim: 8,
            hidden: vec![32, 32, 32],
            steps: 100,
            activation: Activation::Silu,
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

impl PrimaryMlp {
    /// Every layer after the first: activation, dropout mask, affine map.
    /// Weights `[out, in]`, or `[K, out, in]` stacked over members, whose
    /// biases `[K, out]` then broadcast over each member's rows.
    fn hidden_layers(&self, params: &Params, mut h: Tensor, masks: &[Tensor]) -> Result<Tensor> {
        for (i, (w, b)) in self.layers[1..].iter().enumerate() {
            h = self.activate(&h)?;
            if let Some(mask) = masks.get(i) {
                h = h.broadcast_mul(mask).ctx("MLP dropout")?;
            }
            let (w, b) = (params.get(*w), params.get(*b));
            let b = if w.rank() == 3 {
                b.unsqueeze(1).ctx("MLP layer")?
            } else {
                b.clone()
            };
            h = h
                .matmul(&w.t().ctx("MLP")?)
                .and_then(|x| add_bias(&x, &b))
                .ctx("MLP layer")?;
        }
        Ok(h)
    }

    /// The first layer when every row is at diffusion step `step` (sampling):
    /// the embedding's part is one row per network, added to every row,
    /// instead of B identical rows of sin/cos and their product. One
    /// network's parameters (`x_t` `[B, d]`) or K stacked (`[K, R, d]`).
    fn first_layer_at(
        &self,
        params: &Params,
        x_t: &Tensor,
        step: usize,
        cond: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let b = params.get(self.layers[0].1);
        let columns = params.get(self.layers[0].0).rank() - 1;
        let (wx, we, wc) = self.first_layer_blocks(params)?;
        let emb = timestep_embedding(&[step], c.steps, c.time_dim, x_t.device())?;
        // [1, out] for one network; [K, 1, out] for K.
        let row = if columns == 2 {
            emb.broadcast_matmul(&we)
                .and_then(|r| r.broadcast_add(&b.unsqueeze(1)?))
        } else {
            emb.matmul(&we).and_then(|r| r.broadcast_add(b))
        }
        .ctx("MLP time embedding")?;
        (x_t.matmul(&wx).ctx("MLP layer")? + cond.matmul(&wc).ctx("MLP layer")?)
            .and_then(|h| h.broadcast_add(&row))
            .ctx("MLP layer")
    }

    /// The first layer's weights as `[in, out]` blocks (`[K, in, out]`
    /// stacked): the columns that multiply x_t, the time embedding and the
    /// condition. They are copied out: candle's CUDA matmul (cuBLAS) takes
    /// a transposed operand only with its full row as the leading
    /// dimension, which a block of columns lacks. The blocks are a few
    /// hundred floats per network, so the CPU pays nothing worth a second
    /// path.
    fn first_layer_blocks(&self, params: &Params) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let w = params.get(self.layers[0].0);
        let columns = w.rank() - 1;
        let block = |start, len| {
            w.narrow(columns, start, len)
                .and_then(|b| b.contiguous())
                .and_then(|b| b.t())
                .ctx("MLP")
        };
        Ok((
            block(0, c.data_dim)?,
            block(c.data_dim, c.time_dim)?,
            block(c.data_dim + c.time_dim, c.cond_dim)?,
        ))
    }

    /// Rows per tile of a sampling pass: [`TILE_BYTES`] of the widest layer.
    pub(super) fn tile_rows(&self) -> usize {
        let widest = self.config.hidden.iter().copied().max().unwrap_or(1);
        (TILE_BYTES / (4 * widest.max(1))).max(16)
    }

    fn activate(&self, h: &Tensor) -> Result<Tensor> {
        match self.config.activation {
            Activation::Silu => h.silu(),
            Activation::Relu => relu(h),
        }
        .ctx("MLP activation")
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
        self.forward_masked(params, x_t, steps, cond, &[])
    }

    fn dropout_widths(&self) -> Vec<usize> {
        self.config.hidden.clone()
    }

    fn forward_masked(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
        masks: &[Tensor],
    ) -> Result<Tensor> {
        if !masks.is_empty() && masks.len() != self.config.hidden.len() {
            return Err(crate::error::HyperdmError::Config {
                field: "dropout",
                problem: format!(
                    "{} masks for {} hidden layers",
                    masks.len(),
                    self.config.hidden.len()
                ),
            });
        }
        let (w0, b0) = self.layers[0];
        let h = if let Some(step) = one_step(steps) {
            self.first_layer_at(params, x_t, step, cond)?
        } else {
            let emb =
                timestep_embedding(steps, self.config.steps, self.config.time_dim, x_t.device())?;
            Tensor::cat(&[x_t, &emb, cond], D::Minus1)
                .and_then(|h| h.matmul(&params.get(w0).t()?))
                .and_then(|h| add_bias(&h, params.get(b0)))
                .ctx("MLP layer")?
        };
        self.hidden_layers(params, h, masks)
    }

    fn forward_stacked(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
    ) -> Result<Tensor> {
        let (members, rows, _) = x_t.dims3().ctx("MLP stacked input")?;
        if let Some(step) = one_step(steps) {
            let h = self.first_layer_at(params, x_t, step, cond)?;
            return self.hidden_layers(params, h, &[]);
        }
        let c = &self.config;
        let emb = timestep_embedding(steps, c.steps, c.time_dim, x_t.device())?
            .reshape((members, rows, c.time_dim))
            .ctx("MLP stacked time embedding")?;
        let (w0, b0) = self.layers[0];
        // [K, R, in] × [K, in, out]: one batched matmul for all K members.
        let h = Tensor::cat(&[x_t, &emb, cond], D::Minus1)
            .and_then(|h| h.matmul(&params.get(w0).t()?))
            .and_then(|h| h.broadcast_add(&params.get(b0).unsqueeze(1)?))
            .ctx("MLP stacked layer")?;
        self.hidden_layers(params, h, &[])
    }

    fn batches_members(&self) -> bool {
        true
    }

    /// `cond·Wc` `[C, out]`, the conditions' part of the first layer, on
    /// the CPU for one network's f32 weights (elsewhere the per-step path
    /// stays, which accelerators run as a few large kernels anyway).
    fn sampling_context(&self, params: &Params, cond: &Tensor) -> Result<Option<Tensor>> {
        let w0 = params.get(self.layers[0].0);
        if w0.rank() != 2 || !fused::fits(&[cond, w0]) {
            return Ok(None);
        }
        let (_, _, wc) = self.first_layer_blocks(params)?;
        Ok(Some(cond.matmul(&wc).ctx("MLP layer")?))
    }

    /// With a context, each layer's element-wise work is one pass
    /// ([`fused`]): the first layer adds the kept conditions' part instead
    /// of multiplying them again.
    fn forward_sampling(
        &self,
        network: &SamplingNetwork<'_>,
        x_t: &Tensor,
        step: usize,
        repeated: &Tensor,
        start: usize,
    ) -> Result<Tensor> {
        let params = network.params;
        // No rows make no tiles: the step-by-step pass returns their empty
        // output.
        let rows = x_t.dim(0).ctx("MLP layer")?;
        let usable = |_: &&Tensor| rows > 0 && fused::fits(&[x_t]);
        let Some(part) = network.context.as_ref().filter(usable) else {
            return step_by_step(self, network, x_t, step, repeated, start);
        };
        let c = &self.config;
        let (wx, we, _) = self.first_layer_blocks(params)?;
        let emb = timestep_embedding(&[step], c.steps, c.time_dim, x_t.device())?;
        let flat = |t: Tensor| -> Result<Vec<f32>> {
            t.contiguous()
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .ctx("MLP layer")
        };
        let row = emb
            .matmul(&we)
            .and_then(|r| r.broadcast_add(params.get(self.layers[0].1)))
            .ctx("MLP time embedding")?;
        let (wx, row) = (flat(wx)?, flat(row)?);
        let act = c.activation;
        let last = self.layers.len() - 1;
        // The whole network over one tile of rows at a time, so that a
        // layer's activations stay in the core's cache between the GEMM
        // that writes them and the pass that biases and activates them.
        let tile = |first: usize, len: usize| -> Result<Tensor> {
            let x = x_t.narrow(0, first, len).ctx("MLP layer")?;
            let mut h =
                fused::first_layer(&x, part, &wx, &row, start + first, act).ctx("MLP layer")?;
            for (i, (w, b)) in self.layers[1..].iter().enumerate() {
                if let Some(mask) = network.masks.get(i) {
                    h = h.broadcast_mul(mask).ctx("MLP dropout")?;
                }
                let z = h.matmul(&params.get(*w).t().ctx("MLP")?);
                h = if i + 1 < last {
                    z.and_then(|z| fused::bias_then(&z, params.get(*b), act))
                } else {
                    z.and_then(|z| add_bias(&z, params.get(*b)))
                }
                .ctx("MLP layer")?;
            }
            Ok(h)
        };
        let tile_rows = self.tile_rows();
        let tiles = (0..rows)
            .step_by(tile_rows)
            .map(|first| tile(first, tile_rows.min(rows - first)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&tiles, 0).ctx("MLP layer")
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

/// The step every row is at, if they share one (as sampling's rows do).
fn one_step(steps: &[usize]) -> Option<usize> {
    let first = *steps.first()?;
    steps.iter().all(|&t| t == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Three members on their own rows in one batched pass give what each
    /// gives alone, including its time embedding and biases.
    #[test]
    fn stacked_forward_matches_each_member_alone() {
        let config = MlpConfig {
            cond_dim: 3,
            hidden: vec![8, 6],
            activation: Activation::Relu,
            ..MlpConfig::default()
        };
        let mlp = PrimaryMlp::new(&config);
        let (members, rows) = (3, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let dev = Device::Cpu;
        let total = mlp.layout().total();
        let flat = Tensor::from_vec(uniform(members * total), (members, total), &dev).unwrap();
        let x_t = Tensor::from_vec(uniform(members * rows), (members, rows, 1), &dev).unwrap();
        let cond = Tensor::from_vec(uniform(members * rows * 3), (members, rows, 3), &dev).unwrap();
        let steps: Vec<usize> = (0..members * rows).map(|i| (i * 37) % 100).collect();
        let stacked = mlp
            .forward_stacked(
                &mlp.layout().slice_stacked(&flat).unwrap(),
                &x_t,
                &steps,
                &cond,
            )
            .unwrap();
        assert_eq!(stacked.dims(), &[members, rows, 1]);
        for k in 0..members {
            let alone = mlp
                .forward(
                    &mlp.layout().slice(&flat.get(k).unwrap()).unwrap(),
                    &x_t.get(k).unwrap(),
                    &steps[k * rows..(k + 1) * rows],
                    &cond.get(k).unwrap(),
                )
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let together: Vec<f32> = stacked
                .get(k)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in alone.iter().zip(&together) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "member {k}: {alone:?} vs {together:?}"
                );
            }
        }
    }
}
