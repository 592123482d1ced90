//! The Bayesian hyper-network h_θ: z ~ N(0, I) → every parameter of the
//! primary network. Drawing z draws a network; only θ is trained.

use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder, linear, linear_no_bias};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result};

mod factors;
mod gradients;

use crate::layout::ParamLayout;
use factors::Block;

/// What the hyper-network's output is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HyperForm {
    /// Every weight of the primary network (the paper).
    #[default]
    Full,
    /// Per-channel factors of a shared, directly trained base: each weight
    /// matrix is base ⊙ (1 + r(z))(1 + s(z))ᵀ (see `hyper/factors.rs`).
    Rank1,
}

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
    /// OOD inputs less well (docs/hyperdm-vs-ensemble.md, "where HyperDM's
    /// fit goes").
    #[serde(default = "one")]
    pub z_init: f64,
    /// Splits each network into a shared part and its deviation:
    /// φ(z) = base + W·h(z) (+ S·z), with the hidden layers odd in z (tanh,
    /// no biases), so h(−z) = −h(z). Without it the z-independent function
    /// is W times the mean hidden activation (ReLU outputs are positive),
    /// learned through the same weights that carry z. Here `base` holds
    /// it alone, stored in the primary network's own units so that it
    /// learns at a plain network's per-weight rate, and in an antithetic
    /// pair the rows' shared gradient cancels exactly in W and S.
    #[serde(default)]
    pub centred: bool,
    /// The learning rate of the layers that carry z (as for `z_init`), as a
    /// fraction of the common rate. Below 1 their updates average the
    /// minibatch noise of more steps, which matters where a z's network
    /// trains on rows no other network shares (no antithetic pairs). It
    /// needs `centred`: otherwise the shared function is learned through
    /// the output weights too, and slowing them starves the fit.
    #[serde(default = "one")]
    pub z_lr: f64,
    /// Whether the output is the weights or per-channel factors of a
    /// shared base ([`HyperForm`]).
    #[serde(default)]
    pub form: HyperForm,
}

fn one() -> f64 {
    1.0
}

/// The shared base of a centred or rank-1 hyper-network: the variable
/// `base` (final units, one per weight) and 1/gain, which turns it into the
/// standardised units of the generated vector.
fn shared_base(vb: &VarBuilder, gains: &[f32]) -> Result<(Tensor, Tensor)> {
    let base = vb
        .get_with_hints(gains.len(), "base", Init::Const(0.0))
        .ctx("building the hyper-network")?;
    let inverse: Vec<f32> = gains.iter().map(|g| 1.0 / g).collect();
    let inverse =
        Tensor::from_vec(inverse, gains.len(), vb.device()).ctx("building the hyper-network")?;
    Ok((base, inverse))
}

impl HyperConfig {
    /// The plain MLP that emits the rank-1 form's factors.
    fn with_outputs_for_factors(&self) -> Self {
        Self {
            centred: false,
            form: HyperForm::Full,
            ..self.clone()
        }
    }
}

impl Default for HyperConfig {
    fn default() -> Self {
        Self {
            z_dim: 8,
            hidden: vec![8; 5],
            z_skip: false,
            z_init: 1.0,
            centred: false,
            z_lr: 1.0,
            form: HyperForm::Full,
        }
    }
}

/// An MLP (ReLU; tanh without biases when centred) whose last Linear emits
/// the flat primary-parameter vector.
#[derive(Debug, Clone)]
pub struct HyperNetwork {
    hidden: Vec<Linear>,
    out: Linear,
    skip: Option<Tensor>,
    /// The shared part when centred: the vector `base` (final units) and
    /// 1/gain, which turns it into the standardised units of the output.
    base: Option<(Tensor, Tensor)>,
    /// The rank-1 form's factor blocks (its base is `base`).
    factors: Option<Vec<Block>>,
    z_dim: usize,
}

impl HyperNetwork {
    /// The hyper-network of `config` for a primary network of `layout`.
    pub fn for_layout(vb: VarBuilder, config: &HyperConfig, layout: &ParamLayout) -> Result<Self> {
        let gains = layout.gains();
        match config.form {
            HyperForm::Full => Self::new(vb, config, &gains),
            HyperForm::Rank1 => {
                let (blocks, factors) = factors::blocks(layout);
                let mut net = Self::new(
                    vb.clone(),
                    &config.with_outputs_for_factors(),
                    &vec![1.0; factors],
                )?;
                net.base = Some(shared_base(&vb, &gains)?);
                net.factors = Some(blocks);
                Ok(net)
            }
        }
    }

    /// `gains`: each output's gain in the primary network's layout (the
    /// factor from standardised to final units), one per output.
    pub fn new(vb: VarBuilder, config: &HyperConfig, gains: &[f32]) -> Result<Self> {
        let outputs = gains.len();
        let dense = |inputs, outputs, name: String| {
            let vb = vb.pp(name);
            if config.centred {
                linear_no_bias(inputs, outputs, vb)
            } else {
                linear(inputs, outputs, vb)
            }
            .ctx("building the hyper-network")
        };
        let mut hidden = Vec::with_capacity(config.hidden.len());
        let mut width = config.z_dim;
        for (i, &h) in config.hidden.iter().enumerate() {
            hidden.push(dense(width, h, format!("hidden{i}"))?);
            width = h;
        }
        let out = dense(width, outputs, "out".into())?;
        let base = if config.centred {
            Some(shared_base(&vb, gains)?)
        } else {
            None
        };
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
            base,
            factors: None,
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

    /// Whether the hidden layers are odd in z with a separate shared part
    /// ([`HyperConfig::centred`]).
    pub fn centred(&self) -> bool {
        self.base.is_some() && self.factors.is_none()
    }

    /// Whether the output is per-channel factors ([`HyperForm::Rank1`]).
    pub fn rank1(&self) -> bool {
        self.factors.is_some()
    }

    /// `z`: `[members, z_dim]` → `[members, parameters]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.forward_anchored(z)?.0)
    }

    /// The width of what anchored training pulls toward A·z: the weights,
    /// or the rank-1 form's factors (a base scaled by factors cannot follow
    /// an arbitrary weight vector, but its factors can follow theirs).
    pub fn anchored_width(&self) -> Result<usize> {
        // The output layer emits exactly that vector in either form.
        Ok(self.out.weight().dims2().ctx("hyper-network")?.0)
    }

    /// [`HyperNetwork::forward`] and, alongside, the anchored vector
    /// `[members, anchored_width]` (the weights themselves, or the factors).
    pub fn forward_anchored(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = self.generated(z)?;
        if let (Some(blocks), Some((base, inverse))) = (&self.factors, &self.base) {
            let shared = base.mul(inverse).ctx("hyper-network forward")?;
            let phi = factors::multipliers(blocks, &out)?
                .broadcast_mul(&shared)
                .ctx("hyper-network forward")?;
            return Ok((phi, out));
        }
        let out = match &self.base {
            Some((base, inverse)) => base
                .mul(inverse)
                .and_then(|b| out.broadcast_add(&b))
                .ctx("hyper-network forward")?,
            None => out,
        };
        Ok((out.clone(), out))
    }

    /// The MLP's output plus the skip: the weights (less the centred base)
    /// or the rank-1 form's factors, `[members, anchored_width]`.
    fn generated(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = z.clone();
        for layer in &self.hidden {
            h = layer
                .forward(&h)
                .and_then(|x| if self.centred() { x.tanh() } else { x.relu() })
                .ctx("hyper-network forward")?;
        }
        let mut out = self.out.forward(&h).ctx("hyper-network forward")?;
        if let Some(s) = &self.skip {
            out = (out + z.matmul(s)).ctx("hyper-network forward")?;
        }
        Ok(out)
    }
}
