//! The Bayesian hyper-network h_θ: z ~ N(0, I) → every parameter of the
//! primary network. Drawing z draws a network; only θ is trained.

use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder, linear};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result};

mod gradients;

/// Shape of the hyper-network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HyperConfig {
    /// Dimension of z (paper: 8; reference code: 1).
    pub z_dim: usize,
    /// Hidden widths (paper: 8 8 8 8 8 for the toy, 24 ×5 for ERA5).
    pub hidden: Vec<usize>,
    /// Adds a trained linear path S·z straight to the output (S starts
    /// uniform ±1/√z_dim, like every hyper-network layer: the seeded
    /// initialisation in `HyperDm::with_method` sets it). Narrow ReLU layers cannot carry z to the weights linearly, so
    /// without it anchored training cannot follow each network's anchor A·z
    /// where the data leave the weights free (crate README, toy table).
    #[serde(default)]
    pub z_skip: bool,
    /// The layers through which z reaches the weights (the output layer's
    /// weights and the skip) start at this fraction of their usual
    /// ±1/√fan_in. At 1, each z draws a network as different from the next
    /// as two random initialisations, and training never quite undoes that
    /// where the data decide the weights: the networks fit as an average
    /// of perturbed networks. Small, they start as one network, and the
    /// anchor spreads them where the data leave the weights free. On the
    /// pipeline's benchmark 0.1 did not fit measurably better and detected
    /// OOD inputs less well (root README, "Where HyperDM's fit goes").
    #[serde(default = "one")]
    pub z_init: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for HyperConfig {
    fn default() -> Self {
        Self {
            z_dim: 8,
            hidden: vec![8; 5],
            z_skip: false,
            z_init: 1.0,
        }
    }
}

/// An MLP (ReLU) whose last Linear emits the flat primary-parameter vector.
#[derive(Debug, Clone)]
pub struct HyperNetwork {
    hidden: Vec<Linear>,
    out: Linear,
    skip: Option<Tensor>,
    z_dim: usize,
}

impl HyperNetwork {
    pub fn new(vb: VarBuilder, config: &HyperConfig, outputs: usize) -> Result<Self> {
        let mut hidden = Vec::with_capacity(config.hidden.len());
        let mut width = config.z_dim;
        for (i, &h) in config.hidden.iter().enumerate() {
            hidden.push(
                linear(width, h, vb.pp(format!("hidden{i}"))).ctx("building the hyper-network")?,
            );
            width = h;
        }
        let out = linear(width, outputs, vb.pp("out")).ctx("building the hyper-network")?;
        let skip = if config.z_skip {
            Some(
                vb.get_with_hints((config.z_dim, outputs), "skip", Init::Const(0.0))
                    .ctx("building the hyper-network")?,
            )
        } else {
            None
        };
        Ok(Self {
            hidden,
            out,
            skip,
            z_dim: config.z_dim,
        })
    }

    /// Whether a variable of the hyper-network (named without its prefix)
    /// carries z to the weights, for [`HyperConfig::z_init`].
    pub fn carries_z(name: &str) -> bool {
        matches!(name, "out.weight" | "skip")
    }

    pub fn z_dim(&self) -> usize {
        self.z_dim
    }

    /// `z`: `[members, z_dim]` → `[members, parameters]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = z.clone();
        for layer in &self.hidden {
            h = layer
                .forward(&h)
                .and_then(|x| x.relu())
                .ctx("hyper-network forward")?;
        }
        let out = self.out.forward(&h).ctx("hyper-network forward")?;
        let out = match &self.skip {
            Some(s) => (out + z.matmul(s)).ctx("hyper-network forward")?,
            None => out,
        };
        Ok(out)
    }
}
