//! Training: the denoising loss of each method's update, its gradients and
//! the loop that applies them (`fit`). The CPU's side-by-side gradients are
//! in `networks_side_by_side` (HyperDM) and `rows_side_by_side` (baselines).

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{HyperDm, Progress, TrainConfig, TrainingData, WeightSource};
use crate::error::{CandleContext, HyperdmError, Result};
use crate::layout::Params;
use crate::method::Method;
use crate::optim::AdamW;
use crate::primary::PrimaryNetwork;
use crate::sampler::gaussian;
use crate::schedule::Prediction;

impl<P: PrimaryNetwork> HyperDm<P> {
    /// The denoising loss of one minibatch for `z_per_step` weight draws.
    ///
    /// With `anchor = Some((A, λ))` the loss adds λ·mean((φ(z) − A·z)²):
    /// anchored ensembling (Pearce et al., 2020) across z. Where the data
    /// pin a network down, every z fits them alike; where they do not (away
    /// from the training inputs), each network stays near its own random
    /// anchor, so the members keep disagreeing there. Without it the
    /// hyper-network learns to ignore z and EU collapses everywhere.
    ///
    /// With `antithetic`, each draw z is paired with −z on the same rows,
    /// steps and noise. A single z multiplies the minibatch's sampling noise
    /// into the z-dependent weights (the skip's gradient is g·zᵀ), and that
    /// noise stays behind as member disagreement the data never asked for:
    /// an EU floor. In a pair the noise enters as g·zᵀ + g·(−z)ᵀ and cancels
    /// to first order; what survives is the difference between the two
    /// networks' fits, which is what should shape z.
    pub fn loss(
        &self,
        x0: &Tensor,
        cond: &Tensor,
        z_per_step: usize,
        antithetic: bool,
        anchor: Option<(&Tensor, f64)>,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let draws = self.draws(x0, cond, z_per_step, antithetic, rng)?;
        let anchor_term = anchor_term(&draws, anchor)?;
        let order = &draws.order;
        let stack = |part: &dyn Fn(&(Noised, Tensor)) -> Tensor| -> Result<Tensor> {
            let parts: Vec<Tensor> = order.iter().map(|&d| part(&draws.noised[d])).collect();
            Tensor::stack(&parts, 0).ctx("loss")
        };
        let x_t = stack(&|(n, _)| n.x_t.clone())?;
        let target = stack(&|(n, _)| n.target.clone())?;
        let cond = stack(&|(_, c)| c.clone())?;
        let steps: Vec<usize> = order
            .iter()
            .flat_map(|&d| draws.noised[d].0.steps.iter().copied())
            .collect();
        let params = self.primary.layout().slice_stacked(&draws.flat)?;
        let out = self.primary.forward_stacked(&params, &x_t, &steps, &cond)?;
        // The mean over each network's rows, averaged over the networks.
        let data = (out - target)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .ctx("loss")?;
        match anchor_term {
            Some(anchor) => (anchor + data).ctx("loss"),
            None => Ok(data),
        }
    }

    /// One update's weight draws and their rows: z (each with −z after it
    /// when `antithetic`), the generated weights, and each draw's noised
    /// share of the minibatch.
    pub(super) fn draws(
        &self,
        x0: &Tensor,
        cond: &Tensor,
        z_per_step: usize,
        antithetic: bool,
        rng: &mut impl Rng,
    ) -> Result<Draws> {
        let hyper = self.hyper()?;
        let batch = x0.dim(0).ctx("loss")?;
        if batch == 0 {
            return Err(HyperdmError::Config {
                field: "batch_size",
                problem: "empty minibatch".into(),
            });
        }
        let signs = if antithetic { 2 } else { 1 };
        let draws = z_per_step.clamp(1, (batch / signs).max(1));
        let z = gaussian(rng, &[draws, hyper.z_dim()], &self.device)?;
        let z = if antithetic {
            Tensor::cat(&[&z, &z.neg().ctx("loss")?], 0).ctx("loss")?
        } else {
            z
        };
        let (flat, anchored) = hyper.forward_anchored(&z)?;
        // Every network sees `rows` rows of its draw's share of the
        // minibatch; an antithetic pair shares its rows, steps and noise
        // (drawn once), so only the sign of z tells the two apart.
        let rows = ((batch / draws) / signs).max(1);
        let noised = (0..draws)
            .map(|d| {
                let start = d * batch / draws;
                let x0 = x0.narrow(0, start, rows).ctx("loss")?;
                let cond = cond.narrow(0, start, rows).ctx("loss")?;
                let noised = self.noised(&x0, rng)?;
                Ok((noised, cond))
            })
            .collect::<Result<Vec<_>>>()?;
        // Network k = s·draws + d (the order of `z`) runs on draw d's rows.
        let order: Vec<usize> = (0..signs).flat_map(|_| 0..draws).collect();
        Ok(Draws {
            z,
            flat,
            anchored,
            noised,
            order,
        })
    }

    /// A random step per row and x_t from x₀ and fresh noise, with the
    /// prediction's target.
    pub(super) fn noised(&self, x0: &Tensor, rng: &mut impl Rng) -> Result<Noised> {
        let rows = x0.dim(0).ctx("loss")?;
        let steps: Vec<usize> = (0..rows)
            .map(|_| rng.random_range(0..self.schedule.steps()))
            .collect();
        let eps = gaussian(rng, x0.dims(), &self.device)?;
        let mut bshape = vec![1; x0.rank()];
        bshape[0] = rows;
        let sa: Vec<f32> = steps
            .iter()
            .map(|&t| self.schedule.alpha_bars[t].sqrt() as f32)
            .collect();
        let sb: Vec<f32> = steps
            .iter()
            .map(|&t| (1.0 - self.schedule.alpha_bars[t]).sqrt() as f32)
            .collect();
        let sa = Tensor::from_vec(sa, bshape.as_slice(), &self.device).ctx("loss")?;
        let sb = Tensor::from_vec(sb, bshape.as_slice(), &self.device).ctx("loss")?;
        let x_t = (x0.broadcast_mul(&sa).ctx("loss")? + eps.broadcast_mul(&sb).ctx("loss")?)
            .ctx("loss")?;
        let target = match self.diffusion.prediction {
            Prediction::Epsilon => eps,
            Prediction::X0 => x0.clone(),
            Prediction::V => (eps.broadcast_mul(&sa).ctx("loss")?
                - x0.broadcast_mul(&sb).ctx("loss")?)
            .ctx("loss")?,
        };
        Ok(Noised { x_t, steps, target })
    }

    /// The denoising loss of one network (`params`, hidden activations
    /// multiplied by `masks` when given) on one minibatch: a random step
    /// per row, x_t from x₀ and fresh noise, squared error of the prediction.
    pub fn denoising_loss(
        &self,
        params: &Params,
        masks: &[Tensor],
        x0: &Tensor,
        cond: &Tensor,
        rng: &mut impl Rng,
    ) -> Result<Tensor> {
        let noised = self.noised(x0, rng)?;
        let out = self
            .primary
            .forward_masked(params, &noised.x_t, &noised.steps, cond, masks)?;
        (out - noised.target)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .ctx("loss")
    }

    /// Dropout masks for `rows` rows: per hidden width, entries 0 with
    /// probability p, else 1/(1 − p) (so activations keep their mean).
    ///
    /// A training update needs rows × (sum of widths) draws, ≈ 390,000 for
    /// the pipeline's cell model; drawn one float at a time on one thread
    /// they took as long as the network's own update. So each mask takes
    /// one seed from `rng` and is drawn in blocks of rows, block b from
    /// stream b of that seed, the blocks side by side, each entry from one
    /// 32-bit draw against p·2³². The masks depend on `rng` only, not on
    /// the number of threads.
    pub(super) fn dropout_masks(
        &self,
        p: f64,
        rows: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<Tensor>> {
        /// Entries per block: a few microseconds of drawing each.
        const BLOCK: usize = 8 * 1024;
        let keep = (1.0 / (1.0 - p)) as f32;
        let threshold = (p.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64;
        self.primary
            .dropout_widths()
            .into_iter()
            .map(|width| {
                let seed: u64 = rng.random();
                let mut values = vec![0f32; rows * width];
                values
                    .par_chunks_mut(BLOCK)
                    .enumerate()
                    .for_each(|(block, chunk)| {
                        let mut stream = ChaCha8Rng::seed_from_u64(seed);
                        stream.set_stream(block as u64);
                        for v in chunk {
                            let dropped = u64::from(stream.next_u32()) < threshold;
                            *v = if dropped { 0.0 } else { keep };
                        }
                    });
                Tensor::from_vec(values, (rows, width), &self.device).ctx("dropout mask")
            })
            .collect()
    }

    /// The loss of training update `k`: a minibatch drawn from stream k of
    /// `config.seed` (so a resumed run repeats exactly), then by method:
    /// - HyperDM: [`HyperDm::loss`] with fresh z;
    /// - MC-Dropout: one network, a fresh dropout mask per row;
    /// - ensemble: every member its own minibatch and noise (stream k of its
    ///   own seed), losses averaged. The members share no parameter and
    ///   AdamW is element-wise and scale-free (up to its ε), so this is M
    ///   independent trainings run in lock step, at M times the cost of one.
    pub(super) fn update_loss(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        anchor: Option<&Tensor>,
    ) -> Result<Tensor> {
        let draw = |seed: u64| Self::update_rows(&self.device, data, config, k, seed);
        match (&self.weights, self.method) {
            (WeightSource::Hyper(_), _) => {
                let (x0, cond, mut rng) = draw(config.seed)?;
                self.loss(
                    &x0,
                    &cond,
                    config.z_per_step,
                    config.antithetic,
                    anchor.map(|a| (a, config.anchor)),
                    &mut rng,
                )
            }
            (WeightSource::Direct(vars), Method::McDropout { p }) => {
                let (x0, cond, mut rng) = draw(config.seed)?;
                let params = self.primary.layout().slice_scaled(vars[0].as_tensor())?;
                let masks = self.dropout_masks(p, config.batch_size, &mut rng)?;
                self.denoising_loss(&params, &masks, &x0, &cond, &mut rng)
            }
            (WeightSource::Direct(vars), _) => {
                let mut total: Option<Tensor> = None;
                for (member, var) in vars.iter().enumerate() {
                    let seed = member_seed(config.seed, member);
                    let (x0, cond, mut rng) = draw(seed)?;
                    let params = self.primary.layout().slice_scaled(var.as_tensor())?;
                    let l = self.denoising_loss(&params, &[], &x0, &cond, &mut rng)?;
                    total = Some(match total {
                        Some(t) => (t + l).ctx("loss")?,
                        None => l,
                    });
                }
                // The mean, so the reported loss reads like one network's;
                // AdamW's steps do not depend on the loss scale.
                total
                    .ok_or(HyperdmError::Config {
                        field: "method.members",
                        problem: "an ensemble needs at least one member".into(),
                    })?
                    .affine(1.0 / vars.len() as f64, 0.0)
                    .ctx("loss")
            }
        }
    }

    /// Update k's minibatch (x₀, condition) from stream k of `seed`, and
    /// that stream, to go on drawing the update's noise.
    pub(super) fn update_rows(
        device: &Device,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        seed: u64,
    ) -> Result<(Tensor, Tensor, ChaCha8Rng)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(k);
        let rows: Vec<usize> = (0..config.batch_size)
            .map(|_| rng.random_range(0..data.len()))
            .collect();
        let (x0, cond) = data.batch(&rows, device)?;
        Ok((x0, cond, rng))
    }

    /// Update k's loss and gradients. On the CPU, HyperDM runs its networks
    /// side by side ([`HyperDm::loss_gradients`]) and the baselines their
    /// members and row shards ([`HyperDm::baseline_gradients`]), one per
    /// thread; on an accelerator [`HyperDm::update_loss`] back-propagates
    /// as one graph.
    pub(super) fn update_gradients(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        anchor: Option<&Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        if matches!(self.weights, WeightSource::Hyper(_)) && self.device.is_cpu() {
            let (x0, cond, mut rng) =
                Self::update_rows(&self.device, data, config, k, config.seed)?;
            return self.loss_gradients(
                &x0,
                &cond,
                config.z_per_step,
                config.antithetic,
                anchor.map(|a| (a, config.anchor)),
                &mut rng,
            );
        }
        if self.device.is_cpu() {
            return self.baseline_gradients(data, config, k, rayon::current_num_threads());
        }
        let loss = self.update_loss(data, config, k, anchor)?;
        let grads = loss.backward().ctx("backward")?;
        Ok((loss, grads))
    }

    /// Trains from `optimizer.step` up to `config.iterations`. Step k uses the
    /// random stream k of `config.seed`, so a resumed run repeats exactly.
    pub fn fit(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        optimizer: &mut AdamW,
        progress: impl FnMut(Progress),
    ) -> Result<()> {
        self.fit_until(data, config, optimizer, config.iterations, progress)
    }

    /// As [`HyperDm::fit`], but stops after update `stop` (for checkpointing
    /// part-way: the learning-rate schedule still follows `config.iterations`).
    pub fn fit_until(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        optimizer: &mut AdamW,
        stop: u64,
        mut progress: impl FnMut(Progress),
    ) -> Result<()> {
        if data.is_empty() || config.batch_size == 0 {
            return Err(HyperdmError::Config {
                field: "train",
                problem: "needs data and batch_size > 0".into(),
            });
        }
        // `loss` would quietly train fewer draws than asked for; a run
        // from any front end (pipeline, toy) says so instead.
        let signs = if config.antithetic { 2 } else { 1 };
        if matches!(self.weights, WeightSource::Hyper(_))
            && (config.z_per_step == 0 || config.z_per_step * signs > config.batch_size)
        {
            return Err(HyperdmError::Config {
                field: "train.z_per_step",
                problem: format!(
                    "{} z draws{} need at least one row each, and batch_size is {}",
                    config.z_per_step,
                    if config.antithetic {
                        ", each with its mirror −z,"
                    } else {
                        ""
                    },
                    config.batch_size
                ),
            });
        }
        let anchor = if config.anchor > 0.0 && matches!(self.weights, WeightSource::Hyper(_)) {
            Some(self.anchor_map(config.seed)?)
        } else {
            None
        };
        let started = Instant::now();
        let report_every = (config.iterations / 20).max(1);
        let last = config.iterations.min(stop);
        while optimizer.step < last {
            let k = optimizer.step;
            let (loss, grads) = self.update_gradients(data, config, k, anchor.as_ref())?;
            let progress_fraction = k as f64 / config.iterations.max(1) as f64;
            let floor = config.final_lr_fraction;
            let lr = config.optimizer.lr
                * (floor
                    + (1.0 - floor)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress_fraction).cos()));
            optimizer.apply(&grads, lr)?;
            // Read at each report and at the last update (not every update:
            // on a GPU each read waits for the device). A NaN or infinite
            // loss never comes back, so a run stops before it saves
            // weights it has made NaN (checkpoints are taken where it
            // returns).
            let report =
                optimizer.step.is_multiple_of(report_every) || optimizer.step == config.iterations;
            if report || optimizer.step == last {
                let loss = loss.to_scalar::<f32>().ctx("loss")?;
                if !loss.is_finite() {
                    return Err(HyperdmError::Diverged {
                        loss,
                        iteration: optimizer.step,
                        iterations: config.iterations,
                        lr: config.optimizer.lr,
                    });
                }
                if report {
                    progress(Progress {
                        iteration: optimizer.step,
                        iterations: config.iterations,
                        loss,
                        elapsed_seconds: started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// See [`HyperDm::draws`]: network k has weights `flat[k]`, drawn from
/// `z[k]`, and runs on `noised[order[k]]` (its x_t, steps and target, and
/// the rows' conditions).
pub(super) struct Draws {
    pub(super) z: Tensor,
    pub(super) flat: Tensor,
    /// What the anchor pulls toward A·z (see `HyperNetwork::forward_anchored`).
    pub(super) anchored: Tensor,
    pub(super) noised: Vec<(Noised, Tensor)>,
    pub(super) order: Vec<usize>,
}

/// λ·mean((φ(z) − A·z)²) for `anchor = Some((A, λ))` with λ > 0 (the
/// rank-1 form: its factors in place of φ).
fn anchor_term(draws: &Draws, anchor: Option<(&Tensor, f64)>) -> Result<Option<Tensor>> {
    match anchor {
        Some((map, weight)) if weight > 0.0 => Ok(Some(
            (draws.anchored.clone() - draws.z.matmul(map).ctx("anchor")?)
                .and_then(|d| d.sqr())
                .and_then(|d| d.mean_all())
                .and_then(|d| d.affine(weight, 0.0))
                .ctx("anchor")?,
        )),
        _ => Ok(None),
    }
}

/// Ensemble member `member`'s training seed: its own minibatches and noise.
pub(super) fn member_seed(seed: u64, member: usize) -> u64 {
    seed ^ (member as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One draw's noised rows: x_t, each row's step and the training target.
pub(super) struct Noised {
    pub(super) x_t: Tensor,
    pub(super) steps: Vec<usize>,
    pub(super) target: Tensor,
}
