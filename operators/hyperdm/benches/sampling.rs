//! Sampling throughput (predictions per second) of HyperDM on this device,
//! beside the float32 matmul rate measured the same way, so the fraction of
//! the machine's ceiling is visible.
//!
//! - toy MLP: M = 10 draws × N = 1,000 samples of one condition (10,000
//!   predictions; the paper made these in 0.7 s on a GPU), DDIM-100;
//! - U-Net (base 16, multipliers 1,2,4,8): M = 2 × N = 8 at 32×32 and 64×64,
//!   and M = 1 × N = 16 at 32×32, DDIM-25;
//! - the default pipeline's cell model (MLP 64×3 on a 5×5 patch plus position):
//!   N = 16 samples of 2,000 cells, DPM-Solver++(2M)-20, for M = 1, 2 and 4.
//!   Members sample side by side, one per thread, so M below the thread count
//!   is where a member's rows must share the machine; predictions per second
//!   at M = 1 against M = 4 says how well they do.
//!
//! Run: `cargo bench -p uqcast-hyperdm --bench sampling --profile dev`
//! (add `--features cuda` on a GPU machine).

use candle_core::{DType, Device, Tensor};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use uqcast_hyperdm::{
    DiffusionConfig, HyperConfig, HyperDm, MlpConfig, PrimaryMlp, PrimaryNetwork, PrimaryUnet,
    Sampler, UnetConfig, default_device,
};

mod cell_model;

fn sync(device: &Device) {
    device.synchronize().expect("synchronize");
}

fn matmul(c: &mut Criterion, device: &Device) {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), device).expect("a");
    let b = Tensor::randn(0f32, 1.0, (n, n), device).expect("b");
    let mut group = c.benchmark_group("ceiling");
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64)); // FLOP
    group.bench_function("matmul_f32_1024", |bench| {
        bench.iter(|| {
            let _ = a.matmul(&b).expect("matmul");
            sync(device);
        })
    });
    group.finish();
}

/// One benchmark: `model` makes `members` × `samples` predictions of every
/// condition in `cond` (the device synchronised, so GPU time is counted).
fn bench_predict<P: PrimaryNetwork>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    model: &HyperDm<P>,
    cond: &Tensor,
    (members, samples): (usize, usize),
    sampler: Sampler,
    device: &Device,
) {
    group.bench_function(name, |b| {
        b.iter(|| {
            model
                .predict(cond, members, samples, sampler, 0)
                .expect("predict");
            sync(device);
        })
    });
}

fn toy(c: &mut Criterion, device: &Device) {
    let diffusion = DiffusionConfig::default();
    let model = HyperDm::new(
        PrimaryMlp::new(&MlpConfig::default()),
        &HyperConfig::default(),
        &diffusion,
        device,
        0,
    )
    .expect("model");
    let cond = Tensor::zeros((1, 1), DType::F32, device).expect("cond");
    let mut group = c.benchmark_group("hyperdm_toy_mlp");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10 * 1000));
    let ddim100 = Sampler::Ddim { steps: 100 };
    bench_predict(
        &mut group,
        "m10_n1000_ddim100",
        &model,
        &cond,
        (10, 1000),
        ddim100,
        device,
    );
    group.finish();
}

fn unet(c: &mut Criterion, device: &Device) {
    let config = UnetConfig {
        base: 16,
        mults: vec![1, 2, 4, 8],
        ..UnetConfig::default()
    };
    let hyper = HyperConfig {
        z_dim: 8,
        hidden: vec![24; 5],
        ..HyperConfig::default()
    };
    let model = HyperDm::new(
        PrimaryUnet::new(&config).expect("unet"),
        &hyper,
        &DiffusionConfig::default(),
        device,
        0,
    )
    .expect("model");
    let mut group = c.benchmark_group("hyperdm_unet16");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * 8));
    let ddim25 = Sampler::Ddim { steps: 25 };
    for size in [32, 64] {
        let cond = Tensor::randn(0f32, 1.0, (1, 1, size, size), device).expect("cond");
        let name = format!("{size}x{size}_m2_n8_ddim25");
        bench_predict(&mut group, &name, &model, &cond, (2, 8), ddim25, device);
    }
    // The same 16 predictions from one member: its rows cut into shards.
    let cond = Tensor::randn(0f32, 1.0, (1, 1, 32, 32), device).expect("cond");
    bench_predict(
        &mut group,
        "32x32_m1_n16_ddim25",
        &model,
        &cond,
        (1, 16),
        ddim25,
        device,
    );
    group.finish();
}

fn cell_mlp(c: &mut Criterion, device: &Device) {
    const CELLS: usize = 2000;
    const SAMPLES: usize = 16;
    let (mlp, diffusion, hyper) = (
        cell_model::mlp(),
        cell_model::diffusion(),
        cell_model::hyper(true),
    );
    let model = HyperDm::new(PrimaryMlp::new(&mlp), &hyper, &diffusion, device, 0).expect("model");
    let cond = Tensor::randn(0f32, 1.0, (CELLS, cell_model::COND_DIM), device).expect("cond");
    let mut group = c.benchmark_group("hyperdm_cell_mlp");
    group.sample_size(10);
    for members in [1, 2, 4] {
        group.throughput(Throughput::Elements((members * SAMPLES * CELLS) as u64));
        let name = format!("m{members}_n{SAMPLES}_cells{CELLS}_dpm2m20");
        let dpm2m20 = Sampler::DpmSolver2M { steps: 20 };
        bench_predict(
            &mut group,
            &name,
            &model,
            &cond,
            (members, SAMPLES),
            dpm2m20,
            device,
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    uqcast_hyperdm::startup::prepare();
    let device = default_device().expect("UQCAST_DEVICE");
    matmul(c, &device);
    toy(c, &device);
    unet(c, &device);
    cell_mlp(c, &device);
}

criterion_group!(sampling, benches);
criterion_main!(sampling);
