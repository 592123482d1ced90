use super::side_by_side::in_pool;
use super::*;
use crate::primary::{MlpConfig, PrimaryMlp, PrimaryUnet, UnetConfig};
use crate::sampler::Sampler;
use crate::toy::ToyData;

/// The small toy-sized model every test here builds: an 8-8 MLP denoiser
/// whose weights come from `method`.
fn small_model(method: Method, hyper: &HyperConfig, seed: u64) -> HyperDm<PrimaryMlp> {
    mlp_model(&[8, 8], method, hyper, (&Device::Cpu, seed))
}

/// An MLP denoiser with these hidden widths whose weights come from
/// `method`, built on `device` from `seed` (the GPU tests build it on both).
pub(super) fn mlp_model(
    hidden: &[usize],
    method: Method,
    hyper: &HyperConfig,
    (device, seed): (&Device, u64),
) -> HyperDm<PrimaryMlp> {
    let mlp = MlpConfig {
        hidden: hidden.to_vec(),
        ..MlpConfig::default()
    };
    HyperDm::with_method(
        PrimaryMlp::new(&mlp),
        method,
        hyper,
        &DiffusionConfig::default(),
        device,
        seed,
    )
    .unwrap()
}

fn toy_model() -> HyperDm<PrimaryMlp> {
    small_model(Method::Hyperdm, &HyperConfig::default(), 3)
}

/// Every hyper-network tensor gets a non-zero gradient; the primary
/// network has no variables at all (its weights are generated).
#[test]
fn gradient_reaches_every_hyper_parameter_only() {
    gradient_reaches_every_hyper_parameter(false);
    gradient_reaches_every_hyper_parameter(true);
}

fn gradient_reaches_every_hyper_parameter(z_skip: bool) {
    let config = HyperConfig {
        z_skip,
        ..HyperConfig::default()
    };
    let model = small_model(Method::Hyperdm, &config, 3);
    let data = ToyData::generate(64, 0.01, None, 1);
    let (x0, cond) = data
        .batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let loss = model.loss(&x0, &cond, 2, false, None, &mut rng).unwrap();
    let grads = loss.backward().unwrap();
    let vars = named_vars(&model.varmap);
    assert!(
        vars.iter().all(|(name, _)| name.starts_with("hyper.")),
        "only hyper-network variables exist"
    );
    let skip = usize::from(z_skip);
    assert_eq!(vars.len(), 2 * (config.hidden.len() + 1) + skip);
    for (name, var) in &vars {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

/// `z_init` scales how far apart the generated networks start, and
/// nothing else: the difference between two z's networks shrinks by
/// exactly that factor (same random stream), and a negative scale is
/// refused. Tolerance: 1e-5 relative (float rounding).
#[test]
fn z_init_scales_how_far_apart_the_networks_start() {
    let z = Tensor::new(
        &[
            [0.5f32, -1.0, 0.3, 1.2, -0.7, 0.1, 0.9, -0.4],
            [-0.2, 0.8, 1.1, -0.6, 0.4, -1.3, 0.0, 0.7],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let spread = |z_init: f64| -> Vec<f32> {
        let config = HyperConfig {
            z_skip: true,
            z_init,
            ..HyperConfig::default()
        };
        let phi = small_model(Method::Hyperdm, &config, 3)
            .hyper()
            .unwrap()
            .forward(&z)
            .unwrap();
        (phi.get(0).unwrap() - phi.get(1).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (full, tenth) = (spread(1.0), spread(0.1));
    let norm = full.iter().map(|d| d * d).sum::<f32>().sqrt();
    assert!(norm > 1.0, "networks start apart at z_init 1: {norm}");
    for (f, t) in full.iter().zip(&tenth) {
        assert!((t - 0.1 * f).abs() <= 1e-5 * norm, "{t} vs 0.1 × {f}");
    }
    // Out of range: a negative start, and a z path that never learns.
    for (config, name) in [
        (
            HyperConfig {
                z_init: -1.0,
                ..HyperConfig::default()
            },
            "hyper.z_init",
        ),
        (
            HyperConfig {
                z_lr: 0.0,
                ..HyperConfig::default()
            },
            "hyper.z_lr",
        ),
    ] {
        let refused = HyperDm::new(
            PrimaryMlp::new(&MlpConfig::default()),
            &config,
            &DiffusionConfig::default(),
            &Device::Cpu,
            0,
        );
        assert!(
            matches!(refused, Err(HyperdmError::Config { field, .. }) if field == name),
            "{name}"
        );
    }
}

/// The `hyper.base` vector of a centred or rank-1 hyper-network.
fn shared_base(model: &HyperDm<PrimaryMlp>) -> Vec<f32> {
    named_vars(&model.varmap)
        .into_iter()
        .find(|(name, _)| name == "hyper.base")
        .expect("the hyper-network has a base")
        .1
        .as_tensor()
        .to_vec1()
        .unwrap()
}

/// A base drawn like a plain network's weights: uniform ±gain, so its
/// mean square over gain² is 1/3 (within 10%).
fn assert_starts_like_a_plain_network(base: &[f32], gains: &[f32]) {
    let ratio = base
        .iter()
        .zip(gains)
        .map(|(b, g)| (b / g).powi(2))
        .sum::<f32>()
        / base.len() as f32;
    assert!((ratio - 1.0 / 3.0).abs() < 0.1 / 3.0, "mean square {ratio}");
}

/// A centred hyper-network generates a shared base plus a deviation odd
/// in z: φ(z) + φ(−z) is twice the base (in standardised units), the two
/// networks differ, and the base starts as a plain network's
/// initialisation (each value within ± its gain, spread like uniform
/// ±gain: mean square gain²/3 within 10%). Tolerance 1e-5 relative.
#[test]
fn centred_networks_are_a_base_plus_an_odd_deviation() {
    let config = HyperConfig {
        z_skip: true,
        centred: true,
        ..HyperConfig::default()
    };
    let model = small_model(Method::Hyperdm, &config, 3);
    let z = Tensor::new(
        &[[0.5f32, -1.0, 0.3, 1.2, -0.7, 0.1, 0.9, -0.4]],
        &Device::Cpu,
    )
    .unwrap();
    let both = Tensor::cat(&[&z, &z.neg().unwrap()], 0).unwrap();
    let phi = model.hyper().unwrap().forward(&both).unwrap();
    let plus: Vec<f32> = phi.get(0).unwrap().to_vec1().unwrap();
    let minus: Vec<f32> = phi.get(1).unwrap().to_vec1().unwrap();
    let gains = model.primary.layout().gains();
    let base = shared_base(&model);
    let scale = plus.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut apart = 0f32;
    for (((p, m), b), g) in plus.iter().zip(&minus).zip(&base).zip(&gains) {
        assert!(
            (p + m - 2.0 * b / g).abs() <= 1e-5 * scale,
            "{p} + {m} vs 2 × {b}/{g}"
        );
        assert!(b.abs() <= *g, "base {b} beyond its gain {g}");
        apart += (p - m).powi(2);
    }
    assert!(apart.sqrt() > 1.0, "z and −z generate the same network");
    assert_starts_like_a_plain_network(&base, &gains);
}

/// A rank-1 hyper-network scales one shared base: member z's weight
/// matrix divided by the base is the outer product (1 + r)(1 + s)ᵀ (its
/// 2×2 minors vanish), two members differ in every weight, the base
/// starts as a plain network's initialisation (mean square gain²/3
/// within 10%), and it refuses the centred option.
/// Tolerance 1e-4 relative to the minor's terms.
#[test]
fn rank1_members_scale_a_shared_base_by_row_and_column() {
    let config = HyperConfig {
        z_skip: true,
        form: HyperForm::Rank1,
        ..HyperConfig::default()
    };
    let model = small_model(Method::Hyperdm, &config, 3);
    let z = Tensor::new(
        &[
            [0.5f32, -1.0, 0.3, 1.2, -0.7, 0.1, 0.9, -0.4],
            [-0.2, 0.8, 1.1, -0.6, 0.4, -1.3, 0.2, 0.7],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let phi: Vec<Vec<f32>> = model
        .hyper()
        .unwrap()
        .forward(&z)
        .unwrap()
        .to_vec2()
        .unwrap();
    let gains = model.primary.layout().gains();
    let base = shared_base(&model);
    // Member k's multiplier of every weight: final value over base.
    let factor = |k: usize, p: usize| phi[k][p] * gains[p] / base[p];
    let mut matrices = 0;
    for spec in model.primary.layout().specs() {
        if spec.shape.len() < 2 {
            continue;
        }
        matrices += 1;
        let (rows, cols) = (spec.shape[0], spec.numel() / spec.shape[0]);
        let at = |k, i, j| factor(k, spec.offset + i * cols + j);
        for k in 0..2 {
            for i in 1..rows {
                for j in 1..cols {
                    let (a, b) = (at(k, i, j) * at(k, 0, 0), at(k, i, 0) * at(k, 0, j));
                    let scale = a.abs().max(b.abs()).max(1e-6);
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "{} ({i}, {j}): {a} vs {b}",
                        spec.name
                    );
                }
            }
        }
    }
    assert!(matrices >= 3, "the MLP has {matrices} weight matrices");
    for (p, (a, b)) in phi[0].iter().zip(&phi[1]).enumerate() {
        assert!((a - b).abs() > 1e-6 * a.abs(), "members share weight {p}");
    }
    assert_starts_like_a_plain_network(&base, &gains);

    let centred = HyperConfig {
        centred: true,
        ..config.clone()
    };
    let refused = HyperDm::with_method(
        PrimaryMlp::new(&MlpConfig::default()),
        Method::Hyperdm,
        &centred,
        &DiffusionConfig::default(),
        &Device::Cpu,
        3,
    );
    assert!(matches!(
        refused,
        Err(HyperdmError::Config {
            field: "hyper.centred",
            ..
        })
    ));
}

/// Antithetic pairs cancel the minibatch noise in the z path. With the
/// output weights and the skip zeroed, every z generates the same
/// network, so nothing in the data can tell z from −z: the skip's
/// gradient must vanish for pairs (same rows, steps and noise), and not
/// without them.
#[test]
fn antithetic_pairs_cancel_noise_in_the_skip_gradient() {
    let config = HyperConfig {
        z_skip: true,
        ..HyperConfig::default()
    };
    let data = ToyData::generate(64, 0.01, None, 1);
    let (x0, cond) = data
        .batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap();
    let skip_gradient = |antithetic: bool| -> f32 {
        let model = small_model(Method::Hyperdm, &config, 3);
        let vars = named_vars(&model.varmap);
        let find = |name: &str| &vars.iter().find(|(n, _)| n == name).unwrap().1;
        for name in ["hyper.out.weight", "hyper.skip"] {
            let var = find(name);
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let loss = model
            .loss(&x0, &cond, 2, antithetic, None, &mut rng)
            .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(find("hyper.skip")).unwrap();
        g.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    let (single, paired) = (skip_gradient(false), skip_gradient(true));
    assert!(single > 1e-3, "no skip gradient without pairs: {single}");
    assert!(paired <= 1e-5 * single, "pairs {paired} vs single {single}");
}

/// A few hundred steps must lower the loss on a fixed evaluation batch.
#[test]
fn training_lowers_the_loss() {
    let model = toy_model();
    let data = ToyData::generate(256, 0.01, None, 1);
    let eval = |m: &HyperDm<PrimaryMlp>| {
        let (x0, cond) = data
            .batch(&(0..256).collect::<Vec<_>>(), &Device::Cpu)
            .unwrap();
        let mut total = 0.0;
        for s in 0..8 {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + s);
            total += m
                .loss(&x0, &cond, 1, false, None, &mut rng)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        }
        total / 8.0
    };
    let before = eval(&model);
    let config = TrainConfig {
        iterations: 400,
        ..TrainConfig::default()
    };
    let mut opt = model.optimizer(&config.optimizer);
    model.fit(&data, &config, &mut opt, |_| {}).unwrap();
    let after = eval(&model);
    assert!(after < 0.7 * before, "loss {before} → {after}");
}

/// Identical members give EU = 0 exactly: with shared noise nothing but
/// the weights can make members differ.
#[test]
fn eu_measures_weights_not_monte_carlo_noise() {
    let model = toy_model();
    let cond = Tensor::new(&[[0.1f32], [-0.5]], &Device::Cpu).unwrap();
    // Zero z-weights: every draw of z generates the same network.
    for (name, var) in named_vars(&model.varmap) {
        if name.starts_with("hyper.hidden0.weight") {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        }
    }
    let m = model.predict(&cond, 4, 50, Sampler::Ddpm, 7).unwrap();
    let eu: Vec<f32> = m.eu.flatten_all().unwrap().to_vec1().unwrap();
    let au: Vec<f32> = m.au.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        eu.iter().all(|&e| e < 1e-10),
        "EU {eu:?} for identical members"
    );
    assert!(au.iter().all(|&a| a > 1e-4), "AU {au:?}");
}

/// Members sampled side by side (a pool of three threads: two groups,
/// 3 + 2) give what one thread gives member after member, and every
/// member reaches `visit` in order. Tolerance 1e-6: the same operations
/// on the same inputs, only scheduled differently.
#[test]
fn members_side_by_side_match_one_after_another() {
    let model = toy_model();
    let cond = Tensor::new(&[[0.3f32], [-1.2], [2.0]], &Device::Cpu).unwrap();
    let run = |threads: usize| {
        in_pool(threads, || {
            let mut visited = Vec::new();
            let m = model
                .predict_each(&cond, 5, 40, Sampler::Ddpm, (4, 11), |member, x0| {
                    visited.push((member, x0.dims().to_vec()));
                    Ok(())
                })
                .unwrap();
            let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            (visited, [flat(&m.mean), flat(&m.au), flat(&m.eu)])
        })
    };
    assert_eq!(
        model.members_at_once(5),
        rayon::current_num_threads().min(5)
    );
    let (seq_visits, seq) = run(1);
    let (par_visits, par) = run(3);
    let expected: Vec<(usize, Vec<usize>)> = (0..5).map(|m| (m, vec![40, 3, 1])).collect();
    assert_eq!(seq_visits, expected);
    assert_eq!(par_visits, expected);
    for (a, b) in seq.iter().zip(&par) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
        }
    }
    // Members do differ, so the check compared five distinct networks.
    assert!(seq[2].iter().all(|&eu| eu > 0.0), "EU {:?}", seq[2]);
    // No member or no sample is a named error, not an empty stack.
    for (members, samples) in [(0, 40), (5, 0)] {
        let err = model
            .predict(&cond, members, samples, Sampler::Ddpm, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("predict") && err.contains("M = "), "{err}");
    }
}

/// With fewer members than threads a member's forward passes are cut into
/// shards of rows that run side by side; the samples must be those of the
/// uncut passes (the noise is still drawn for the whole batch from one
/// stream). DDPM, so every step's noise is checked, and MC-Dropout, whose
/// masks broadcast over the rows of each shard. 1,100 conditions × 2
/// samples give two shards of 1,100 rows in a pool of two threads.
/// Tolerance 1e-5: the same rows through the same operations, with the
/// GEMMs blocked over fewer rows.
#[test]
fn a_member_cut_into_shards_samples_what_it_samples_whole() {
    let cond: Vec<f32> = (0..1100).map(|i| (i as f32 / 1100.0) * 4.0 - 2.0).collect();
    let cond = Tensor::from_vec(cond, (1100, 1), &Device::Cpu).unwrap();
    for method in [Method::Hyperdm, Method::McDropout { p: 0.3 }] {
        let model = small_model(method, &HyperConfig::default(), 3);
        let run = |threads: usize| {
            in_pool(threads, || {
                let mut samples = Vec::new();
                model
                    .predict_each(&cond, 1, 2, Sampler::Ddpm, (4, 11), |_, x0| {
                        samples = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        Ok(())
                    })
                    .unwrap();
                (model.shards_per_member(1, 2200), samples)
            })
        };
        let (whole_shards, whole) = run(1);
        let (cut_shards, cut) = run(2);
        assert_eq!((whole_shards, cut_shards), (1, 2), "{method:?}");
        assert_eq!(whole.len(), 2200);
        for (i, (a, b)) in whole.iter().zip(&cut).enumerate() {
            assert!((a - b).abs() <= 1e-5, "{method:?} row {i}: {a} vs {b}");
        }
        // Shards keep at least 1,024 rows: a small batch stays whole.
        assert_eq!(in_pool(2, || model.shards_per_member(1, 2047)), 1);
    }
}

/// The U-Net keeps any input size, odd ones included (padding inside).
#[test]
fn unet_forward_at_odd_sizes_returns_the_input_size() {
    let unet = PrimaryUnet::new(&UnetConfig {
        base: 8,
        mults: vec![1, 2, 4],
        ..UnetConfig::default()
    })
    .unwrap();
    let model = HyperDm::new(
        unet,
        &HyperConfig {
            z_dim: 4,
            hidden: vec![4],
            ..HyperConfig::default()
        },
        &DiffusionConfig::default(),
        &Device::Cpu,
        1,
    )
    .unwrap();
    let flat = model
        .hyper()
        .unwrap()
        .forward(&Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let params = model.primary.layout().slice(&flat).unwrap();
    for (h, w) in [(7, 9), (13, 5), (16, 16), (1, 3)] {
        let x = Tensor::randn(0f32, 1.0, (2, 1, h, w), &Device::Cpu).unwrap();
        let out = model.primary.forward(&params, &x, &[3, 50], &x).unwrap();
        assert_eq!(out.dims(), &[2, 1, h, w]);
        let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|a| a.is_finite()));
    }
    let wrong = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(
        model
            .primary
            .forward(&params, &wrong, &[0], &wrong)
            .is_err(),
        "wrong channel count is an error"
    );
}

fn baseline(method: Method, seed: u64) -> HyperDm<PrimaryMlp> {
    small_model(method, &HyperConfig::default(), seed)
}

fn flat(var: &Var) -> Vec<f32> {
    var.as_tensor().to_vec1().unwrap()
}

/// An ensemble member trains as it would alone: member 0 of an ensemble
/// of 3 ends where an ensemble of 1 ends (same initial draw, same
/// minibatches), and the other members end elsewhere.
#[test]
fn ensemble_members_train_independently() {
    let data = ToyData::generate(128, 0.01, None, 1);
    let config = TrainConfig {
        iterations: 30,
        batch_size: 32,
        ..TrainConfig::default()
    };
    let trained = |members| {
        let model = baseline(Method::Ensemble { members }, 5);
        let mut opt = model.optimizer(&config.optimizer);
        model.fit(&data, &config, &mut opt, |_| {}).unwrap();
        match &model.weights {
            WeightSource::Direct(vars) => vars.iter().map(flat).collect::<Vec<_>>(),
            WeightSource::Hyper(_) => unreachable!("an ensemble has direct weights"),
        }
    };
    let (one, three) = (trained(1), trained(3));
    let initial = match &baseline(Method::Ensemble { members: 1 }, 5).weights {
        WeightSource::Direct(vars) => flat(&vars[0]),
        WeightSource::Hyper(_) => unreachable!("an ensemble has direct weights"),
    };
    let largest = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        largest(&one[0], &initial) > 1e-2,
        "training moved the weights"
    );
    // Averaging the members' losses rescales the gradients by 1/3,
    // which AdamW undoes up to its ε and rounding: 1e-4 tolerance.
    let coupling = largest(&one[0], &three[0]);
    assert!(coupling < 1e-4, "member 0 moved {coupling} with company");
    assert!(largest(&three[0], &three[1]) > 1e-2);
    assert!(largest(&three[1], &three[2]) > 1e-2);
}

/// MC-Dropout members differ only by their masks: p = 0 gives EU = 0
/// exactly (shared noise), p = 0.3 gives EU > 0; the masks are fixed per
/// member, so two calls with the same weight seed agree.
#[test]
fn mc_dropout_members_differ_by_their_fixed_masks() {
    let cond = Tensor::new(&[[0.1f32], [-0.5], [2.0]], &Device::Cpu).unwrap();
    let eu = |p: f64| {
        let model = baseline(Method::McDropout { p }, 2);
        let m = model
            .predict_seeded(&cond, 4, 20, Sampler::Ddim { steps: 10 }, 3, 9)
            .unwrap();
        let again = model
            .predict_seeded(&cond, 4, 20, Sampler::Ddim { steps: 10 }, 3, 9)
            .unwrap();
        let v: Vec<f32> = m.eu.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = again.eu.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, w, "seeded masks repeat");
        v
    };
    assert!(eu(0.0).iter().all(|&e| e < 1e-10));
    assert!(eu(0.3).iter().all(|&e| e > 1e-6));
}

/// Dropout masks hold 0 with probability p and 1/(1 − p) otherwise
/// (40,000 entries per width: the drop rate is within 0.01 of p, four
/// standard errors), repeat for the same stream, and do not depend on
/// how many threads draw them.
#[test]
fn dropout_masks_drop_at_rate_p_whatever_the_threads() {
    let model = baseline(Method::McDropout { p: 0.3 }, 2);
    let draw = |threads: usize| {
        in_pool(threads, || {
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            model
                .dropout_masks(0.3, 5_000, &mut rng)
                .unwrap()
                .iter()
                .map(|m| m.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let masks = draw(1);
    assert_eq!(masks, draw(3));
    // The small model has two hidden layers of 8.
    assert_eq!(masks.len(), 2);
    let keep = 1.0 / 0.7f32;
    for mask in &masks {
        assert!(mask.iter().all(|&v| v == 0.0 || v == keep));
        let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
        assert!((dropped - 0.3).abs() < 0.01, "drop rate {dropped}");
    }
    // Two widths from one stream are different masks.
    assert_ne!(masks[0][..100], masks[1][..100]);
}

/// Gradients reach the baseline's own vectors (every ensemble member;
/// the one dropout network), and no hyper-network exists.
#[test]
fn baselines_train_their_direct_weights() {
    let data = ToyData::generate(64, 0.01, None, 1);
    let config = TrainConfig {
        batch_size: 16,
        ..TrainConfig::default()
    };
    for (method, vars) in [
        (Method::Ensemble { members: 3 }, 3),
        (Method::McDropout { p: 0.3 }, 1),
    ] {
        let model = baseline(method, 1);
        let names = named_vars(&model.varmap);
        assert_eq!(names.len(), vars);
        assert!(names.iter().all(|(n, _)| n.starts_with("direct.member")));
        assert!(model.hyper().is_err());
        let loss = model.update_loss(&data, &config, 0, None).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &names {
            assert!(grads.get(var).is_some(), "{method}: no gradient for {name}");
        }
    }
    let small = baseline(Method::Ensemble { members: 2 }, 1);
    let cond = Tensor::new(&[[0.0f32]], &Device::Cpu).unwrap();
    assert!(
        small.predict(&cond, 3, 2, Sampler::Ddpm, 0).is_err(),
        "three members of an ensemble of two"
    );
}

/// A learning rate that blows the weights up stops training with an error
/// naming `train.lr` at the first loss read after it, for every method,
/// instead of training (and saving) NaN weights; progress saw only finite
/// losses.
#[test]
fn a_diverging_run_stops_with_an_error() {
    let data = ToyData::generate(64, 0.01, None, 1);
    let mut config = TrainConfig {
        iterations: 40,
        batch_size: 32,
        ..TrainConfig::default()
    };
    config.optimizer.lr = 1e6;
    for method in [
        Method::Hyperdm,
        Method::Ensemble { members: 2 },
        Method::McDropout { p: 0.3 },
    ] {
        let model = small_model(method, &HyperConfig::default(), 2);
        let mut opt = model.optimizer(&config.optimizer);
        let mut reported = Vec::new();
        let err = model
            .fit(&data, &config, &mut opt, |p| reported.push(p.loss))
            .unwrap_err();
        assert!(
            matches!(err, HyperdmError::Diverged { iterations: 40, .. }),
            "{method}: {err}"
        );
        assert!(
            err.to_string().starts_with("train.lr: training diverged"),
            "{err}"
        );
        assert!(
            reported.iter().all(|l| l.is_finite()),
            "{method}: {reported:?}"
        );
        assert!(opt.step < 40, "{method}: ran to the end");
    }
    // The same run at the default rate trains to the end.
    let model = small_model(Method::Hyperdm, &HyperConfig::default(), 2);
    let mut opt = model.optimizer(&TrainConfig::default().optimizer);
    config.optimizer = TrainConfig::default().optimizer;
    model.fit(&data, &config, &mut opt, |_| {}).unwrap();
    assert_eq!(opt.step, 40);
}
