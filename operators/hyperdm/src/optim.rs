//! AdamW (decoupled weight decay) over the hyper-network's variables, with
//! its moments kept by name so checkpoints resume the exact trajectory.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, HyperdmError, Result};
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
    /// Variables sorted by name, each with its moments (none before the
    /// first update that reaches it).
    vars: Vec<(String, Var, Option<Moments>)>,
    /// Learning-rate factors of variables that do not learn at the common
    /// rate, by name.
    lr_scales: HashMap<String, f64>,
}

/// A variable's first and second moments. On the CPU they are plain
/// floats updated in place: the hyper-network's output layer and skip hold
/// ≈ 285,000 parameters, and allocating (and zeroing) two new moment
/// tensors of that size every update was a fixed cost of HyperDM's.
#[derive(Debug)]
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

impl AdamW {
    /// `vars` sorted by name so updates are in a fixed order.
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            config,
            step: 0,
            vars: vars.into_iter().map(|(n, v)| (n, v, None)).collect(),
            lr_scales: HashMap::new(),
        }
    }

    /// Every variable learns at `scale(name)` times the rate of each
    /// update (1: the common rate).
    pub fn with_lr_scales(mut self, scale: impl Fn(&str) -> f64) -> Self {
        self.lr_scales = self
            .vars
            .iter()
            .map(|(name, _, _)| (name.clone(), scale(name)))
            .filter(|&(_, s)| s != 1.0)
            .collect();
        self
    }

    /// One update from `loss` at learning rate `lr`.
    pub fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        self.apply(&loss.backward().ctx("backward")?, lr)
    }

    /// One update from gradients already taken. On the CPU the variables
    /// update side by side, one per thread at a time, and each variable's
    /// pass is split over the threads too.
    pub fn apply(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let (config, step, scales) = (&self.config, self.step, &self.lr_scales);
        let one =
            |(name, var, moments): &mut (String, Var, Option<Moments>)| -> Option<Result<()>> {
                let g = grads.get(var)?;
                let lr = lr * scales.get(name.as_str()).copied().unwrap_or(1.0);
                Some(Update::new(config, step, lr).apply(var, g, moments))
            };
        let on_cpu = self.vars.iter().all(|(_, var, _)| var.device().is_cpu());
        let done: Vec<Result<()>> = if on_cpu {
            self.vars.par_iter_mut().filter_map(one).collect()
        } else {
            self.vars.iter_mut().filter_map(one).collect()
        };
        done.into_iter().collect()
    }

    /// Moments as named tensors (`adam.m.<var>`, `adam.v.<var>`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, var, moments) in &self.vars {
            let (m, v) = match moments {
                None => continue,
                Some(Moments::Tensors { m, v }) => (m.clone(), v.clone()),
                Some(Moments::Host { m, v }) => (
                    Tensor::from_slice(m, var.shape(), var.device()).ctx("AdamW state")?,
                    Tensor::from_slice(v, var.shape(), var.device()).ctx("AdamW state")?,
                ),
            };
            out.insert(format!("adam.m.{name}"), m);
            out.insert(format!("adam.v.{name}"), v);
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state`]; a variable needs both of
    /// its moments, with its own shape.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        self.step = step;
        for (name, var, moments) in &mut self.vars {
            let m = tensors.get(&format!("adam.m.{name}"));
            let v = tensors.get(&format!("adam.v.{name}"));
            *moments = match (m, v) {
                (Some(m), Some(v)) if m.shape() == var.shape() && v.shape() == var.shape() => {
                    Some(Moments::Tensors {
                        m: m.clone(),
                        v: v.clone(),
                    })
                }
                (None, None) => None,
                _ => {
                    return Err(HyperdmError::Config {
                        field: "optimizer state",
                        problem: format!(
                            "the checkpoint's AdamW moments for `{name}` are missing one of m, v \
                             or do not have the variable's shape {:?}",
                            var.dims()
                        ),
                    });
                }
            };
        }
        Ok(())
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

    /// Updates `var` from its gradient `g` and its moments (zeros before
    /// the first update), which it replaces with the new ones.
    fn apply(&self, var: &Var, g: &Tensor, moments: &mut Option<Moments>) -> Result<()> {
        let ctx = "AdamW";
        if var.device().is_cpu() {
            let host = |t: &Tensor| with_host(t, |v| Ok(v.to_vec()));
            let (mut m, mut v) = match moments.take() {
                Some(Moments::Host { m, v }) => (m, v),
                Some(Moments::Tensors { m, v }) => (host(&m)?, host(&v)?),
                None => (vec![0f32; g.elem_count()], vec![0f32; g.elem_count()]),
            };
            let next = self.fused_cpu(var.as_tensor(), g, &mut m, &mut v)?;
            var.set(&next).ctx(ctx)?;
            *moments = Some(Moments::Host { m, v });
        } else {
            let tensor = |x: &[f32]| Tensor::from_slice(x, var.shape(), var.device()).ctx(ctx);
            let (m, v) = match moments.take() {
                Some(Moments::Tensors { m, v }) => (Some(m), Some(v)),
                Some(Moments::Host { m, v }) => (Some(tensor(&m)?), Some(tensor(&v)?)),
                None => (None, None),
            };
            let (next, m, v) = self.tensors(var.as_tensor(), g, (m.as_ref(), v.as_ref()))?;
            var.set(&next).ctx(ctx)?;
            *moments = Some(Moments::Tensors { m, v });
        }
        Ok(())
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

    /// One pass over plain floats on the CPU, θ and g read in place from
    /// the tensors' storage, the moments updated in place, split over the
    /// threads in chunks. Returns the new θ.
    fn fused_cpu(
        &self,
        theta: &Tensor,
        g: &Tensor,
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<Tensor> {
        let n = g.elem_count();
        if theta.elem_count() != n || m.len() != n || v.len() != n {
            return Err(HyperdmError::Config {
                field: "optimizer state",
                problem: format!(
                    "AdamW got {} parameters, {n} gradients and {}/{} moments",
                    theta.elem_count(),
                    m.len(),
                    v.len()
                ),
            });
        }
        let mut theta_n = vec![0f32; n];
        with_host(theta, |theta_v| {
            with_host(g, |g_v| {
                self.fused_pass((theta_v, g_v), (&mut theta_n, m, v));
                Ok(())
            })
        })?;
        Tensor::from_vec(theta_n, theta.shape(), theta.device()).ctx("AdamW")
    }

    /// The element-wise update of `fused_cpu`: reads (θ, g), writes the new
    /// θ and updates (m, v).
    fn fused_pass(&self, old: (&[f32], &[f32]), new: (&mut [f32], &mut [f32], &mut [f32])) {
        /// Elements per task: large enough to amortise a task.
        const CHUNK: usize = 16 * 1024;
        let c = self.c;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (inv_bc1, inv_bc2) = ((1.0 / self.bc1) as f32, (1.0 / self.bc2) as f32);
        let decay = (1.0 - self.lr * c.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, c.eps as f32);
        let (theta, g) = old;
        let (theta_n, m, v) = new;
        theta_n
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(i, ((tn, mc), vc))| {
                let at = i * CHUNK;
                for j in 0..tn.len() {
                    let (gj, p) = (g[at + j], theta[at + j]);
                    let mj = flush_subnormal(b1 * mc[j] + (1.0 - b1) * gj);
                    let vj = flush_subnormal(b2 * vc[j] + (1.0 - b2) * gj * gj);
                    let update = (mj * inv_bc1) / ((vj * inv_bc2).sqrt() + eps);
                    tn[j] = p * decay - lr * update;
                    mc[j] = mj;
                    vc[j] = vj;
                }
            });
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
    use candle_core::{DType, Device};

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
            let host = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (mut fm, mut fv) = (host(&m), host(&v));
            let f = u.fused_cpu(theta, g, &mut fm, &mut fv).unwrap();
            let r = u.tensors(theta, g, (Some(&m), Some(&v))).unwrap();
            let fm = Tensor::new(fm.as_slice(), &dev).unwrap();
            let fv = Tensor::new(fv.as_slice(), &dev).unwrap();
            for (a, b) in [(f, r.0), (fm, r.1), (fv, r.2)] {
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
        let (mut fm, mut fv) = (vec![0f32; 6], vec![0f32; 6]);
        let (mut rm, mut rv) = (None, None);
        for t in 1..=4u64 {
            // Gradients that change sign and scale, one of them exactly zero.
            let scale = [1.0f32, -0.5, 2.0, 0.1][t as usize - 1];
            let g = (theta.affine(f64::from(scale), 0.0).unwrap()
                * Tensor::new(&[[1f32, 0.0, 1.0], [2.0, 1.0, -3.0]], &dev).unwrap())
            .unwrap();
            let u = Update::new(&c, t, c.lr * (1.0 - 0.1 * t as f64));
            fused = u.fused_cpu(&fused, &g, &mut fm, &mut fv).unwrap();
            let r = u
                .tensors(&reference, &g, (rm.as_ref(), rv.as_ref()))
                .unwrap();
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

    /// Moments saved by `state` come back through `restore` and the next
    /// update is the same bits; moments of the wrong shape, or only one of
    /// the two, are refused with the variable's name.
    #[test]
    fn restored_moments_continue_the_trajectory_and_bad_ones_are_refused() {
        let dev = Device::Cpu;
        let start = Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let run = |optimizer: &mut AdamW, var: &Var| {
            let loss = var.as_tensor().sqr().and_then(|t| t.sum_all()).unwrap();
            optimizer.step(&loss, 1e-2).unwrap();
        };
        let var = Var::from_tensor(&start).unwrap();
        let mut first = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default());
        run(&mut first, &var);
        run(&mut first, &var);
        let saved = first.state().unwrap();
        assert_eq!(saved.len(), 2);
        let resumed_var = Var::from_tensor(var.as_tensor()).unwrap();
        let mut resumed = AdamW::new(
            vec![("w".into(), resumed_var.clone())],
            AdamWConfig::default(),
        );
        resumed.restore(&saved, first.step).unwrap();
        run(&mut first, &var);
        run(&mut resumed, &resumed_var);
        let bits = |v: &Var| v.as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&var), bits(&resumed_var));

        let mut wrong = saved.clone();
        wrong.insert(
            "adam.v.w".into(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
        );
        let err = resumed.restore(&wrong, 2).unwrap_err().to_string();
        assert!(err.contains("`w`"), "{err}");
        let mut half = saved;
        half.remove("adam.m.w");
        assert!(resumed.restore(&half, 2).is_err());
    }

    /// A variable given a learning-rate factor moves by that factor times
    /// the others' step: Adam's first step is lr·g/(|g| + ε) per element,
    /// so with weight decay off each element moves by lr (2e-2) or
    /// 0.25·lr. Tolerance 1e-6 (ε and float rounding).
    #[test]
    fn lr_scales_slow_the_named_variables_only() {
        let dev = Device::Cpu;
        let start = Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let fast = Var::from_tensor(&start).unwrap();
        let slow = Var::from_tensor(&start).unwrap();
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut optimizer = AdamW::new(
            vec![("fast".into(), fast.clone()), ("slow".into(), slow.clone())],
            config,
        )
        .with_lr_scales(|name| if name == "slow" { 0.25 } else { 1.0 });
        let loss = (fast.as_tensor().sqr().and_then(|t| t.sum_all()).unwrap()
            + slow.as_tensor().sqr().and_then(|t| t.sum_all()).unwrap())
        .unwrap();
        optimizer.step(&loss, 2e-2).unwrap();
        let before = start.to_vec1::<f32>().unwrap();
        for (var, factor) in [(&fast, 1.0f32), (&slow, 0.25)] {
            let after = var.as_tensor().to_vec1::<f32>().unwrap();
            for (b, a) in before.iter().zip(&after) {
                let moved = b - a;
                assert!(
                    (moved - factor * 2e-2 * b.signum()).abs() < 1e-6,
                    "moved {moved} at factor {factor}"
                );
            }
        }
    }
}
