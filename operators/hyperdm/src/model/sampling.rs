//! Inference: M members' weights, N samples each, their moments.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{HyperDm, WeightSource};
use crate::error::{CandleContext, HyperdmError, Result};
use crate::layout::Params;
use crate::method::Method;
use crate::moments::{MomentAccumulator, Moments};
use crate::primary::{PrimaryNetwork, SamplingNetwork};
use crate::sampler::{Sampler, gaussian, sample};

impl<P: PrimaryNetwork> HyperDm<P> {
    /// Draws `members` weight sets and `samples` predictions per member for
    /// every condition in `cond` (`[C, ...]`); returns per-element moments
    /// with shape `[C, ...sample]`.
    pub fn predict(
        &self,
        cond: &Tensor,
        members: usize,
        samples: usize,
        sampler: Sampler,
        seed: u64,
    ) -> Result<Moments> {
        self.predict_seeded(cond, members, samples, sampler, seed, seed)
    }

    /// As [`HyperDm::predict`], with the weight draws (z) and the diffusion
    /// noise seeded apart: conditions predicted in several calls (chunks of
    /// a field) must share `weight_seed` to see the same M networks, while
    /// each call takes its own `noise_seed`.
    pub fn predict_seeded(
        &self,
        cond: &Tensor,
        members: usize,
        samples: usize,
        sampler: Sampler,
        weight_seed: u64,
        noise_seed: u64,
    ) -> Result<Moments> {
        self.predict_each(
            cond,
            members,
            samples,
            sampler,
            (weight_seed, noise_seed),
            |_, _| Ok(()),
        )
    }

    /// As [`HyperDm::predict_seeded`] (`seeds` = (weight, noise)), also
    /// handing each member's samples `[N, C, ...sample]` to `visit` (for
    /// scores that need every sample, such as the ensemble CRPS).
    pub fn predict_each(
        &self,
        cond: &Tensor,
        members: usize,
        samples: usize,
        sampler: Sampler,
        seeds: (u64, u64),
        mut visit: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Moments> {
        if members == 0 || samples == 0 {
            return Err(HyperdmError::Config {
                field: "predict",
                problem: format!(
                    "needs at least one member and one sample, got M = {members}, N = {samples}"
                ),
            });
        }
        sampler
            .check(self.schedule.steps())
            .map_err(|problem| HyperdmError::Config {
                field: "sampler",
                problem,
            })?;
        let (weight_seed, noise_seed) = seeds;
        let sample_shape = self.sample_shape(cond)?;
        let repeated = Tensor::cat(&vec![cond; samples], 0).ctx("predict")?;
        let mut shared_noise = ChaCha8Rng::seed_from_u64(noise_seed);
        shared_noise.set_stream(u64::MAX);
        let rows = repeated.dim(0).ctx("predict")?;
        let elements = rows * sample_shape.iter().product::<usize>();
        let stacked = self.members_stacked(members, sampler, elements);
        let members_at_once = if stacked > 1 {
            stacked
        } else {
            self.members_at_once(members)
        };
        let shards = self.shards_per_member(members_at_once, elements);
        let run = |member: usize| {
            self.member_samples(
                member,
                weight_seed,
                &shared_noise,
                (&repeated, samples, &sample_shape),
                (sampler, shards),
            )
        };
        let mut acc = MomentAccumulator::default();
        // Groups of member numbers, made one at a time: a list of every
        // member would be as long as `members` is large.
        let groups = (0..members)
            .step_by(members_at_once.max(1))
            .map(|first| (first..(first + members_at_once).min(members)).collect::<Vec<_>>());
        for group in groups {
            let group = group.as_slice();
            let x0s: Vec<Result<Tensor>> = if stacked > 1 {
                let batch = (&repeated, samples, sample_shape.as_slice());
                self.stacked_member_samples(group, weight_seed, &shared_noise, batch, sampler)?
                    .into_iter()
                    .map(Ok)
                    .collect()
            } else if group.len() > 1 {
                group.par_iter().map(|&member| run(member)).collect()
            } else {
                group.iter().map(|&member| run(member)).collect()
            };
            // Visited and accumulated in member order, whatever finished first.
            for (&member, x0) in group.iter().zip(x0s) {
                let x0 = x0?;
                visit(member, &x0)?;
                acc.push(&x0)?;
            }
        }
        acc.finish()
    }

    /// How many members sample side by side. On the CPU, one per thread of
    /// the pool: a member's forward passes are small GEMMs and element-wise
    /// operations that split badly over threads (the U-Net bench kept two
    /// cores only 1.25 busy), while whole members are independent work of
    /// equal size (threads left over take shards of a member's rows,
    /// `shards_per_member`). Results do not depend on it: every member has its own
    /// weights and its own copy of the shared noise stream. Accelerators
    /// stack members instead (`members_stacked`), and otherwise run them one
    /// after another.
    pub(super) fn members_at_once(&self, members: usize) -> usize {
        if self.device.is_cpu() {
            rayon::current_num_threads().clamp(1, members.max(1))
        } else {
            1
        }
    }

    /// Into how many shards of rows each member's forward passes are cut,
    /// run side by side. With fewer members than threads (one network, or
    /// M = 10 on 16 cores) whole members leave threads idle, and the
    /// element-wise half of a forward pass runs on one thread whatever
    /// the GEMMs do; rows are independent, so shards fill the pool. Only
    /// the forward passes are cut: the sampler still draws each step's
    /// noise for the whole batch from one stream, so the samples do not
    /// depend on the shard count beyond float rounding. `elements` is the
    /// batch's sample values (rows × values per row); a shard keeps at least
    /// `MIN_SHARD_ELEMENTS` of them (1,024 cells of the cell model, one
    /// 32×32 field of the U-Net), below which the hand-off costs more than
    /// the split saves.
    pub(super) fn shards_per_member(&self, members_at_once: usize, elements: usize) -> usize {
        const MIN_SHARD_ELEMENTS: usize = 1024;
        if !self.device.is_cpu() {
            return 1;
        }
        let threads = rayon::current_num_threads();
        threads
            .div_ceil(members_at_once.max(1))
            .min(elements / MIN_SHARD_ELEMENTS)
            .max(1)
    }

    /// Member `member`'s N samples of every condition: `[N, C, ...sample]`.
    /// `batch` is (the conditions repeated N times, N, the sample shape);
    /// `run` is (the sampler, how many shards its forward passes take).
    pub(super) fn member_samples(
        &self,
        member: usize,
        weight_seed: u64,
        shared_noise: &ChaCha8Rng,
        batch: (&Tensor, usize, &[usize]),
        run: (Sampler, usize),
    ) -> Result<Tensor> {
        let (repeated, samples, sample_shape) = batch;
        let (sampler, shards) = run;
        let rows = repeated.dim(0).ctx("predict")?;
        let (params, masks) = self.member_network(member, weight_seed)?;
        // Common random numbers: every member starts from the same noise, so
        // members differ by their weights only.
        let mut rng = shared_noise.clone();
        let mut shape = vec![rows];
        shape.extend_from_slice(sample_shape);
        let x_t = gaussian(&mut rng, &shape, &self.device)?;
        let bounds: Vec<(usize, usize)> = (0..shards)
            .map(|s| (s * rows / shards, (s + 1) * rows / shards))
            .collect();
        // The C conditions themselves: `repeated` is them, N times over.
        let conditions = repeated.narrow(0, 0, rows / samples).ctx("predict")?;
        let network = SamplingNetwork {
            params: &params,
            masks: &masks,
            context: self.primary.sampling_context(&params, &conditions)?,
        };
        let forward = |x: &Tensor, t: usize, (start, end): (usize, usize)| {
            let x = x.narrow(0, start, end - start).ctx("predict")?;
            self.primary
                .forward_sampling(&network, &x, t, repeated, start)
        };
        let x0 = sample(&self.schedule, sampler, x_t, &mut rng, |x, t| {
            if shards == 1 {
                return forward(x, t, (0, rows));
            }
            let parts = bounds
                .par_iter()
                .map(|&bound| forward(x, t, bound))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0).ctx("predict")
        })?;
        let mut per = vec![samples, rows / samples];
        per.extend_from_slice(sample_shape);
        x0.reshape(per).ctx("predict")
    }

    /// Member `member`'s network: its weights (detached, no graph is kept)
    /// and, for MC-Dropout, its dropout masks, fixed for all its samples.
    /// HyperDM draws z and MC-Dropout its masks from stream `member` of
    /// `weight_seed`, so every chunk of a field sees the same M networks.
    fn member_network(&self, member: usize, weight_seed: u64) -> Result<(Params, Vec<Tensor>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(weight_seed);
        rng.set_stream(member as u64);
        match (&self.weights, self.method) {
            (WeightSource::Hyper(hyper), _) => {
                let z = gaussian(&mut rng, &[1, hyper.z_dim()], &self.device)?;
                let flat = hyper.forward(&z)?.detach().squeeze(0).ctx("predict")?;
                Ok((self.primary.layout().slice(&flat)?, Vec::new()))
            }
            (WeightSource::Direct(vars), Method::McDropout { p }) => {
                let params = self
                    .primary
                    .layout()
                    .slice_scaled(&vars[0].as_tensor().detach())?;
                Ok((params, self.dropout_masks(p, 1, &mut rng)?))
            }
            (WeightSource::Direct(vars), _) => {
                let var = vars.get(member).ok_or_else(|| HyperdmError::Config {
                    field: "members",
                    problem: format!(
                        "asked for {} or more members of an ensemble of {}",
                        member + 1,
                        vars.len()
                    ),
                })?;
                Ok((
                    self.primary
                        .layout()
                        .slice_scaled(&var.as_tensor().detach())?,
                    Vec::new(),
                ))
            }
        }
    }

    /// The shape of one sample for these conditions (without the batch axis).
    fn sample_shape(&self, cond: &Tensor) -> Result<Vec<usize>> {
        let one = cond.narrow(0, 0, 1).ctx("predict")?;
        Ok(self.primary.sample_input_like(&one)?.dims()[1..].to_vec())
    }
}
