//! The CUDA paths, checked against the CPU's. Every test build compiles
//! them (candle's CPU-only build has the same device API, failing at run
//! time), so they cannot rot where there is no GPU; they are ignored there
//! and run in a `cuda` build on a machine with a GPU:
//! `cargo test -p uqcast-hyperdm --features cuda -- on_gpu`.
//!
//! Every random draw (initial weights, minibatch rows, z, dropout masks,
//! diffusion noise) comes from a seeded stream on the host, so the same
//! model on both devices computes the same numbers up to float rounding.
//! The checks therefore compare values, not statistics. They matter because
//! the devices do not share code: on the CPU, updates run side by side
//! (`loss_gradients`, `baseline_gradients`), AdamW is a fused host pass, and
//! the U-Net and MLP use host-only custom ops; on a GPU, one autograd graph,
//! AdamW as tensor operations and candle's kernels.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{HyperDm, Progress, TrainConfig, TrainingData, named_vars};
use crate::checkpoint;
use crate::error::Result;
use crate::hyper::{HyperConfig, HyperForm};
use crate::method::Method;
use crate::moments::Moments;
use crate::primary::{PrimaryConfig, PrimaryMlp, PrimaryNetwork, PrimaryUnet, UnetConfig};
use crate::sampler::Sampler;
use crate::schedule::DiffusionConfig;
use crate::toy::ToyData;

fn gpu() -> Device {
    Device::new_cuda(0).expect("the `cuda` feature's tests need CUDA device 0")
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap()
}

/// Largest |a − b| over the largest |a| (0 where both are all zeros).
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 { gap } else { gap / scale }
}

/// The MLP model these tests compare: 16-16 hidden, seed 7.
fn mlp_model(method: Method, hyper: &HyperConfig, device: &Device) -> HyperDm<PrimaryMlp> {
    super::tests::mlp_model(&[16, 16], method, hyper, (device, 7))
}

fn unet_model(device: &Device) -> HyperDm<PrimaryUnet> {
    let unet = PrimaryUnet::new(&UnetConfig {
        base: 8,
        mults: vec![1, 2],
        ..UnetConfig::default()
    })
    .unwrap();
    let hyper = HyperConfig {
        z_dim: 4,
        hidden: vec![8],
        z_skip: true,
        ..HyperConfig::default()
    };
    HyperDm::new(unet, &hyper, &DiffusionConfig::default(), device, 5).unwrap()
}

/// Random 16×16 fields and conditions, for the U-Net.
struct Fields {
    x: Vec<f32>,
    cond: Vec<f32>,
}

const SIDE: usize = 16;

impl Fields {
    fn new(rows: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut draw = || {
            (0..rows * SIDE * SIDE)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        };
        Self {
            x: draw(),
            cond: draw(),
        }
    }
}

impl TrainingData for Fields {
    fn len(&self) -> usize {
        self.x.len() / (SIDE * SIDE)
    }

    fn batch(&self, rows: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let pick = |v: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * SIDE * SIDE..(r + 1) * SIDE * SIDE].iter().copied())
                .collect()
        };
        let shape = (rows.len(), 1, SIDE, SIDE);
        Ok((
            Tensor::from_vec(pick(&self.x), shape, device).unwrap(),
            Tensor::from_vec(pick(&self.cond), shape, device).unwrap(),
        ))
    }
}

/// One training update's loss and gradients, each device taking its own
/// path, agree: loss within 1e-4 relative, every tensor's gradient within
/// 1e-4 of its largest entry (sums in another order, cuBLAS against gemm).
fn assert_same_update<P: PrimaryNetwork>(
    case: &str,
    (cpu, gpu): (&HyperDm<P>, &HyperDm<P>),
    data: &dyn TrainingData,
    config: &TrainConfig,
) {
    let anchor =
        |m: &HyperDm<P>| matches!(m.method, Method::Hyperdm).then(|| m.anchor_map(4).unwrap());
    let (a_cpu, a_gpu) = (anchor(cpu), anchor(gpu));
    for k in [0, 3] {
        let (loss_c, grads_c) = cpu
            .update_gradients(data, config, k, a_cpu.as_ref())
            .unwrap();
        let (loss_g, grads_g) = gpu
            .update_gradients(data, config, k, a_gpu.as_ref())
            .unwrap();
        assert!(
            loss_g.device().is_cuda(),
            "{case}: the GPU model's loss is on the GPU"
        );
        let (lc, lg) = (host(&loss_c)[0], host(&loss_g)[0]);
        assert!(lc.is_finite() && lc > 0.0, "{case}: loss {lc}");
        assert!(
            (lc - lg).abs() <= 1e-4 * lc,
            "{case}, update {k}: loss {lc} (CPU) vs {lg} (GPU)"
        );
        let gpu_vars = named_vars(&gpu.varmap);
        let cpu_vars = named_vars(&cpu.varmap);
        assert_eq!(cpu_vars.len(), gpu_vars.len(), "{case}: same variables");
        for ((name, vc), (name_g, vg)) in cpu_vars.iter().zip(&gpu_vars) {
            assert_eq!(name, name_g);
            let gc = host(
                grads_c
                    .get(vc)
                    .unwrap_or_else(|| panic!("{case}: no CPU gradient for {name}")),
            );
            let gg = host(
                grads_g
                    .get(vg)
                    .unwrap_or_else(|| panic!("{case}: no GPU gradient for {name}")),
            );
            let gap = relative_gap(&gc, &gg);
            assert!(
                gap <= 1e-4,
                "{case}, update {k}: {name}'s gradient differs by {gap:.2e} of its largest entry"
            );
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs the `cuda` feature and a GPU")]
fn an_update_on_the_gpu_matches_the_cpu() {
    let (cpu, gpu) = (Device::Cpu, gpu());
    let data = ToyData::generate(256, 0.04, None, 3);
    let full = HyperConfig {
        z_skip: true,
        ..HyperConfig::default()
    };
    let rank1 = HyperConfig {
        form: HyperForm::Rank1,
        ..full.clone()
    };
    // (case, method, hyper-network, anchor, antithetic, z per update)
    let cases = [
        (
            "hyperdm, skip + anchor",
            Method::Hyperdm,
            &full,
            0.01,
            false,
            1,
        ),
        (
            "hyperdm, two antithetic pairs",
            Method::Hyperdm,
            &full,
            0.01,
            true,
            2,
        ),
        ("hyperdm, rank-1", Method::Hyperdm, &rank1, 0.0, true, 2),
        (
            "mc-dropout",
            Method::McDropout { p: 0.3 },
            &full,
            0.0,
            false,
            1,
        ),
        (
            "ensemble of 3",
            Method::Ensemble { members: 3 },
            &full,
            0.0,
            false,
            1,
        ),
    ];
    for (case, method, hyper, anchor, antithetic, z_per_step) in cases {
        let config = TrainConfig {
            batch_size: 64,
            anchor,
            antithetic,
            z_per_step,
            seed: 5,
            ..TrainConfig::default()
        };
        let on_cpu = mlp_model(method, hyper, &cpu);
        let on_gpu = mlp_model(method, hyper, &gpu);
        assert_same_update(case, (&on_cpu, &on_gpu), &data, &config);
    }
    let fields = Fields::new(32);
    let config = TrainConfig {
        batch_size: 8,
        anchor: 0.01,
        seed: 2,
        ..TrainConfig::default()
    };
    assert_same_update(
        "U-Net",
        (&unet_model(&cpu), &unet_model(&gpu)),
        &fields,
        &config,
    );
}

/// A run checkpointed on the CPU resumes on the GPU: the checkpoint loads
/// onto the device, and the resumed updates' losses follow the CPU's own
/// uninterrupted run (the same minibatches) within 1e-3 relative, AdamW's
/// moments included. Weights are not compared entry by entry: AdamW divides
/// each gradient by its own size, so an entry whose gradient is at the
/// rounding level can step either way on the two devices.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs the `cuda` feature and a GPU")]
fn a_run_checkpointed_on_the_cpu_resumes_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy.safetensors");
    let data = ToyData::generate(256, 0.04, None, 5);
    let hyper = HyperConfig {
        z_skip: true,
        ..HyperConfig::default()
    };
    let config = TrainConfig {
        iterations: 60,
        batch_size: 64,
        anchor: 0.01,
        antithetic: true,
        z_per_step: 2,
        ..TrainConfig::default()
    };
    let losses = |model: &HyperDm<PrimaryMlp>, opt: &mut crate::optim::AdamW| {
        let mut seen = Vec::new();
        model
            .fit(&data, &config, opt, |p: Progress| {
                seen.push((p.iteration, p.loss))
            })
            .unwrap();
        seen
    };
    let straight = mlp_model(Method::Hyperdm, &hyper, &Device::Cpu);
    let mut opt = straight.optimizer(&config.optimizer);
    let want = losses(&straight, &mut opt);

    let first = mlp_model(Method::Hyperdm, &hyper, &Device::Cpu);
    let mut opt = first.optimizer(&config.optimizer);
    first
        .fit_until(&data, &config, &mut opt, 30, |_| {})
        .unwrap();
    checkpoint::save(&path, &first, &opt, &config, serde_json::json!({})).unwrap();
    let build = |c: &PrimaryConfig| match c {
        PrimaryConfig::Mlp(c) => Ok(PrimaryMlp::new(c)),
        other => panic!("an MLP was saved, read {other:?}"),
    };
    let (resumed, mut opt, meta) = checkpoint::load(&path, &gpu(), build).unwrap();
    assert_eq!(meta.step, 30);
    let got = losses(&resumed, &mut opt);
    assert!(!got.is_empty(), "the resumed run reported no updates");
    for (iteration, loss) in &got {
        let (_, cpu_loss) = want
            .iter()
            .find(|(i, _)| i == iteration)
            .unwrap_or_else(|| panic!("the CPU run has no update {iteration}"));
        assert!(
            (loss - cpu_loss).abs() <= 1e-3 * cpu_loss,
            "update {iteration}: loss {loss} on the GPU vs {cpu_loss} on the CPU"
        );
    }
    assert!(
        named_vars(&resumed.varmap)
            .iter()
            .all(|(_, v)| v.device().is_cuda())
    );
}

/// M × N sampling on the GPU gives the CPU's moments: the same trained
/// weights, seeds and samplers. Mean within 1e-3 of its largest entry; AU
/// and EU within 1e-3 of their largest entries (50 sampler steps of float
/// rounding, and members reduced in another order).
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs the `cuda` feature and a GPU")]
fn sampling_on_the_gpu_matches_the_cpu() {
    let data = ToyData::generate(256, 0.04, None, 1);
    let config = TrainConfig {
        iterations: 200,
        batch_size: 64,
        ..TrainConfig::default()
    };
    let cond =
        |device: &Device| Tensor::new(&[[-0.8f32], [-0.2], [0.0], [0.4], [0.9]], device).unwrap();
    for method in [
        Method::Hyperdm,
        Method::McDropout { p: 0.3 },
        Method::Ensemble { members: 4 },
    ] {
        let hyper = HyperConfig {
            z_skip: true,
            ..HyperConfig::default()
        };
        let cpu = mlp_model(method, &hyper, &Device::Cpu);
        let mut opt = cpu.optimizer(&config.optimizer);
        cpu.fit(&data, &config, &mut opt, |_| {}).unwrap();
        let gpu = mlp_model(method, &hyper, &gpu());
        copy_weights(&cpu, &gpu);
        for sampler in [
            Sampler::Ddim { steps: 50 },
            Sampler::DpmSolver2M { steps: 20 },
        ] {
            let case = format!("{} with {sampler:?}", method.name());
            let want = cpu.predict(&cond(&Device::Cpu), 4, 32, sampler, 9).unwrap();
            let got = gpu.predict(&cond(&gpu.device), 4, 32, sampler, 9).unwrap();
            assert_same_moments(&case, &want, &got);
        }
    }
    let fields = Fields::new(4);
    let cpu = unet_model(&Device::Cpu);
    let gpu = unet_model(&gpu());
    let (_, cond_c) = fields.batch(&[0, 1], &Device::Cpu).unwrap();
    let (_, cond_g) = fields.batch(&[0, 1], &gpu.device).unwrap();
    let sampler = Sampler::Ddim { steps: 25 };
    let want = cpu.predict(&cond_c, 2, 4, sampler, 3).unwrap();
    let got = gpu.predict(&cond_g, 2, 4, sampler, 3).unwrap();
    assert_same_moments("U-Net with DDIM-25", &want, &got);
}

fn copy_weights<P: PrimaryNetwork>(from: &HyperDm<P>, to: &HyperDm<P>) {
    for ((name, a), (_, b)) in named_vars(&from.varmap).iter().zip(named_vars(&to.varmap)) {
        b.set(&a.as_tensor().to_device(b.device()).unwrap())
            .unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
}

fn assert_same_moments(case: &str, want: &Moments, got: &Moments) {
    assert!(
        got.mean.device().is_cuda(),
        "{case}: moments computed on the GPU"
    );
    for (what, a, b) in [
        ("mean", &want.mean, &got.mean),
        ("AU", &want.au, &got.au),
        ("EU", &want.eu, &got.eu),
    ] {
        let (a, b) = (host(a), host(b));
        assert!(
            a.iter().chain(&b).all(|v| v.is_finite()),
            "{case}: {what} not finite"
        );
        let gap = relative_gap(&a, &b);
        assert!(
            gap <= 1e-3,
            "{case}: {what} differs by {gap:.2e} of its largest entry\nCPU {a:?}\nGPU {b:?}"
        );
    }
}

/// The science holds on the GPU: a short toy run tells two noise levels
/// apart (the CPU test `au_tracks_the_noise_level`, same settings and bounds).
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs the `cuda` feature and a GPU")]
fn the_toy_problem_on_the_gpu_tells_noise_levels_apart() {
    crate::toy::tests::au_tracks_the_noise_level_on(&gpu());
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs the `cuda` feature and a GPU")]
fn the_default_device_is_the_gpu() {
    assert!(
        crate::default_device().unwrap().is_cuda(),
        "built with `cuda`, yet the default device is the CPU: is a GPU visible?"
    );
}
