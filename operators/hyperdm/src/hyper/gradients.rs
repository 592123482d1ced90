//! θ's gradients from ∂L/∂φ, written out on the host.
//!
//! The hyper-network is an MLP whose output layer (and skip) hold nearly
//! all of θ: P outputs from a hidden width of 16 or so, for K ≤ 8 networks
//! per update. Its gradients are a few outer products and reductions over
//! P; as candle operations (autograd, or closed-form matmuls with one side
//! only K rows tall) they cost about 1 ms per update on 2 cores, a third of
//! a plain network's whole update, spent on dispatch, strided layouts and
//! intermediates. Here each is one loop: the output layer's weight, bias
//! and the hidden activations' gradient in one pass over P, shared out in
//! row blocks; the skip in another; the narrow hidden layers by hand.

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use candle_nn::Linear;
use rayon::prelude::*;

use super::HyperNetwork;
use crate::error::{CandleContext, HyperdmError, Result};
use crate::host::with_host;

/// Output rows per task: enough work (rows × width × K multiply-adds) to
/// amortise handing a task to a thread.
const ROWS_PER_TASK: usize = 2048;

const CTX: &str = "hyper-network gradients";

impl HyperNetwork {
    /// θ's gradients from ∂L/∂φ (`dphi`, `[K, P]`, detached) for
    /// φ = forward(z), `z` being `[K, z_dim]`. Same values as
    /// back-propagating through [`HyperNetwork::forward`] up to the order of
    /// float additions (`hyper_gradients_match_autograd`).
    pub fn gradients(&self, z: &Tensor, dphi: &Tensor) -> Result<GradStore> {
        if self.rank1() {
            return Ok(self.rank1_gradients(z, dphi, None)?.0);
        }
        self.output_gradients(z, dphi)
    }

    /// θ's gradients, but the centred base's, from ∂L/∂(the output layer
    /// plus skip), `dphi` `[K, outputs]`: the weights for the full form,
    /// the factors for the rank-1 form (whose base `rank1_gradients` adds).
    fn output_gradients(&self, z: &Tensor, dphi: &Tensor) -> Result<GradStore> {
        let (members, outputs) = dphi.dims2().ctx(CTX)?;
        let z_shape = z.dims2().ctx(CTX)?;
        let out_shape = self.out.weight().dims2().ctx(CTX)?;
        if z_shape != (members, self.z_dim) || out_shape.0 != outputs {
            return Err(HyperdmError::Config {
                field: "hyper-network gradients",
                problem: format!(
                    "z {z_shape:?} and ∂L/∂φ {:?} do not fit a hyper-network with z_dim {} \
                     and {} outputs",
                    (members, outputs),
                    self.z_dim,
                    out_shape.0
                ),
            });
        }
        let device = dphi.device();
        let z_host = with_host(z, |v| Ok(v.to_vec()))?;
        // Every hidden layer's output, after the ReLU, recomputed here: a
        // few hundred multiply-adds per network.
        let layers = self
            .hidden
            .iter()
            .map(Dense::read)
            .collect::<Result<Vec<_>>>()?;
        let odd = self.centred();
        let mut acts = vec![z_host.clone()];
        for layer in &layers {
            let next = layer.forward(&acts[acts.len() - 1], members, odd);
            acts.push(next);
        }
        let h = &acts[acts.len() - 1];
        let width = h.len() / members.max(1);

        let mut grads = GradStore::default();
        let mut d_weight = vec![0f32; outputs * width];
        let mut d_bias = vec![0f32; outputs];
        let d_hidden = with_host(dphi, |dphi| {
            with_host(self.out.weight(), |w| {
                Ok(output_layer_pass(
                    dphi,
                    w,
                    h,
                    (members, outputs, width),
                    &mut d_weight,
                    &mut d_bias,
                ))
            })
        })?;
        grads.insert(
            self.out.weight(),
            Tensor::from_vec(d_weight, (outputs, width), device).ctx(CTX)?,
        );
        if let Some(bias) = self.out.bias() {
            grads.insert(bias, Tensor::from_vec(d_bias, outputs, device).ctx(CTX)?);
        }
        if let Some(skip) = &self.skip {
            let d_skip = with_host(dphi, |dphi| {
                Ok(skip_pass(dphi, &z_host, (members, outputs, self.z_dim)))
            })?;
            grads.insert(
                skip,
                Tensor::from_vec(d_skip, (self.z_dim, outputs), device).ctx(CTX)?,
            );
        }
        if let Some((base, inverse)) = self.base.as_ref().filter(|_| self.centred()) {
            // φ holds base/gain: ∂L/∂base is Σ_k ∂L/∂φ_k / gain.
            let d_base = with_host(dphi, |dphi| {
                with_host(inverse, |inverse| Ok(base_pass(dphi, inverse, members)))
            })?;
            grads.insert(base, Tensor::from_vec(d_base, outputs, device).ctx(CTX)?);
        }
        // The hidden layers, last to first: ∂L/∂(pre-activation) is the
        // activation's gradient times its slope, written with its output a:
        // 1 − a² for tanh, 1 where the ReLU passed its input.
        let mut d_act = d_hidden;
        for (l, (layer, linear)) in layers.iter().zip(&self.hidden).enumerate().rev() {
            let d_pre: Vec<f32> = d_act
                .iter()
                .zip(&acts[l + 1])
                .map(|(&d, &a)| match (odd, a > 0.0) {
                    (true, _) => d * (1.0 - a * a),
                    (false, true) => d,
                    (false, false) => 0.0,
                })
                .collect();
            let (d_w, d_b, d_in) = layer.backward(&d_pre, &acts[l], members);
            grads.insert(
                linear.weight(),
                Tensor::from_vec(d_w, (layer.outputs, layer.inputs), device).ctx(CTX)?,
            );
            if let Some(bias) = linear.bias() {
                grads.insert(bias, Tensor::from_vec(d_b, layer.outputs, device).ctx(CTX)?);
            }
            d_act = d_in;
        }
        Ok(grads)
    }
}

impl HyperNetwork {
    /// The rank-1 form's θ gradients from ∂L/∂φ, with the anchor term
    /// λ·mean((f(z) − A·z)²) on its factors f when `anchor` is given; also
    /// that term's value. ∂L/∂φ becomes ∂L/∂f and ∂L/∂base in one host
    /// pass over P (`factors::backward`), then ∂L/∂f goes through the
    /// generator like the full form's ∂L/∂φ.
    pub fn rank1_gradients(
        &self,
        z: &Tensor,
        dphi: &Tensor,
        anchor: Option<(&Tensor, f64)>,
    ) -> Result<(GradStore, Option<Tensor>)> {
        let (Some(blocks), Some((base, inverse))) = (&self.factors, &self.base) else {
            return Err(HyperdmError::Config {
                field: "hyper-network gradients",
                problem: "not a rank-1 hyper-network".into(),
            });
        };
        let f = self.generated(z)?;
        let (members, width) = f.dims2().ctx(CTX)?;
        let weights = base.dim(0).ctx(CTX)?;
        if dphi.dims2().ctx(CTX)? != (members, weights) {
            return Err(HyperdmError::Config {
                field: "hyper-network gradients",
                problem: format!(
                    "∂L/∂φ {:?} does not fit {members} networks of {weights} weights",
                    dphi.dims()
                ),
            });
        }
        let f_host = with_host(&f, |v| Ok(v.to_vec()))?;
        let (mut d_f, d_base) = with_host(dphi, |dphi| {
            with_host(base, |base| {
                with_host(inverse, |inverse| {
                    Ok(super::factors::backward(
                        blocks,
                        (&f_host, width),
                        dphi,
                        base,
                        inverse,
                    ))
                })
            })
        })?;
        let mut value = None;
        if let Some((map, weight)) = anchor.filter(|&(_, w)| w > 0.0) {
            // λ·mean(gap²) adds 2λ·gap/numel to ∂L/∂f.
            let gap = z.matmul(map).and_then(|t| &f - t).ctx("anchor")?;
            let scale = (2.0 * weight / gap.elem_count() as f64) as f32;
            with_host(&gap, |gap| {
                d_f.iter_mut().zip(gap).for_each(|(d, g)| *d += scale * g);
                Ok(())
            })?;
            value = Some(
                gap.sqr()
                    .and_then(|g| g.mean_all())
                    .and_then(|g| g.affine(weight, 0.0))
                    .ctx("anchor")?,
            );
        }
        let device = dphi.device();
        let d_f = Tensor::from_vec(d_f, (members, width), device).ctx(CTX)?;
        let mut grads = self.output_gradients(z, &d_f)?;
        grads.insert(base, Tensor::from_vec(d_base, weights, device).ctx(CTX)?);
        Ok((grads, value))
    }
}

/// For the output layer φ = W·h + b (W `[P, width]`): fills ∂L/∂W and ∂L/∂b
/// and returns ∂L/∂h `[K, width]`, in one pass over P.
fn output_layer_pass(
    dphi: &[f32],
    w: &[f32],
    h: &[f32],
    (members, outputs, width): (usize, usize, usize),
    d_weight: &mut [f32],
    d_bias: &mut [f32],
) -> Vec<f32> {
    let zero = || vec![0f32; members * width];
    d_weight
        .par_chunks_mut(ROWS_PER_TASK * width.max(1))
        .zip(d_bias.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .map(|(block, (dw, db))| {
            let first = block * ROWS_PER_TASK;
            let mut d_h = zero();
            for (r, (dw_row, db_p)) in dw.chunks_mut(width.max(1)).zip(db.iter_mut()).enumerate() {
                let p = first + r;
                let w_row = &w[p * width..(p + 1) * width];
                for k in 0..members {
                    let g = dphi[k * outputs + p];
                    *db_p += g;
                    let h_k = &h[k * width..(k + 1) * width];
                    let dh_k = &mut d_h[k * width..(k + 1) * width];
                    for j in 0..width {
                        dw_row[j] += g * h_k[j];
                        dh_k[j] += g * w_row[j];
                    }
                }
            }
            d_h
        })
        .reduce(zero, |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
}

/// ∂L/∂S `[z_dim, P]` for the skip φ += z·S: Σ_k z[k, i]·∂L/∂φ[k, p].
fn skip_pass(
    dphi: &[f32],
    z: &[f32],
    (members, outputs, z_dim): (usize, usize, usize),
) -> Vec<f32> {
    let mut d_skip = vec![0f32; z_dim * outputs];
    d_skip
        .par_chunks_mut(outputs.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for k in 0..members {
                let zki = z[k * z_dim + i];
                let g = &dphi[k * outputs..(k + 1) * outputs];
                row.iter_mut().zip(g).for_each(|(r, g)| *r += zki * g);
            }
        });
    d_skip
}

/// ∂L/∂base `[P]`: Σ_k ∂L/∂φ[k, p] / gain[p] (`inverse` holds 1/gain).
fn base_pass(dphi: &[f32], inverse: &[f32], members: usize) -> Vec<f32> {
    let outputs = inverse.len();
    let mut d_base = vec![0f32; outputs];
    d_base
        .par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(block, chunk)| {
            let first = block * ROWS_PER_TASK;
            for (r, d) in chunk.iter_mut().enumerate() {
                let p = first + r;
                let sum: f32 = (0..members).map(|k| dphi[k * outputs + p]).sum();
                *d = sum * inverse[p];
            }
        });
    d_base
}

/// A hidden layer's weight `[outputs, inputs]` and bias, on the host.
struct Dense {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    outputs: usize,
    inputs: usize,
}

impl Dense {
    fn read(linear: &Linear) -> Result<Self> {
        let (outputs, inputs) = linear.weight().dims2().ctx(CTX)?;
        Ok(Self {
            weight: with_host(linear.weight(), |v| Ok(v.to_vec()))?,
            bias: linear
                .bias()
                .map(|b| with_host(b, |v| Ok(v.to_vec())))
                .transpose()?,
            outputs,
            inputs,
        })
    }

    /// relu(x·Wᵀ + b), or tanh when `odd`, for `members` rows of x.
    fn forward(&self, x: &[f32], members: usize, odd: bool) -> Vec<f32> {
        let mut y = vec![0f32; members * self.outputs];
        for k in 0..members {
            let x_k = &x[k * self.inputs..(k + 1) * self.inputs];
            for o in 0..self.outputs {
                let w_o = &self.weight[o * self.inputs..(o + 1) * self.inputs];
                let b = self.bias.as_ref().map_or(0.0, |b| b[o]);
                let s: f32 = b + w_o.iter().zip(x_k).map(|(w, x)| w * x).sum::<f32>();
                y[k * self.outputs + o] = if odd { s.tanh() } else { s.max(0.0) };
            }
        }
        y
    }

    /// From ∂L/∂(pre-activation) `d_pre` and the layer's input `x`:
    /// (∂L/∂W, ∂L/∂b, ∂L/∂x).
    fn backward(&self, d_pre: &[f32], x: &[f32], members: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (outputs, inputs) = (self.outputs, self.inputs);
        let mut d_w = vec![0f32; outputs * inputs];
        let mut d_b = vec![0f32; outputs];
        let mut d_x = vec![0f32; members * inputs];
        for k in 0..members {
            for o in 0..outputs {
                let g = d_pre[k * outputs + o];
                d_b[o] += g;
                for i in 0..inputs {
                    d_w[o * inputs + i] += g * x[k * inputs + i];
                    d_x[k * inputs + i] += g * self.weight[o * inputs + i];
                }
            }
        }
        (d_w, d_b, d_x)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use crate::hyper::{HyperConfig, HyperForm, HyperNetwork};

    /// Every θ tensor's gradient equals autograd's through `forward` for
    /// ⟨φ(z), G⟩ with a random G, with and without hidden layers and skip,
    /// centred or not, and with more output rows than one task holds. Tolerance: 1e-5
    /// relative to the tensor's largest gradient entry (float sums in
    /// another order).
    #[test]
    fn hyper_gradients_match_autograd() {
        let device = Device::Cpu;
        for (hidden, z_skip, centred, outputs, members) in [
            (vec![16, 16], true, false, 5000, 4),
            (vec![6], false, false, 300, 1),
            (vec![], true, false, 2100, 3),
            (vec![16, 16], true, true, 5000, 4),
            (vec![6], false, true, 300, 2),
        ] {
            let config = HyperConfig {
                z_dim: 5,
                hidden,
                z_skip,
                z_init: 1.0,
                centred,
                z_lr: 1.0,
                form: HyperForm::Full,
            };
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            // Gains as a layout has them: a few distinct values.
            let gains: Vec<f32> = (0..outputs).map(|p| [0.125, 0.1, 0.5][p % 3]).collect();
            let net = HyperNetwork::new(vb, &config, &gains).unwrap();
            // The skip and base start at zero; give them values so their
            // paths count.
            for (name, var) in varmap.data().lock().unwrap().iter() {
                if name == "skip" || name == "base" {
                    let s = Tensor::randn(0f32, 0.3, var.shape(), &device).unwrap();
                    var.set(&s).unwrap();
                }
            }
            let z = Tensor::randn(0f32, 1.0, (members, 5), &device).unwrap();
            let dphi = Tensor::randn(0f32, 1.0, (members, outputs), &device).unwrap();
            let auto = (net.forward(&z).unwrap() * &dphi)
                .and_then(|p| p.sum_all())
                .and_then(|p| p.backward())
                .unwrap();
            let ours = net.gradients(&z, &dphi).unwrap();
            // A ∂L/∂φ of the wrong width or a z of another draw count is an
            // error, not an out-of-bounds panic.
            let narrow = dphi.narrow(1, 0, outputs - 1).unwrap();
            assert!(net.gradients(&z, &narrow).is_err());
            let more = Tensor::cat(&[&z, &z], 0).unwrap();
            assert!(net.gradients(&more, &dphi).is_err());
            let data = varmap.data().lock().unwrap();
            // Weights and biases, or weights and the base when centred.
            let per_layer = if centred { 1 } else { 2 };
            assert_eq!(
                data.len(),
                per_layer * (config.hidden.len() + 1) + usize::from(z_skip) + usize::from(centred)
            );
            for (name, var) in data.iter() {
                let a = auto.get(var.as_tensor()).expect("autograd gradient");
                let o = ours
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                assert_eq!(a.dims(), o.dims(), "{name}");
                let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let o = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
                for (x, y) in a.iter().zip(&o) {
                    assert!(
                        (x - y).abs() <= 1e-5 * scale,
                        "{name}: autograd {x}, by hand {y} (scale {scale})"
                    );
                }
            }
        }
    }
}
