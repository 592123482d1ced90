//! The MLP's element-wise work while sampling on the CPU, each layer's in
//! one pass over its output.
//!
//! Sampling runs the same small MLP over every row at every diffusion step,
//! and candle spends one allocation and one pass per element-wise operation:
//! the first layer's two adds, then each layer's bias and activation.
//! `perf` of the cell model's sampling bench put a quarter of the time in
//! the first layer, three quarters of that outside its matmuls, and an
//! eighth in `relu` alone. Here a layer's bias, activation and (for the
//! first layer) its parts from x, the conditions and the step are one loop
//! writing one new buffer, in the order candle computed them. The
//! conditions' part comes from one matmul over the C conditions instead of
//! one over their C·N rows at every step, and the MLP runs these ops over
//! tiles of rows (`PrimaryMlp::forward_sampling`), so its GEMMs are smaller;
//! either may round differently in the last bit (the demo's mean forecast
//! moved by at most one float step).
//!
//! Forward only: these ops have no backward pass, and sampling's weights
//! are detached. Training keeps candle's ops.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::bias::biased;
use super::cpu_values::f32_values;
use super::mlp::Activation;

/// Whether the fused ops can take these tensors: f32 on the CPU.
pub(super) fn fits(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The first layer of rows `start..start + len` of the conditions
/// repeated N times, all at one diffusion step, activated:
/// `act((x·Wx + C[(start + i) mod C]) + row)`, where `cond_part` `[C, out]`
/// is the conditions' part `cond·Wc` (the same at every step and for every
/// sample, so computed once), `wx` is `Wx` `[d, out]` row-major and `row` the
/// step's embedding part plus the bias `[out]`. `x` is `[len, d]`.
pub(super) fn first_layer(
    x: &Tensor,
    cond_part: &Tensor,
    wx: &[f32],
    row: &[f32],
    start: usize,
    activation: Activation,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &cond_part.contiguous()?,
        &FirstLayer {
            wx,
            row,
            start,
            activation,
        },
    )
}

/// `act(z + b)` on every row of `z` `[rows, width]`, `b` `[width]`. The
/// last layer, without an activation, is `bias::add_bias`.
pub(super) fn bias_then(
    z: &Tensor,
    b: &Tensor,
    activation: Activation,
) -> candle_core::Result<Tensor> {
    z.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &BiasThen { activation })
}

fn activate(activation: Activation, v: f32) -> f32 {
    match activation {
        // candle's relu is max(v, 0) and its silu v / (1 + e^-v): the same
        // expressions, so the same bits.
        Activation::Relu => v.max(0.0),
        Activation::Silu => v / (1.0 + (-v).exp()),
    }
}

struct FirstLayer<'a> {
    wx: &'a [f32],
    row: &'a [f32],
    start: usize,
    activation: Activation,
}

impl CustomOp2 for FirstLayer<'_> {
    fn name(&self) -> &'static str {
        "mlp-first-layer-at-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (len, d) = l1.shape().dims2()?;
        let (cells, width) = l2.shape().dims2()?;
        if cells == 0 || self.row.len() != width || self.wx.len() != d * width {
            return Err(candle_core::Error::Msg(format!(
                "fused first layer: x [{len}, {d}], conditions [{cells}, {width}], \
                 Wx {} and row {} do not fit",
                self.wx.len(),
                self.row.len()
            )));
        }
        let op = self.name();
        let (x, part) = (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?);
        let mut out = Vec::with_capacity(len * width);
        for (i, xs) in x.chunks_exact(d.max(1)).enumerate().take(len) {
            let cell = (self.start + i) % cells;
            let part = &part[cell * width..(cell + 1) * width];
            let act = self.activation;
            if let [v] = xs {
                // One value per row (every shipped model): x·Wx is the one
                // product candle's matmul makes.
                let terms = self.wx.iter().zip(part).zip(self.row);
                out.extend(terms.map(|((w, p), r)| activate(act, (v * w + p) + r)));
            } else {
                out.extend((0..width).map(|j| {
                    let h = (xs.iter().enumerate())
                        .fold(0f32, |acc, (k, v)| acc + v * self.wx[k * width + j]);
                    activate(act, (h + part[j]) + self.row[j])
                }));
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((len, width))))
    }
}

struct BiasThen {
    activation: Activation,
}

impl CustomOp2 for BiasThen {
    fn name(&self) -> &'static str {
        "mlp-bias-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = l1.shape().dims2()?;
        let op = self.name();
        let (z, b) = (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?);
        if b.len() != width {
            return Err(candle_core::Error::Msg(format!(
                "fused bias: rows of {width} and a bias of {}",
                b.len()
            )));
        }
        let out = match self.activation {
            Activation::Relu => biased(z, b, |v| v.max(0.0)),
            Activation::Silu => biased(z, b, |v| activate(Activation::Silu, v)),
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::{Activation, MlpConfig, PrimaryMlp, PrimaryNetwork, SamplingNetwork};

    /// Sampling's fused pass gives the layer-by-layer pass's values (the
    /// one sampling ran before), for rows that start part-way through the
    /// conditions and wrap around them, with either activation and with
    /// MC-Dropout's masks, over more rows than a tile, within 1e-6 of the largest output: the sums are
    /// the same, and candle's matmul may round a small matrix's products
    /// in another order (last-bit differences were seen at 7 conditions).
    #[test]
    fn fused_pass_matches_the_layer_by_layer_pass() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let cases = [
            (1, Activation::Relu, false),
            (1, Activation::Silu, false),
            (1, Activation::Relu, true),
            (2, Activation::Silu, true),
        ];
        for (data_dim, activation, masked) in cases {
            let config = MlpConfig {
                data_dim,
                cond_dim: 5,
                time_dim: 6,
                hidden: vec![16, 12, 8],
                steps: 100,
                activation,
            };
            let mlp = PrimaryMlp::new(&config);
            let total = mlp.layout().total();
            let flat = Tensor::from_vec(uniform(total), total, &dev).unwrap();
            let params = mlp.layout().slice(&flat).unwrap();
            // Enough samples of 7 cells for a pass over more than two tiles.
            let tiled = 2 * mlp.tile_rows() + 5;
            let (cells, samples) = (7, tiled / 7 + 2);
            let cond = Tensor::from_vec(uniform(cells * 5), (cells, 5), &dev).unwrap();
            let repeated = Tensor::cat(&vec![&cond; samples], 0).unwrap();
            let masks: Vec<Tensor> = if masked {
                let keep = 1.0 / 0.7f32;
                (config.hidden.iter())
                    .map(|&w| {
                        let values = uniform(w)
                            .into_iter()
                            .map(|u| if u < -0.4 { 0.0 } else { keep });
                        Tensor::from_vec(values.collect(), (1, w), &dev).unwrap()
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let network = SamplingNetwork {
                params: &params,
                masks: &masks,
                context: mlp.sampling_context(&params, &cond).unwrap(),
            };
            assert!(network.context.is_some(), "the CPU takes the fused pass");
            // The last case crosses two tiles of the pass and ends in a part
            // of one.
            for (start, len, step) in [(0, 21, 0), (5, 9, 37), (13, 8, 99), (3, tiled, 50)] {
                let x = Tensor::from_vec(uniform(len * data_dim), (len, data_dim), &dev).unwrap();
                let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let fused = values(
                    mlp.forward_sampling(&network, &x, step, &repeated, start)
                        .unwrap(),
                );
                let cond = repeated.narrow(0, start, len).unwrap();
                let plain = values(
                    mlp.forward_masked(&params, &x, &vec![step; len], &cond, &masks)
                        .unwrap(),
                );
                assert_eq!(fused.len(), len * data_dim);
                let case =
                    format!("d = {data_dim}, {activation:?}, masks {masked}, rows {start}+{len}");
                let scale = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(scale > 0.0, "{case}: all zero");
                for (f, p) in fused.iter().zip(&plain) {
                    assert!((f - p).abs() <= 1e-6 * scale, "{case}: {f} vs {p}");
                }
            }
            // No rows: an empty output, as the layer-by-layer pass gives.
            let none = Tensor::zeros((0, data_dim), candle_core::DType::F32, &dev).unwrap();
            let empty = mlp
                .forward_sampling(&network, &none, 10, &repeated, 4)
                .unwrap();
            assert_eq!(empty.dims(), &[0, data_dim]);
        }
    }
}
