//! Sampling on an accelerator: K members through one stacked forward pass.
//!
//! One member of a small network is a few microseconds of GPU arithmetic
//! per layer and several kernel launches, so members sampled one after
//! another leave a GPU waiting on launches: an H200 sampled the toy MLP
//! 2.6× slower than 16 CPU cores. Stacked, K members' rows go through each
//! layer as one batched matmul ([`PrimaryNetwork::forward_stacked`]).
//!
//! The samples are those of members one at a time, up to float rounding:
//! DDIM and DPM-Solver++ draw no noise after the start, and every member
//! starts from the same noise (common random numbers), so the stack starts
//! from that noise repeated K times. DDPM draws fresh noise at every step
//! from the member's own stream, and MC-Dropout's members differ by masks
//! that the stacked forward does not take: both keep members in turn.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{HyperDm, WeightSource};
use crate::error::{CandleContext, HyperdmError, Result};
use crate::layout::Params;
use crate::method::Method;
use crate::primary::PrimaryNetwork;
use crate::sampler::{Sampler, gaussian, sample};

/// Sample values (rows × values per row) a stack may hold: 2²⁰, so a
/// 64-wide hidden layer of the stack is 256 MiB of f32.
const STACK_ELEMENTS: usize = 1 << 20;

impl<P: PrimaryNetwork> HyperDm<P> {
    /// How many members sample stacked: on an accelerator as many as
    /// [`STACK_ELEMENTS`] allows for `elements` sample values per member,
    /// and 1 on the CPU (members side by side on threads serve it better),
    /// for a network that would run a stack's members in turn anyway (the
    /// U-Net), with DDPM, or for MC-Dropout.
    pub(super) fn members_stacked(
        &self,
        members: usize,
        sampler: Sampler,
        elements: usize,
    ) -> usize {
        let stackable = !self.device.is_cpu()
            && self.primary.batches_members()
            && !matches!(sampler, Sampler::Ddpm)
            && !matches!(self.method, Method::McDropout { .. });
        if stackable {
            (STACK_ELEMENTS / elements.max(1)).clamp(1, members.max(1))
        } else {
            1
        }
    }

    /// The samples `[N, C, ...sample]` of each member in `group`, from one
    /// stacked run of the sampler. `batch` is (the conditions repeated N
    /// times, N, the sample shape), as for `member_samples`.
    pub(super) fn stacked_member_samples(
        &self,
        group: &[usize],
        weight_seed: u64,
        shared_noise: &ChaCha8Rng,
        batch: (&Tensor, usize, &[usize]),
        sampler: Sampler,
    ) -> Result<Vec<Tensor>> {
        if matches!(sampler, Sampler::Ddpm) {
            return Err(HyperdmError::Config {
                field: "sampler",
                problem: "DDPM draws noise per member; its members sample in turn".into(),
            });
        }
        let (repeated, samples, sample_shape) = batch;
        let k = group.len();
        let rows = repeated.dim(0).ctx("predict")?;
        let params = self.stacked_networks(group, weight_seed)?;
        let mut rng = shared_noise.clone();
        let mut shape = vec![rows];
        shape.extend_from_slice(sample_shape);
        let start = gaussian(&mut rng, &shape, &self.device)?;
        let stack = |t: &Tensor| Tensor::stack(&vec![t; k], 0).ctx("predict");
        let (x_t, cond) = (stack(&start)?, stack(repeated)?);
        let x0 = sample(&self.schedule, sampler, x_t, &mut rng, |x, t| {
            self.primary
                .forward_stacked(&params, x, &vec![t; k * rows], &cond)
        })?;
        let mut per = vec![samples, rows / samples];
        per.extend_from_slice(sample_shape);
        (0..k)
            .map(|i| {
                x0.get(i)
                    .and_then(|m| m.reshape(per.as_slice()))
                    .ctx("predict")
            })
            .collect()
    }

    /// The networks of the members in `group`, stacked (`[K, ...]` per
    /// tensor): the weights `member_network` gives each, drawn alike.
    fn stacked_networks(&self, group: &[usize], weight_seed: u64) -> Result<Params> {
        let layout = self.primary.layout();
        match (&self.weights, self.method) {
            (WeightSource::Hyper(hyper), _) => {
                let zs = group
                    .iter()
                    .map(|&member| {
                        let mut rng = ChaCha8Rng::seed_from_u64(weight_seed);
                        rng.set_stream(member as u64);
                        gaussian(&mut rng, &[1, hyper.z_dim()], &self.device)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let z = Tensor::cat(&zs, 0).ctx("predict")?;
                layout.slice_stacked(&hyper.forward(&z)?.detach())
            }
            (WeightSource::Direct(vars), Method::Ensemble { .. }) => {
                let flats = group
                    .iter()
                    .map(|&member| {
                        vars.get(member)
                            .map(|var| var.as_tensor().detach())
                            .ok_or_else(|| HyperdmError::Config {
                                field: "members",
                                problem: format!(
                                    "asked for {} or more members of an ensemble of {}",
                                    member + 1,
                                    vars.len()
                                ),
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                layout.slice_scaled_stacked(&Tensor::stack(&flats, 0).ctx("predict")?)
            }
            _ => Err(HyperdmError::Config {
                field: "method",
                problem: "MC-Dropout's members differ by masks and sample in turn".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use crate::hyper::HyperConfig;
    use crate::method::Method;
    use crate::model::{HyperDm, TrainConfig};
    use crate::primary::{MlpConfig, PrimaryMlp};
    use crate::sampler::Sampler;
    use crate::schedule::DiffusionConfig;
    use crate::toy::ToyData;

    /// A stack of members samples what each member samples alone (the CPU
    /// runs the stacked path here, as a GPU would): HyperDM and an
    /// ensemble, DDIM and DPM-Solver++, and a stack that is not the first
    /// members. Tolerance: 1e-5 of the largest sample (batched matmuls sum
    /// in another order).
    #[test]
    fn a_stack_of_members_samples_what_each_samples_alone() {
        let data = ToyData::generate(256, 0.04, None, 2);
        let cond = Tensor::new(&[[-0.7f32], [0.1], [0.8]], &Device::Cpu).unwrap();
        let samples = 5;
        let repeated = Tensor::cat(&vec![&cond; samples], 0).unwrap();
        for method in [Method::Hyperdm, Method::Ensemble { members: 4 }] {
            let model = HyperDm::with_method(
                PrimaryMlp::new(&MlpConfig {
                    hidden: vec![16, 16],
                    ..MlpConfig::default()
                }),
                method,
                &HyperConfig {
                    z_skip: true,
                    ..HyperConfig::default()
                },
                &DiffusionConfig::default(),
                &Device::Cpu,
                4,
            )
            .unwrap();
            let config = TrainConfig {
                iterations: 100,
                batch_size: 64,
                ..TrainConfig::default()
            };
            let mut opt = model.optimizer(&config.optimizer);
            model.fit(&data, &config, &mut opt, |_| {}).unwrap();
            let noise = ChaCha8Rng::seed_from_u64(6);
            for sampler in [
                Sampler::Ddim { steps: 20 },
                Sampler::DpmSolver2M { steps: 10 },
            ] {
                let group = [1, 2, 3];
                let batch = (&repeated, samples, &[1][..]);
                let stacked = model
                    .stacked_member_samples(&group, 8, &noise, batch, sampler)
                    .unwrap();
                assert_eq!(stacked.len(), group.len());
                for (&member, got) in group.iter().zip(&stacked) {
                    let want = model
                        .member_samples(member, 8, &noise, batch, (sampler, 1))
                        .unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let (w, g): (Vec<f32>, Vec<f32>) = (
                        want.flatten_all().unwrap().to_vec1().unwrap(),
                        got.flatten_all().unwrap().to_vec1().unwrap(),
                    );
                    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (a, b) in w.iter().zip(&g) {
                        assert!(
                            (a - b).abs() <= 1e-5 * scale,
                            "{} {sampler:?}, member {member}: {a} alone vs {b} stacked",
                            method.name()
                        );
                    }
                }
            }
        }
    }

    /// The CPU never stacks; an MC-Dropout model or DDPM would not either.
    #[test]
    fn the_cpu_samples_members_side_by_side_not_stacked() {
        let model = HyperDm::new(
            PrimaryMlp::new(&MlpConfig::default()),
            &HyperConfig::default(),
            &DiffusionConfig::default(),
            &Device::Cpu,
            0,
        )
        .unwrap();
        assert_eq!(
            model.members_stacked(10, Sampler::Ddim { steps: 10 }, 100),
            1
        );
    }
}
