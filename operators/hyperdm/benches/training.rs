//! Training cost per update of HyperDM against one plain network, the deep
//! ensemble and MC-Dropout, on the default pipeline's cell model (an MLP
//! 64×3 on a 5×5 patch plus position, batch 2,048): the ratios behind the
//! paper's claim that a hyper-network costs about one model and an ensemble
//! M models. Each iteration is 20 updates (loss, backward, AdamW).
//!
//! Run: `cargo bench -p uqcast-hyperdm --bench training --profile dev`

use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uqcast_hyperdm::{
    HyperConfig, HyperDm, HyperForm, Method, PrimaryMlp, Result, TrainConfig, TrainingData,
    default_device,
};

mod cell_model;
use cell_model::COND_DIM;

const BATCH: usize = 2048;
const UPDATES_PER_ITERATION: u64 = 20;

/// Random pairs shaped like the cell model's.
struct CellPairs {
    x: Vec<f32>,
    cond: Vec<f32>,
}

impl CellPairs {
    fn new(rows: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        Self {
            x: (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect(),
            cond: (0..rows * COND_DIM)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
        }
    }
}

impl TrainingData for CellPairs {
    fn len(&self) -> usize {
        self.x.len()
    }

    fn batch(&self, rows: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let x: Vec<f32> = rows.iter().map(|&r| self.x[r]).collect();
        let cond: Vec<f32> = rows
            .iter()
            .flat_map(|&r| self.cond[r * COND_DIM..(r + 1) * COND_DIM].iter().copied())
            .collect();
        let x = Tensor::from_vec(x, (rows.len(), 1), device).expect("x");
        let cond = Tensor::from_vec(cond, (rows.len(), COND_DIM), device).expect("cond");
        Ok((x, cond))
    }
}

fn training(c: &mut Criterion, device: &Device) {
    let (mlp, diffusion, hyper) = (
        cell_model::mlp(),
        cell_model::diffusion(),
        cell_model::hyper,
    );
    let data = CellPairs::new(20_000);
    // (name, method, hyper-network, anchor, antithetic, z per update)
    let runs = [
        (
            "hyperdm_skip_anchor",
            Method::Hyperdm,
            hyper(true),
            0.002,
            false,
            1,
        ),
        (
            "hyperdm_antithetic",
            Method::Hyperdm,
            hyper(true),
            0.002,
            true,
            1,
        ),
        (
            "hyperdm_antithetic_z2",
            Method::Hyperdm,
            hyper(true),
            0.002,
            true,
            2,
        ),
        (
            "hyperdm_rank1_antithetic_z2",
            Method::Hyperdm,
            HyperConfig {
                form: HyperForm::Rank1,
                ..hyper(true)
            },
            0.0,
            true,
            2,
        ),
        (
            "hyperdm_plain",
            Method::Hyperdm,
            hyper(false),
            0.0,
            false,
            1,
        ),
        (
            "one_network",
            Method::Ensemble { members: 1 },
            hyper(false),
            0.0,
            false,
            1,
        ),
        (
            "ensemble_4",
            Method::Ensemble { members: 4 },
            hyper(false),
            0.0,
            false,
            1,
        ),
        (
            "mc_dropout",
            Method::McDropout { p: 0.3 },
            hyper(false),
            0.0,
            false,
            1,
        ),
    ];
    let mut group = c.benchmark_group("train_20_updates_cell_mlp64x3_b2048");
    group.sample_size(10);
    for (name, method, hyper, anchor, antithetic, z_per_step) in runs {
        let model =
            HyperDm::with_method(PrimaryMlp::new(&mlp), method, &hyper, &diffusion, device, 0)
                .expect("model");
        let config = TrainConfig {
            iterations: u64::MAX,
            batch_size: BATCH,
            anchor,
            antithetic,
            z_per_step,
            ..TrainConfig::default()
        };
        let mut optimizer = model.optimizer(&config.optimizer);
        group.bench_function(name, |b| {
            b.iter(|| {
                let stop = optimizer.step + UPDATES_PER_ITERATION;
                model
                    .fit_until(&data, &config, &mut optimizer, stop, |_| {})
                    .expect("fit");
                device.synchronize().expect("synchronize");
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    uqcast_hyperdm::startup::prepare();
    training(c, &default_device().expect("UQCAST_DEVICE"));
}

criterion_group!(train, benches);
criterion_main!(train);
