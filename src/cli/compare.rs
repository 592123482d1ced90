//! `uqcast eval --config P [--methods …] [--m M] [--n N] [--json]`: the
//! paper's Table-2 comparison on the synthetic benchmark.
//!
//! Each method (HyperDM, MC-Dropout, deep ensemble) is trained with the
//! pipeline's architecture, data and update budget per network on a
//! synthetic training span (or loaded when a checkpoint with the same
//! settings exists), then forecasts every step of a held-out span in which
//! one input carries an out-of-distribution hot disk. Scores:
//! - SSIM and PSNR of the mean on the model's [−1, 1] scale (data range 2),
//!   fair CRPS from all M×N samples, Gaussian CRPS from mean and AU + EU,
//!   RMSE (plain and cos-latitude weighted), spread–skill, AU correlation
//!   with the true noise map: on forecasts whose input and target are both
//!   in distribution;
//! - the rank histogram of the truth among the samples, in ten groups;
//! - EU AUROC/AUPRC: cells of the altered input against all other cells;
//! - training seconds (recorded in the checkpoint) and sampling seconds per
//!   input step.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use uqcast_forecast::model::mix;
use uqcast_forecast::{ForecastModel, InferenceSettings, ModelGrid, PackedStep, StepField};
use uqcast_hyperdm::{Method, PrimaryConfig};
use uqcast_skill::{
    AreaWeight, CrpsEstimator, auprc, auroc, crps_common_noise, crps_gaussian, crps_member_mean,
    pearson, psnr, rank_deciles, rank_histogram, spread_skill, ssim, weighted_rmse,
};
use uqcast_synth::{LatLonGrid, OodEvent, read_ood_events};

mod claims;
mod table;

use super::eval::{grid_key, true_variance};
use super::synth::{SynthArgs, generate};
use super::train::{HeldStep, read_steps};
use crate::job::source_sql;
use crate::pipeline::Pipeline;
use crate::session::{context_with_table, memory};
use table::table;

/// What to compare and how (the command line of `eval --config`).
#[derive(Debug, Clone)]
pub struct Benchmark {
    pub config: PathBuf,
    pub methods: Vec<String>,
    pub members: usize,
    pub samples: usize,
    pub iterations: Option<u64>,
    pub train_steps: usize,
    pub test_steps: usize,
    pub work: PathBuf,
    pub json: bool,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct MethodScores {
    pub method: String,
    pub ssim: f64,
    pub psnr: f64,
    /// Fair CRPS of the M×N samples, kelvin.
    pub crps: f64,
    /// The members' own CRPS (each from its N samples, same estimator as
    /// `crps`), averaged:
    /// what one member scores alone. `crps_member − crps` is what drawing
    /// M members buys over one.
    pub crps_member: f64,
    /// CRPS of N(mean, AU + EU), kelvin.
    pub crps_gaussian: f64,
    pub rmse: f64,
    pub rmse_lat_weighted: f64,
    pub spread_skill: f64,
    pub au_correlation: f64,
    pub eu_auroc: f64,
    pub eu_auprc: f64,
    /// Where the truth falls among N samples of a cell, one per noise draw,
    /// each from a member picked at random (seeded), in ten equal groups of
    /// the normalised rank (fractions of cells; 0.1 each when reliable, a U
    /// when too narrow). All M×N samples would not do: sample j of every
    /// member starts from the same noise, so they come in near-equal
    /// clusters of M and the truth's rank among them is lumpy.
    pub rank_histogram: Vec<f64>,
    pub train_seconds: f64,
    pub sample_seconds: f64,
    pub members: usize,
    pub samples: usize,
    pub iterations: u64,
}

/// The OOD event of the held-out span: a +30 K disk over the Great Plains
/// on its third step.
const TEST_START: &str = "2020-01-01T00:00Z";
const TEST_OOD: &str = "disk:2020-01-01T12:00Z,45,260,6,30";
const TRAIN_START: &str = "2019-01-01T00:00Z";

pub async fn run(b: Benchmark) -> Result<()> {
    let pipeline = Pipeline::load(&b.config)?;
    let contenders = check_options(&b)?;
    let memory = crate::session::memory::process_memory();
    for c in &contenders {
        pipeline.check_training_fits(&c.method, memory)?;
    }
    check_memory_fits(&b)?;
    super::output::make_dir(&b.work, "--work")?;
    let train_dir = b.work.join(format!("train-seed1-{}steps", b.train_steps));
    let test_dir = b.work.join(format!("test-seed0-{}steps", b.test_steps));
    ensure_data(&train_dir, TRAIN_START, b.train_steps, 1, vec![]).await?;
    ensure_data(
        &test_dir,
        TEST_START,
        b.test_steps,
        0,
        vec![TEST_OOD.into()],
    )
    .await?;

    let sql = source_sql(&pipeline, None, None)?;
    let location = train_dir.display().to_string();
    let ctx = context_with_table("era5", location.clone()).await?;
    let (grid, train_steps) =
        read_steps::<PackedStep>(&ctx, &location, &sql, "ask for fewer (--train-steps)").await?;
    let location = test_dir.display().to_string();
    let ctx = context_with_table("era5", location.clone()).await?;
    let (test_grid, test_steps) =
        read_steps::<StepField>(&ctx, &location, &sql, "ask for fewer (--test-steps)").await?;
    if !grid.same_cells(&test_grid) {
        bail!("the benchmark's training and test grids differ");
    }
    let mut truth = Truth::load(&test_dir, &grid).await?;
    let iterations = b.iterations.unwrap_or(pipeline.train.iterations);
    let mut rows = Vec::new();
    for Contender { name, method } in contenders {
        let model = trained_model(
            &pipeline,
            method,
            iterations,
            &grid,
            &train_steps,
            &b.work,
            &train_dir,
        )
        .await?;
        // One set of weights: M members of it would repeat one another
        // (members share their noise), so it samples N times. The others'
        // means also rest on N noise draws, so SSIM, PSNR and RMSE of the
        // means compare like with like (M·N draws would smooth its mean).
        let single = name == SINGLE;
        let members = if single { 1 } else { b.members };
        // EU is zero everywhere with one network (`single`, or any method
        // at M = 1): nothing to score.
        let eu_score = |x: f64| if members < 2 { f64::NAN } else { x };
        let settings = InferenceSettings {
            members,
            samples: b.samples,
            ..pipeline.inference()?
        };
        eprintln!(
            "eval: {name} sampling {steps} steps at M={members} N={samples} {sampler}",
            steps = test_steps.len() - 1,
            samples = b.samples,
            sampler = settings.sampler
        );
        let scores = tokio::task::block_in_place(|| {
            score(
                &model,
                &settings,
                &grid,
                &test_steps,
                &mut truth,
                iterations,
            )
        })?;
        rows.push(MethodScores {
            method: name.into(),
            eu_auroc: eu_score(scores.eu_auroc),
            eu_auprc: eu_score(scores.eu_auprc),
            ..scores
        });
    }
    let mut out = super::output::stdout();
    if b.json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    } else {
        writeln!(out, "{}", table(&rows))?;
    }
    Ok(())
}

/// A method as `eval` runs it: the name its row carries and what trains.
/// `single` is one plain network (an ensemble of one, no EU): the unit of
/// training cost in the paper's claim, and the skill any method with EU
/// should at least keep. It samples N times from its one set of weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Contender {
    name: &'static str,
    method: Method,
}

/// The name of the one-network reference in `--methods`.
const SINGLE: &str = "single";

/// The most samples (M × N) per cell `eval` keeps for a step.
const MAX_DRAWS_PER_CELL: usize = 100_000;

/// The methods to compare, once every option is known to be usable: a bad
/// option fails here, before any data is written or a model trained.
fn check_options(b: &Benchmark) -> Result<Vec<Contender>> {
    if b.members == 0 {
        bail!("--m 0: every method needs at least one member");
    }
    if b.samples < 2 {
        bail!(
            "--n {}: AU is the variance of each member's samples, so every member needs at least two",
            b.samples
        );
    }
    // eval keeps every sample of a step for CRPS and the rank histogram:
    // M × N × 10,395 cells × 4 bytes, 4.2 GB at this bound.
    if b.members.saturating_mul(b.samples) > MAX_DRAWS_PER_CELL {
        bail!(
            "--m {} --n {}: {} samples per cell; eval keeps every sample of a step, so at most \
             {MAX_DRAWS_PER_CELL} (M × N)",
            b.members,
            b.samples,
            b.members.saturating_mul(b.samples)
        );
    }
    if b.iterations == Some(0) {
        bail!("--iterations 0: training needs at least one update");
    }
    if b.train_steps < 2 {
        bail!(
            "--train-steps {}: at least 2 steps make one training pair",
            b.train_steps
        );
    }
    if b.test_steps < 2 {
        bail!(
            "--test-steps {}: at least 2 steps make one forecast",
            b.test_steps
        );
    }
    let mut contenders: Vec<Contender> = Vec::new();
    for name in &b.methods {
        let contender = if name == SINGLE {
            Contender {
                name: SINGLE,
                method: Method::Ensemble { members: 1 },
            }
        } else {
            let method = Method::from_name(name, b.members)
                .with_context(|| format!("--methods (or '{SINGLE}', one plain network)"))?;
            Contender {
                name: method.name(),
                method,
            }
        };
        if contenders.iter().any(|c| c.name == contender.name) {
            bail!("--methods: '{name}' is named twice");
        }
        contenders.push(contender);
    }
    Ok(contenders)
}

/// What eval holds, checked before anything is written: every step of a
/// span is read into memory (`read_steps`, which would stop at the query
/// memory limit once gigabytes of it were written), and every sample of a
/// held-out step is kept for CRPS (M × N × cells × 4 bytes, 4.2 GB at
/// [`MAX_DRAWS_PER_CELL`]). Either past the limit is refused here.
fn check_memory_fits(b: &Benchmark) -> Result<()> {
    let limit = memory::limit_bytes().map_err(anyhow::Error::msg)?;
    let too_much = |what: String, needed: u64| {
        anyhow::anyhow!(
            "{what} takes about {}, more than the {} eval may hold here ({}, default half of \
             the memory)",
            memory::amount(needed),
            memory::amount(limit),
            memory::LIMIT_VAR
        )
    };
    // Both spans are written on the synthetic data's default grid.
    let synth = SynthArgs::new(b.work.clone(), TRAIN_START, b.train_steps, 0, vec![]);
    let cells = synth.config()?.grid.cells() as u64;
    for (flag, steps, bytes) in [
        ("--train-steps", b.train_steps, PackedStep::BYTES_PER_ROW),
        ("--test-steps", b.test_steps, StepField::BYTES_PER_ROW),
    ] {
        let needed = (steps as u64).saturating_mul(cells).saturating_mul(bytes);
        if needed > limit {
            return Err(too_much(
                format!("{flag} {steps}: reading {steps} steps of {cells} cells"),
                needed,
            ));
        }
    }
    let draws = b.members.saturating_mul(b.samples) as u64;
    let needed = draws.saturating_mul(cells).saturating_mul(4);
    if needed > limit {
        return Err(too_much(
            format!(
                "--m {} --n {}: keeping {draws} samples of each of {cells} cells",
                b.members, b.samples
            ),
            needed,
        ));
    }
    Ok(())
}

/// Writes a synthetic span unless an earlier run did (same seed, same bytes).
async fn ensure_data(
    dir: &Path,
    start: &str,
    steps: usize,
    seed: u64,
    ood: Vec<String>,
) -> Result<()> {
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(());
    }
    generate(&SynthArgs::new(dir.to_path_buf(), start, steps, seed, ood)).await?;
    std::fs::write(&done, b"").with_context(|| format!("{}", done.display()))?;
    Ok(())
}

/// Whether a kept model was trained, to the end, with exactly these
/// settings: method, every training setting (seed, rate, anchor, ...),
/// the hyper-network, the diffusion, the cell network and the training span
/// (`--train-steps`: a kept model may have learned from another). Anything else is
/// retrained, so a changed pipeline never scores a stale model.
fn trained_with(
    model: &ForecastModel,
    settings: &uqcast_forecast::FieldTraining,
    steps: &[PackedStep],
) -> bool {
    let c = &model.checkpoint;
    let same_network = match &c.primary {
        PrimaryConfig::Mlp(mlp) => {
            mlp.hidden == settings.mlp.hidden
                && mlp.time_dim == settings.mlp.time_dim
                && mlp.activation == settings.mlp.activation
        }
        PrimaryConfig::Unet(_) => false,
    };
    c.method == settings.method
        && c.train == settings.train
        && c.step == settings.train.iterations
        && c.hyper == settings.hyper
        && c.diffusion == settings.diffusion
        && model.meta.patch == settings.patch
        && model.meta.training.covers_the_same_steps(steps)
        && same_network
}

/// Loads `work/models/<method>-m<M>-i<iterations>` or trains it first.
async fn trained_model(
    pipeline: &Pipeline,
    method: Method,
    iterations: u64,
    grid: &ModelGrid,
    steps: &[PackedStep],
    work: &Path,
    source: &Path,
) -> Result<ForecastModel> {
    let members = match method {
        Method::Ensemble { members } => members,
        _ => 1,
    };
    let path = work.join("models").join(format!(
        "{}-m{members}-i{iterations}.safetensors",
        method.name()
    ));
    let device = uqcast_hyperdm::default_device()?;
    let mut settings = pipeline.field_training(method);
    settings.train.iterations = iterations;
    if path.is_file() {
        let model = ForecastModel::load(&path, &device)?;
        if trained_with(&model, &settings, steps) {
            eprintln!("eval: {} loaded from {}", method.name(), path.display());
            return Ok(model);
        }
    }
    std::fs::create_dir_all(work.join("models"))
        .with_context(|| format!("{}", work.join("models").display()))?;
    eprintln!(
        "eval: training {} ({} updates{}) on {} steps",
        method,
        iterations,
        if members > 1 { " per member" } else { "" },
        steps.len()
    );
    let (steps, grid, out, source) = (
        steps.to_vec(),
        grid.clone(),
        path.clone(),
        source.display().to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let device = uqcast_hyperdm::default_device()?;
        let progress = |p: uqcast_hyperdm::Progress| {
            if p.iteration == p.iterations || p.iteration.is_multiple_of((p.iterations / 4).max(1))
            {
                eprintln!(
                    "eval: {} {}/{} loss {:.4} {:.0} s",
                    method.name(),
                    p.iteration,
                    p.iterations,
                    p.loss,
                    p.elapsed_seconds
                );
            }
        };
        let notes = |note: &str| eprintln!("eval: {} {note}", method.name());
        uqcast_forecast::model::train(
            &steps, &grid, &settings, &source, &out, &device, progress, notes,
        )
        .map_err(anyhow::Error::from)
    })
    .await
    .context("training task failed")??;
    Ok(ForecastModel::load(&path, &device)?)
}

/// The held-out span's ground truth: true noise variance per cell and the
/// OOD mask per step time.
struct Truth {
    variance: Vec<f64>,
    ood: BTreeMap<i64, Vec<bool>>,
    ood_events: Vec<OodEvent>,
    synth_grid: LatLonGrid,
}

impl Truth {
    async fn load(dir: &Path, grid: &ModelGrid) -> Result<Self> {
        let truth = dir.join("truth");
        let by_key = true_variance(&truth.join("innovation_variance.nc")).await?;
        let mut variance = Vec::with_capacity(grid.cells());
        for lat in &grid.latitude {
            for lon in &grid.longitude {
                variance.push(
                    *by_key
                        .get(&grid_key(*lat, *lon))
                        .with_context(|| format!("no true variance at {lat}, {lon}"))?,
                );
            }
        }
        Ok(Self {
            variance,
            ood: BTreeMap::new(),
            ood_events: read_ood_events(&truth.join("ood.json"))?,
            synth_grid: LatLonGrid {
                latitude: grid.latitude.clone(),
                longitude: grid.longitude.clone(),
            },
        })
    }

    /// Which cells of the step at `time` were altered.
    fn mask(&mut self, time: i64) -> &[bool] {
        let (events, grid) = (&self.ood_events, &self.synth_grid);
        self.ood
            .entry(time)
            .or_insert_with(|| OodEvent::union_mask(events, grid, time))
    }
}

/// Sums over the in-distribution forecasts, then the scores.
fn score(
    model: &ForecastModel,
    settings: &InferenceSettings,
    grid: &ModelGrid,
    steps: &[StepField],
    truth: &mut Truth,
    iterations: u64,
) -> Result<MethodScores> {
    let norm = model.meta.normalisation;
    let unit = |k: f32| f64::from(norm.to_unit(k));
    let per_cell = settings.members * settings.samples;
    let lat: Vec<f64> = grid
        .latitude
        .iter()
        .flat_map(|&y| std::iter::repeat_n(y, grid.cols()))
        .collect();
    let (mut ssims, mut psnrs, mut sampling) = (vec![], vec![], vec![]);
    let (mut crps, mut crps_member, mut crps_g, mut n) = (0.0, 0.0, 0.0, 0usize);
    let (mut means, mut variances, mut obs, mut lats) = (vec![], vec![], vec![], vec![]);
    let (mut au_sum, mut au_steps) = (vec![0.0; grid.cells()], 0usize);
    let (mut eu_scores, mut eu_labels) = (vec![], vec![]);
    let mut ranks = vec![0u64; settings.samples + 1];
    let lead = model.lead_micros();
    for (i, step) in steps.iter().enumerate() {
        let Some(next) = steps[i + 1..].iter().find(|s| s.time == step.time + lead) else {
            continue;
        };
        let started = Instant::now();
        let (f, samples) = model.forecast_with_samples(step, settings)?;
        sampling.push(started.elapsed().as_secs_f64());
        let input_ood = truth.mask(step.time).to_vec();
        let target_ood = truth.mask(next.time).iter().any(|&b| b);
        eu_scores.extend(f.eu.iter().map(|&e| f64::from(e)));
        eu_labels.extend(input_ood.iter().copied());
        if input_ood.iter().any(|&b| b) || target_ood {
            continue;
        }
        let pred: Vec<f64> = f.mean.iter().map(|&k| unit(k)).collect();
        let real: Vec<f64> = next.values.iter().map(|&k| unit(k)).collect();
        ssims.push(ssim(&pred, &real, grid.rows(), grid.cols(), 2.0).context("SSIM")?);
        psnrs.push(psnr(&pred, &real, 2.0).context("PSNR")?);
        for cell in 0..grid.cells() {
            let y = f64::from(next.values[cell]);
            let members: Vec<f64> = samples[cell * per_cell..(cell + 1) * per_cell]
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            let var = f64::from(f.au[cell]) + f64::from(f.eu[cell]);
            // Sample j of every member starts from the same noise, so the
            // fair estimator pairs samples of different noise only
            // (`crps_common_noise`); `check_options` makes sure every member
            // has the two samples it needs.
            let fair = CrpsEstimator::Fair;
            crps += crps_common_noise(&members, settings.members, y, fair).context("CRPS")?;
            crps_member += crps_member_mean(&members, settings.members, y, fair).context("CRPS")?;
            let one_per_noise: Vec<f64> = (0..settings.samples)
                .map(|j| {
                    let draw = mix(settings.seed ^ mix((i * grid.cells() + cell) as u64));
                    let member = mix(draw ^ j as u64) as usize % settings.members;
                    members[member * settings.samples + j]
                })
                .collect();
            for (total, count) in ranks
                .iter_mut()
                .zip(rank_histogram(&one_per_noise, settings.samples, &[y]).context("ranks")?)
            {
                *total += count;
            }
            crps_g += crps_gaussian(y, f64::from(f.mean[cell]), var).context("CRPS")?;
            means.push(f64::from(f.mean[cell]));
            variances.push(var);
            obs.push(y);
            au_sum[cell] += f64::from(f.au[cell]);
            n += 1;
        }
        lats.extend_from_slice(&lat);
        au_steps += 1;
    }
    if n == 0 {
        bail!("no in-distribution forecast with a target step in the held-out span");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let au_map: Vec<f64> = au_sum.iter().map(|s| s / au_steps as f64).collect();
    let rmse = (means
        .iter()
        .zip(&obs)
        .map(|(m, y)| (m - y).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    let deciles = rank_deciles(&ranks).context("rank histogram")?;
    Ok(MethodScores {
        method: String::new(),
        rank_histogram: deciles,
        ssim: mean(&ssims),
        psnr: mean(&psnrs),
        crps: crps / n as f64,
        crps_member: crps_member / n as f64,
        crps_gaussian: crps_g / n as f64,
        rmse,
        rmse_lat_weighted: weighted_rmse(&means, &obs, &lats, AreaWeight::CosLatitude)
            .unwrap_or(f64::NAN),
        spread_skill: spread_skill(&means, &variances, &obs, per_cell).unwrap_or(f64::NAN),
        au_correlation: pearson(&au_map, &truth.variance).unwrap_or(f64::NAN),
        eu_auroc: auroc(&eu_scores, &eu_labels).unwrap_or(f64::NAN),
        eu_auprc: auprc(&eu_scores, &eu_labels).unwrap_or(f64::NAN),
        train_seconds: model.meta.training.seconds,
        sample_seconds: mean(&sampling),
        members: settings.members,
        samples: settings.samples,
        iterations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn benchmark(methods: &[&str]) -> Benchmark {
        Benchmark {
            config: PathBuf::from("p.toml"),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            members: 4,
            samples: 16,
            iterations: None,
            train_steps: 240,
            test_steps: 6,
            work: PathBuf::from("w"),
            json: false,
        }
    }

    #[test]
    fn single_is_an_ensemble_of_one_under_its_own_name() {
        let c = check_options(&benchmark(&["ensemble", SINGLE])).unwrap();
        assert_eq!(c[0].method, Method::Ensemble { members: 4 });
        assert_eq!(
            (c[1].name, c[1].method),
            (SINGLE, Method::Ensemble { members: 1 })
        );
        let err = check_options(&benchmark(&[SINGLE, "hyperdm", SINGLE])).unwrap_err();
        assert!(err.to_string().contains("'single' is named twice"), "{err}");
        let err = format!("{:#}", check_options(&benchmark(&["bayes"])).unwrap_err());
        assert!(
            err.contains("'bayes' is not one of") && err.contains(SINGLE),
            "{err}"
        );
    }
}
