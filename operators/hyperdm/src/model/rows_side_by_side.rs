//! The baselines' training update (one network, MC-Dropout, a deep
//! ensemble) with its work side by side on the CPU.
//!
//! The counterpart of `networks_side_by_side` for trained weight vectors,
//! so that the baselines get the same treatment as HyperDM and the cost
//! comparison stays fair: an ensemble's members run side by side, and a
//! single network splits its minibatch into row shards, one per thread
//! (data parallelism). Each shard back-propagates its share of the loss,
//! Σ(error²) / (the member's element count) / M, on its own thread, and the
//! shards' gradients add up to the gradient of [`HyperDm::update_loss`],
//! up to the order of float additions
//! (`side_by_side_gradients_match_the_baselines_loss`).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::side_by_side::{Job, run_summed, shard_jobs, shard_loss};
use super::training::member_seed;
use super::{HyperDm, TrainConfig, TrainingData, WeightSource};
use crate::error::{CandleContext, HyperdmError, Result};
use crate::method::Method;
use crate::primary::PrimaryNetwork;

/// One member's update inputs: its weights, noised rows and masks.
struct MemberRows<'a> {
    var: &'a Var,
    x_t: Tensor,
    steps: Vec<usize>,
    target: Tensor,
    cond: Tensor,
    masks: Vec<Tensor>,
}

impl<P: PrimaryNetwork> HyperDm<P> {
    /// The value and gradients of [`HyperDm::update_loss`] for the
    /// baselines (same random draws), with each member's rows cut into
    /// `shards` pieces and every (member, piece) run side by side.
    pub fn baseline_gradients(
        &self,
        data: &dyn TrainingData,
        config: &TrainConfig,
        k: u64,
        shards: usize,
    ) -> Result<(Tensor, GradStore)> {
        let WeightSource::Direct(vars) = &self.weights else {
            return Err(HyperdmError::Config {
                field: "method",
                problem: "HyperDM's update goes through loss_gradients".into(),
            });
        };
        let mut members = Vec::with_capacity(vars.len());
        for (member, var) in vars.iter().enumerate() {
            // The draws of `update_loss`, in its order: rows, masks, noise.
            let seed = match self.method {
                Method::McDropout { .. } => config.seed,
                _ => member_seed(config.seed, member),
            };
            let (x0, cond, mut rng) = Self::update_rows(&self.device, data, config, k, seed)?;
            let masks = match self.method {
                Method::McDropout { p } => self.dropout_masks(p, config.batch_size, &mut rng)?,
                _ => Vec::new(),
            };
            let noised = self.noised(&x0, &mut rng)?;
            members.push(MemberRows {
                var,
                x_t: noised.x_t,
                steps: noised.steps,
                target: noised.target,
                cond,
                masks,
            });
        }
        let jobs = shard_jobs(members.len(), shards, |_| config.batch_size);
        let scale = 1.0 / members.len() as f64;
        // A job's share of the mean loss over members, and its gradient.
        let job = |&(m, start, end): &Job| -> Result<(Tensor, Tensor)> {
            let member = &members[m];
            let cut = |t: &Tensor| t.narrow(0, start, end - start).ctx("side-by-side update");
            let masks = member.masks.iter().map(cut).collect::<Result<Vec<_>>>()?;
            let weights = member.var.as_tensor().detach();
            let (params, leaves) = self.primary.layout().leaves(&weights, false)?;
            let out = self.primary.forward_masked(
                &params,
                &cut(&member.x_t)?,
                &member.steps[start..end],
                &cut(&member.cond)?,
                &masks,
            )?;
            let elements = member.target.elem_count();
            shard_loss(out, &cut(&member.target)?, scale, elements, &leaves)
        };
        let mut value: Option<Tensor> = None;
        let mut grads = GradStore::default();
        let summed = run_summed(&self.device, members.len(), &jobs, job)?;
        for (member, (loss, grad)) in members.iter().zip(summed) {
            value = Some(match value {
                Some(v) => (v + loss).ctx("loss")?,
                None => loss,
            });
            grads.insert(member.var.as_tensor(), grad);
        }
        let value = value.ok_or(HyperdmError::Config {
            field: "method.members",
            problem: "an ensemble needs at least one member".into(),
        })?;
        Ok((value, grads))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use crate::hyper::HyperConfig;
    use crate::method::Method;
    use crate::model::side_by_side::assert_same_update;
    use crate::model::{HyperDm, TrainConfig};
    use crate::primary::{MlpConfig, PrimaryMlp};
    use crate::schedule::DiffusionConfig;
    use crate::toy::ToyData;

    /// One network, an ensemble of three and MC-Dropout: cut into three
    /// row shards (batch 100: shards of 33, 33, 34), the loss and every
    /// weight's gradient are those of back-propagating `update_loss`.
    /// Tolerance: 1e-5 relative to the largest gradient entry (float sums
    /// in another order).
    #[test]
    fn side_by_side_gradients_match_the_baselines_loss() {
        let data = ToyData::generate(300, 0.04, None, 6);
        let config = TrainConfig {
            batch_size: 100,
            seed: 9,
            ..TrainConfig::default()
        };
        for method in [
            Method::Ensemble { members: 1 },
            Method::Ensemble { members: 3 },
            Method::McDropout { p: 0.3 },
        ] {
            let model = HyperDm::with_method(
                PrimaryMlp::new(&MlpConfig {
                    hidden: vec![8, 8],
                    ..MlpConfig::default()
                }),
                method,
                &HyperConfig::default(),
                &DiffusionConfig::default(),
                &Device::Cpu,
                1,
            )
            .unwrap();
            for k in [0, 5] {
                let whole = model.update_loss(&data, &config, k, None).unwrap();
                let whole_grads = whole.backward().unwrap();
                let (value, grads) = model.baseline_gradients(&data, &config, k, 3).unwrap();
                assert_same_update(
                    &format!("{method} k {k}"),
                    &model.varmap,
                    (&whole, &whole_grads),
                    (&value, &grads),
                );
            }
        }
    }
}
