//! AdamW (decoupled weight decay) over the hyper-network's variables, with
//! its moments kept by name so checkpoints resume the exact trajectory.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result};

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

    /// The same in one pass over host memory. On the CPU the tensor version
    /// costs a dozen full passes and allocations per variable, and the
    /// hyper-network's output layer and skip are many times the primary
    /// network's size: this pass took a HyperDM update from 1.51× to 1.34×
    /// a plain network's (`benches/training.rs`).
    fn fused_cpu(
        &self,
        theta: &Tensor,
        g: &Tensor,
        (m_prev, v_prev): Previous,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = self.c;
        let host = |t: &Tensor| {
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .ctx("AdamW")
        };
        let mut theta_v = host(theta)?;
        let g_v = host(g)?;
        let mut m_v = m_prev.map_or_else(|| Ok(vec![0.0; g_v.len()]), host)?;
        let mut v_v = v_prev.map_or_else(|| Ok(vec![0.0; g_v.len()]), host)?;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (inv_bc1, inv_bc2) = ((1.0 / self.bc1) as f32, (1.0 / self.bc2) as f32);
        let decay = (1.0 - self.lr * c.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, c.eps as f32);
        for (((p, &g), m), v) in theta_v.iter_mut().zip(&g_v).zip(&mut m_v).zip(&mut v_v) {
            *m = flush_subnormal(b1 * *m + (1.0 - b1) * g);
            *v = flush_subnormal(b2 * *v + (1.0 - b2) * g * g);
            let update = (*m * inv_bc1) / ((*v * inv_bc2).sqrt() + eps);
            *p = *p * decay - lr * update;
        }
        let (shape, device) = (theta.shape(), theta.device());
        Ok((
            Tensor::from_vec(theta_v, shape, device).ctx("AdamW")?,
            Tensor::from_vec(m_v, shape, device).ctx("AdamW")?,
            Tensor::from_vec(v_v, shape, device).ctx("AdamW")?,
        ))
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
