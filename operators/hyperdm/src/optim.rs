//! AdamW (decoupled weight decay) over the hyper-network's variables, with
//! its moments kept by name so checkpoints resume the exact trajectory.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
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
        let grads = loss.backward().ctx("backward")?;
        self.step += 1;
        let c = &self.config;
        let (bc1, bc2) = (
            1.0 - c.beta1.powi(self.step as i32),
            1.0 - c.beta2.powi(self.step as i32),
        );
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var) else { continue };
            let m_prev = match self.m.get(name) {
                Some(m) => m.clone(),
                None => g.zeros_like().ctx("AdamW")?,
            };
            let v_prev = match self.v.get(name) {
                Some(v) => v.clone(),
                None => g.zeros_like().ctx("AdamW")?,
            };
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
                .affine(1.0 / bc1, 0.0)
                .and_then(|mh| mh.broadcast_div(&(v.affine(1.0 / bc2, 0.0)?.sqrt()? + c.eps)?))
                .ctx("AdamW")?;
            let theta = var.as_tensor();
            let next = (theta.affine(1.0 - lr * c.weight_decay, 0.0).ctx("AdamW")?
                - update.affine(lr, 0.0).ctx("AdamW")?)
            .ctx("AdamW")?;
            var.set(&next).ctx("AdamW")?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
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
