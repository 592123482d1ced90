//! AdamW (decoupled weight decay) over the hyper-network's variables, with
//! its moments kept by name so checkpoints resume the exact trajectory.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result};
use crate::host::with_host;

/// Optimiser settings (paper: Adam, lr 1e-4; reference: AdamW, wd 0.01).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// AdamW state.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
    vars: Vec<(String, Var)>,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl AdamW {
    /// `vars` sorted by name so updates are in a fixed order.
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            config,
            step: 0,
            vars,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update from `loss` at learning rate `lr`.
    pub fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        self.apply(&loss.backward().ctx("backward")?, lr)
    }

    /// One update from gradients already taken. On the CPU the variables
    /// update side by side, one per thread at a time: a hyper-network's
    /// output layer and skip hold most of its parameters, and updating them
    /// in turn was a fixed cost of every HyperDM update.
    pub fn apply(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let update = Update::new(&self.config, self.step, lr);
        let (m_all, v_all) = (&self.m, &self.v);
        let one = |(name, var): &(String, Var)| -> Option<Result<(String, Tensor, Tensor)>> {
            let g = grads.get(var)?;
            let moments = (m_all.get(name), v_all.get(name));
            let next = if var.device().is_cpu() {
                update.fused_cpu(var.as_tensor(), g, moments)
            } else {
                update.tensors(var.as_tensor(), g, moments)
            };
            Some(next.and_then(|(next, m, v)| {
                var.set(&next).ctx("AdamW")?;
                Ok((name.clone(), m, v))
            }))
        };
        let on_cpu = self.vars.iter().all(|(_, var)| var.device().is_cpu());
        let done: Vec<Result<(String, Tensor, Tensor)>> = if on_cpu {
            self.vars.par_iter().filter_map(one).collect()
        } else {
            self.vars.iter().filter_map(one).collect()
        };
        for result in done {
            let (name, m, v) = result?;
            self.m.insert(name.clone(), m);
            self.v.insert(name, v);
        }
        Ok(())
    }

    /// Moments as named tensors (`adam.m.<var>`, `adam.v.<var>`).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("adam.m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("adam.v.{k}"), t.clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`].
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, step: u64) {
        self.step = step;
        for (k, t) in tensors {
            if let Some(name) = k.strip_prefix("adam.m.") {
                self.m.insert(name.to_string(), t.clone());
            } else if let Some(name) = k.strip_prefix("adam.v.") {
                self.v.insert(name.to_string(), t.clone());
            }
        }
    }
}

/// One AdamW update at step `t` (bias corrections) and rate `lr`, applied
/// to a parameter, its gradient and its previous moments (absent at first):
/// each method returns the new parameter and moments.
struct Update<'a> {
    c: &'a AdamWConfig,
    lr: f64,
    bc1: f64,
    bc2: f64,
}

type Previous<'a> = (Option<&'a Tensor>, Option<&'a Tensor>);

impl<'a> Update<'a> {
    fn new(c: &'a AdamWConfig, t: u64, lr: f64) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        Self {
            c,
            lr,
            bc1: 1.0 - c.beta1.powi(t),
            bc2: 1.0 - c.beta2.powi(t),
        }
    }

    /// As candle tensor operations (any device).
    fn tensors(
        &self,
        theta: &Tensor,
        g: &Tensor,
        (m_prev, v_prev): Previous,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = self.c;
        let zeros = || g.zeros_like().ctx("AdamW");
        let m_prev = m_prev.cloned().map_or_else(zeros, Ok)?;
        let v_prev = v_prev.cloned().map_or_else(zeros, Ok)?;
        let m = (m_prev.affine(c.beta1, 0.0).ctx("AdamW")?
            + g.affine(1.0 - c.beta1, 0.0).ctx("AdamW")?)
        .ctx("AdamW")?;
        let v = (v_prev.affine(c.beta2, 0.0).ctx("AdamW")?
            + g.sqr()
                .ctx("AdamW")?
                .affine(1.0 - c.beta2, 0.0)
                .ctx("AdamW")?)
        .ctx("AdamW")?;
        let update = m
            .affine(1.0 / self.bc1, 0.0)
            .and_then(|mh| mh.broadcast_div(&(v.affine(1.0 / self.bc2, 0.0)?.sqrt()? + c.eps)?))
            .ctx("AdamW")?;
        let next = (theta
            .affine(1.0 - self.lr * c.weight_decay, 0.0)
            .ctx("AdamW")?
            - update.affine(self.lr, 0.0).ctx("AdamW")?)
        .ctx("AdamW")?;
        Ok((next, m, v))
    }

    /// One pass over plain floats on the CPU, read in place from the
    /// tensors' storage and split over the threads in chunks: the
    /// hyper-network's output layer alone has ≈ 180,000 parameters, and
    /// copying four tensors out before the pass cost as much as the pass.
    fn fused_cpu(
        &self,
        theta: &Tensor,
        g: &Tensor,
        (m_prev, v_prev): Previous,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n = g.elem_count();
        let zeros = vec![
            0f32;
            if m_prev.is_none() || v_prev.is_none() {
                n
            } else {
                0
            }
        ];
        let (mut theta_n, mut m_n, mut v_n) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        with_host(theta, |theta_v| {
            with_host(g, |g_v| {
                with_opt_host(m_prev, &zeros, |m_v| {
                    with_opt_host(v_prev, &zeros, |v_v| {
                        self.fused_pass(
                            (theta_v, g_v, m_v, v_v),
                            (&mut theta_n, &mut m_n, &mut v_n),
                        );
                        Ok(())
                    })
                })
            })
        })?;
        let (shape, device) = (theta.shape(), theta.device());
        Ok((
            Tensor::from_vec(theta_n, shape, device).ctx("AdamW")?,
            Tensor::from_vec(m_n, shape, device).ctx("AdamW")?,
            Tensor::from_vec(v_n, shape, device).ctx("AdamW")?,
        ))
    }

    /// The element-wise update of `fused_cpu`: reads (θ, g, m, v), writes
    /// the new (θ, m, v).
    fn fused_pass(
        &self,
        old: (&[f32], &[f32], &[f32], &[f32]),
        new: (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        /// Elements per task: large enough to amortise a task.
        const CHUNK: usize = 16 * 1024;
        let c = self.c;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (inv_bc1, inv_bc2) = ((1.0 / self.bc1) as f32, (1.0 / self.bc2) as f32);
        let decay = (1.0 - self.lr * c.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, c.eps as f32);
        let (theta, g, m, v) = old;
        let (theta_n, m_n, v_n) = new;
        theta_n
            .par_chunks_mut(CHUNK)
            .zip(m_n.par_chunks_mut(CHUNK))
            .zip(v_n.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(i, ((tn, mn), vn))| {
                let at = i * CHUNK;
                for j in 0..tn.len() {
                    let (gj, p) = (g[at + j], theta[at + j]);
                    let mj = flush_subnormal(b1 * m[at + j] + (1.0 - b1) * gj);
                    let vj = flush_subnormal(b2 * v[at + j] + (1.0 - b2) * gj * gj);
                    let update = (mj * inv_bc1) / ((vj * inv_bc2).sqrt() + eps);
                    tn[j] = p * decay - lr * update;
                    mn[j] = mj;
                    vn[j] = vj;
                }
            });
    }
}

/// [`with_host`] for a moment that may not exist yet (`zeros` then).
fn with_opt_host<R>(
    t: Option<&Tensor>,
    zeros: &[f32],
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    match t {
        Some(t) => with_host(t, f),
        None => f(zeros),
    }
}

/// Zero for subnormal floats. The second moment of a parameter whose
/// gradient is nearly always zero decays into the subnormal range, where
/// every operation on it is many times slower; values under 1.2e-38 change
/// no update.
#[inline]
fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The fused CPU pass and the tensor operations (which CUDA runs) make
    /// the same updates, weight decay and bias correction included.
    /// Across the chunks the fused pass is split into (40,000 elements:
    /// two full chunks and a partial one, read from a non-contiguous view
    /// too), every element gets its own update. Tolerance 1e-6.
    #[test]
    fn fused_update_covers_every_chunk() {
        let c = AdamWConfig::default();
        let dev = Device::Cpu;
        let n = 40_000;
        let theta = Tensor::arange(0f32, n as f32, &dev)
            .and_then(|t| t.affine(1e-4, -2.0))
            .unwrap();
        let g = theta.sin().unwrap();
        // A transposed view: the copy path instead of the in-place read.
        let g_t = g.reshape((200, 200)).and_then(|t| t.t()).unwrap();
        let theta_t = theta.reshape((200, 200)).and_then(|t| t.t()).unwrap();
        let u = Update::new(&c, 3, 1e-2);
        for (theta, g) in [(&theta, &g), (&theta_t, &g_t)] {
            let m = g.affine(0.5, 0.0).unwrap();
            let v = g.sqr().unwrap();
            let f = u.fused_cpu(theta, g, (Some(&m), Some(&v))).unwrap();
            let r = u.tensors(theta, g, (Some(&m), Some(&v))).unwrap();
            for (a, b) in [(f.0, r.0), (f.1, r.1), (f.2, r.2)] {
                let diff = (a.flatten_all().unwrap() - b.flatten_all().unwrap())
                    .and_then(|d| d.abs())
                    .and_then(|d| d.max_all())
                    .and_then(|d| d.to_scalar::<f32>())
                    .unwrap();
                assert!(diff < 1e-6, "fused and tensor AdamW differ by {diff}");
            }
        }
    }

    #[test]
    fn fused_update_matches_the_tensor_operations() {
        let c = AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let dev = Device::Cpu;
        let mut theta = Tensor::new(&[[0.5f32, -1.0, 2.0], [0.0, 3.0, -0.25]], &dev).unwrap();
        let (mut fused, mut reference) = (theta.clone(), theta.clone());
        let (mut fm, mut fv, mut rm, mut rv) = (None, None, None, None);
        for t in 1..=4u64 {
            // Gradients that change sign and scale, one of them exactly zero.
            let scale = [1.0f32, -0.5, 2.0, 0.1][t as usize - 1];
            let g = (theta.affine(f64::from(scale), 0.0).unwrap()
                * Tensor::new(&[[1f32, 0.0, 1.0], [2.0, 1.0, -3.0]], &dev).unwrap())
            .unwrap();
            let u = Update::new(&c, t, c.lr * (1.0 - 0.1 * t as f64));
            let f = u.fused_cpu(&fused, &g, (fm.as_ref(), fv.as_ref())).unwrap();
            let r = u
                .tensors(&reference, &g, (rm.as_ref(), rv.as_ref()))
                .unwrap();
            (fused, fm, fv) = (f.0, Some(f.1), Some(f.2));
            (reference, rm, rv) = (r.0, Some(r.1), Some(r.2));
            theta = reference.clone();
        }
        let diff = (fused - &reference)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap();
        assert!(diff < 1e-6, "fused and tensor AdamW differ by {diff}");
        // Each parameter moved (the zero-gradient one by weight decay only).
        let moved = (reference
            - Tensor::new(&[[0.5f32, -1.0, 2.0], [0.0, 3.0, -0.25]], &dev).unwrap())
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.to_vec1::<f32>())
        .unwrap();
        assert!(
            moved.iter().enumerate().all(|(i, d)| i == 3 || *d > 1e-3),
            "{moved:?}"
        );
    }
}
