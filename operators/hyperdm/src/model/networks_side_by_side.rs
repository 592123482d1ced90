//! HyperDM's training update with its K networks side by side on the CPU.
//!
//! The stacked loss ([`HyperDm::loss`]) is one graph: every operation of
//! the K networks (z draws × signs) runs in turn, each split over the
//! threads. On a 2-core CPU those operations are small (512 rows × 64
//! channels for the default pipeline), so the splitting costs about what it
//! saves. Here the chain rule is cut at the generated weights φ = h_θ(z):
//! each network's loss is back-propagated to its own copy of φ_k on its own
//! thread (in row shards when there are fewer networks than threads), the
//! anchor term's gradient is added in closed form, and
//! [`crate::hyper::HyperNetwork::gradients`] carries ∂L/∂φ into θ. The
//! gradient is the stacked loss's, up to the order of float additions
//! (`side_by_side_gradients_match_the_stacked_loss`).

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use rand::Rng;

use super::HyperDm;
use super::side_by_side::{Job, run_summed, shard_jobs, shard_loss};
use crate::error::{CandleContext, Result};
use crate::primary::PrimaryNetwork;

impl<P: PrimaryNetwork> HyperDm<P> {
    /// The value of [`HyperDm::loss`] (same arguments, same random draws)
    /// and its gradients, the K networks computed side by side.
    pub fn loss_gradients(
        &self,
        x0: &Tensor,
        cond: &Tensor,
        z_per_step: usize,
        antithetic: bool,
        anchor: Option<(&Tensor, f64)>,
        rng: &mut impl Rng,
    ) -> Result<(Tensor, GradStore)> {
        let draws = self.draws(x0, cond, z_per_step, antithetic, rng)?;
        let networks = draws.order.len();
        let weights = draws.flat.detach();
        // With fewer networks than threads (one z per update, or one pair),
        // each network's rows are cut into shards as well.
        let shards = if self.device.is_cpu() {
            (rayon::current_num_threads() / networks).max(1)
        } else {
            1
        };
        let jobs = shard_jobs(networks, shards, |k| {
            draws.noised[draws.order[k]].0.steps.len()
        });
        // A job's share of network k's mean squared error, and its gradient.
        let job = |&(k, start, end): &Job| -> Result<(Tensor, Tensor)> {
            let phi = weights.get(k).ctx("side-by-side update")?;
            let (noised, cond) = &draws.noised[draws.order[k]];
            let cut = |t: &Tensor| t.narrow(0, start, end - start).ctx("side-by-side update");
            let (params, leaves) = self.primary.layout().leaves(&phi, true)?;
            let out = self.primary.forward(
                &params,
                &cut(&noised.x_t)?,
                &noised.steps[start..end],
                &cut(cond)?,
            )?;
            let elements = noised.target.elem_count();
            shard_loss(out, &cut(&noised.target)?, 1.0, elements, &leaves)
        };
        let (losses, grads): (Vec<Tensor>, Vec<Tensor>) =
            run_summed(&self.device, networks, &jobs, job)?
                .into_iter()
                .unzip();
        // The data loss is the mean of the K networks' losses, so ∂/∂φ_k is
        // network k's own gradient over K.
        let ctx = "side-by-side update";
        let mut d_phi = Tensor::stack(&grads, 0)
            .and_then(|g| g.affine(1.0 / networks as f64, 0.0))
            .ctx(ctx)?;
        let mut value = Tensor::stack(&losses, 0)
            .and_then(|l| l.mean_all())
            .ctx("loss")?;
        let hyper = self.hyper()?;
        if hyper.rank1() {
            // Its anchor acts on the factors, inside the hyper-network.
            let (grads, term) = hyper.rank1_gradients(&draws.z, &d_phi, anchor)?;
            if let Some(term) = term {
                value = (value + term).ctx("loss")?;
            }
            return Ok((value, grads));
        }
        // The anchor term λ·mean((φ − A·z)²) adds 2λ(φ − A·z)/numel.
        if let Some((map, weight)) = anchor.filter(|&(_, w)| w > 0.0) {
            let gap = (&weights - draws.z.matmul(map).ctx("anchor")?).ctx("anchor")?;
            let numel = gap.elem_count() as f64;
            let term = gap
                .sqr()
                .and_then(|g| g.mean_all())
                .and_then(|g| g.affine(weight, 0.0))
                .ctx("anchor")?;
            value = (value + term).ctx("loss")?;
            d_phi = (d_phi + gap.affine(2.0 * weight / numel, 0.0).ctx("anchor")?).ctx(ctx)?;
        }
        let grads = hyper.gradients(&draws.z, &d_phi)?;
        Ok((value, grads))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use crate::hyper::{HyperConfig, HyperForm};
    use crate::method::Method;
    use crate::model::side_by_side::{assert_same_update, in_pool};
    use crate::model::{HyperDm, TrainingData};
    use crate::primary::{MlpConfig, PrimaryMlp};
    use crate::schedule::DiffusionConfig;
    use crate::toy::ToyData;

    /// Same loss value and same gradient for every hyper-network tensor as
    /// back-propagating the stacked loss, for every combination of skip,
    /// anchor, antithetic pairs and draws per update, sharded or not, and
    /// for a centred and a rank-1 hyper-network. Tolerance: 1e-5
    /// relative to the tensor's largest gradient entry (float sums in
    /// another order).
    #[test]
    fn side_by_side_gradients_match_the_stacked_loss() {
        // Four threads: one z per update runs in four row shards, a pair in
        // two per network, two pairs unsharded.
        in_pool(4, side_by_side_gradients_match_in_this_pool);
    }

    fn side_by_side_gradients_match_in_this_pool() {
        let data = ToyData::generate(96, 0.04, None, 5);
        let (x0, cond) = data
            .batch(&(0..96).collect::<Vec<_>>(), &Device::Cpu)
            .unwrap();
        for (z_skip, centred, anchor, antithetic, z_per_step, form) in [
            (false, false, 0.0, false, 1, HyperForm::Full),
            (true, false, 0.01, false, 1, HyperForm::Full),
            (true, false, 0.01, true, 2, HyperForm::Full),
            (true, false, 0.0, false, 3, HyperForm::Full),
            (false, false, 0.05, true, 1, HyperForm::Full),
            (true, true, 0.01, true, 2, HyperForm::Full),
            (false, true, 0.0, false, 3, HyperForm::Full),
            (true, false, 0.0, true, 2, HyperForm::Rank1),
            (false, false, 0.0, false, 1, HyperForm::Rank1),
            (true, false, 0.05, true, 2, HyperForm::Rank1),
        ] {
            let config = HyperConfig {
                z_skip,
                centred,
                form,
                ..HyperConfig::default()
            };
            let model = HyperDm::with_method(
                PrimaryMlp::new(&MlpConfig {
                    hidden: vec![8, 8],
                    ..MlpConfig::default()
                }),
                Method::Hyperdm,
                &config,
                &DiffusionConfig::default(),
                &Device::Cpu,
                2,
            )
            .unwrap();
            let map = model.anchor_map(4).unwrap();
            let anchor = Some((&map, anchor));
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let stacked = model
                .loss(&x0, &cond, z_per_step, antithetic, anchor, &mut rng)
                .unwrap();
            let stacked_grads = stacked.backward().unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let (value, grads) = model
                .loss_gradients(&x0, &cond, z_per_step, antithetic, anchor, &mut rng)
                .unwrap();
            let case = format!(
                "skip {z_skip}, centred {centred}, anchor {anchor:?}, antithetic {antithetic}, \
                 z/step {z_per_step}, {form:?}"
            );
            assert_same_update(
                &case,
                &model.varmap,
                (&stacked, &stacked_grads),
                (&value, &grads),
            );
        }
    }
}
