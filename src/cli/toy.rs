//! `uqcast toy au|eu|gap`: the HyperDM paper's toy experiment
//! (x = sin(y) + η, y ~ U(−5, 5)), printed as a table or, with `--json`, as
//! `{"experiment":…,"rows":[…],"seconds":…}`.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use uqcast_forecast::model::{MAX_MEMBERS, MAX_SAMPLES};
use uqcast_hyperdm::toy::{ToyData, ToySettings, grid, run};
use uqcast_hyperdm::{Prediction, Progress, Sampler, default_device};

#[derive(Debug, Args)]
pub struct ToyArgs {
    #[command(subcommand)]
    experiment: Experiment,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Experiment {
    /// Aleatoric uncertainty against known noise levels.
    Au {
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.04,0.16,0.64")]
        sigma2: Vec<f64>,
        #[arg(long, default_value_t = 500)]
        train_size: usize,
    },
    /// Epistemic uncertainty as the training set grows.
    Eu {
        #[arg(long, value_delimiter = ',', default_value = "100,200,400,800")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 0.01)]
        sigma2: f64,
    },
    /// Epistemic uncertainty inside the data and inside a band left out of it.
    Gap {
        /// The band of y left out of training.
        #[arg(long, value_delimiter = ',', default_value = "-1.5,1.5")]
        band: Vec<f64>,
        #[arg(long, default_value_t = 500)]
        train_size: usize,
        #[arg(long, default_value_t = 0.01)]
        sigma2: f64,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Weight draws M (default 10; for `eu` 200: EU is a variance over the
    /// members, whose relative standard error √(2/(M − 1)) is 47% at M = 10,
    /// 20% at M = 50 and 10% at M = 200; orders of EUs that differ by tens
    /// of per cent need the last).
    #[arg(long, global = true)]
    m: Option<usize>,
    /// Samples per draw N (default 1,000; for `eu` 50, the same 10,000
    /// predictions per test point: the members share their noise, so N
    /// barely moves EU while M sets its error).
    #[arg(long, global = true)]
    n: Option<usize>,
    /// Training iterations (default 12,000; for `eu` 24,000: EU inside
    /// the data keeps falling with training long after AU has settled, and
    /// at 12,000 it sits on a floor that hides its fall with |D|).
    #[arg(long, global = true, conflicts_with = "epochs")]
    iterations: Option<u64>,
    /// Train for this many passes over the data instead (the paper's protocol:
    /// smaller data sets get fewer updates).
    #[arg(long, global = true)]
    epochs: Option<u64>,
    /// Learning rate.
    #[arg(long, global = true)]
    lr: Option<f64>,
    /// Anchored training: pull of each generated network toward its own
    /// random anchor, at 500 training pairs (it scales as 1/|D|; default
    /// 0.003, 0: off).
    #[arg(long, global = true)]
    anchor: Option<f64>,
    /// A linear path from z to the generated weights (default true).
    #[arg(long, global = true)]
    z_skip: Option<bool>,
    /// Fraction of their usual initial scale at which the layers that carry
    /// z to the weights start (default 1).
    #[arg(long, global = true)]
    z_init: Option<f64>,
    /// Train each z with its mirror −z on the same rows and noise (default true).
    #[arg(long, global = true)]
    antithetic: Option<bool>,
    /// z draws (antithetic pairs, with `--antithetic`) per update; the
    /// minibatch's rows are split between them (default 1).
    #[arg(long, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    z_per_step: Option<usize>,
    /// Rows per update (default 256; for `eu` 1,024). An antithetic pair
    /// trains on half of them twice. Inside the data, what is left of EU
    /// after training is mostly minibatch noise written into the z-dependent
    /// weights; it falls with the rows per update, not with |D|, and at 256
    /// rows it hid the fall from 400 to 800 pairs (crate README, toy EU).
    #[arg(long, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch_size: Option<usize>,
    /// The learning rate decays (cosine) to this fraction of `--lr` (default 0.02).
    #[arg(long, global = true)]
    final_lr_fraction: Option<f64>,
    /// ddpm, ddim-K or dpm2m-K.
    #[arg(long, global = true)]
    sampler: Option<Sampler>,
    /// What the network predicts: epsilon (the paper), x0 (the reference code) or v.
    #[arg(long, global = true, value_parser = ["epsilon", "x0", "v"])]
    prediction: Option<String>,
    #[arg(long, global = true, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Common {
    /// Settings for a training set of `size` pairs.
    fn settings_for(&self, size: usize) -> ToySettings {
        let mut s = self.settings();
        if let Some(epochs) = self.epochs {
            s.train.iterations = (epochs * size as u64)
                .div_ceil(s.train.batch_size as u64)
                .max(1);
        }
        s
    }

    fn settings(&self) -> ToySettings {
        let mut s = ToySettings {
            members: self.m.unwrap_or(DRAWS.0),
            samples: self.n.unwrap_or(DRAWS.1),
            ..ToySettings::default()
        };
        if let Some(i) = self.iterations {
            s.train.iterations = i;
        }
        if let Some(lr) = self.lr {
            s.train.optimizer.lr = lr;
        }
        if let Some(skip) = self.z_skip {
            s.hyper.z_skip = skip;
        }
        if let Some(z_init) = self.z_init {
            s.hyper.z_init = z_init;
        }
        if let Some(antithetic) = self.antithetic {
            s.train.antithetic = antithetic;
        }
        if let Some(draws) = self.z_per_step {
            s.train.z_per_step = draws;
        }
        if let Some(rows) = self.batch_size {
            s.train.batch_size = rows;
        }
        if let Some(fraction) = self.final_lr_fraction {
            s.train.final_lr_fraction = fraction;
        }
        if let Some(anchor) = self.anchor {
            s.train.anchor = anchor;
        }
        if let Some(sampler) = self.sampler {
            s.sampler = sampler;
        }
        if let Some(p) = &self.prediction {
            s.diffusion.prediction = match p.as_str() {
                "x0" => Prediction::X0,
                "v" => Prediction::V,
                _ => Prediction::Epsilon,
            };
        }
        s.train.seed = self.seed;
        s
    }
}

fn progress(label: String, quiet: bool) -> impl FnMut(Progress) {
    move |p: Progress| {
        if !quiet {
            eprint!(
                "\r{label}: iteration {}/{} loss {:.4} ({:.0} s)   ",
                p.iteration, p.iterations, p.loss, p.elapsed_seconds
            );
            if p.iteration == p.iterations {
                eprintln!();
            }
        }
    }
}

/// Fails on an option no experiment can run with, before any training.
fn check(settings: &ToySettings, args: &ToyArgs) -> Result<()> {
    let bad = |option: &str, value: &dyn std::fmt::Display, problem: &str| -> Result<()> {
        bail!("toy option '{option}': {value} {problem}")
    };
    if settings.members == 0 {
        bad("m", &0, "must be at least 1")?;
    }
    if settings.samples < 2 {
        bad(
            "n",
            &settings.samples,
            "must be at least 2 (AU is a variance over samples)",
        )?;
    }
    // The forecast's bounds: time grows with M × N, so a mistyped count is
    // refused at once (M = 10⁸ was taken, and its members sampled one by one).
    if settings.members > MAX_MEMBERS {
        bad(
            "m",
            &settings.members,
            &format!("must be at most {MAX_MEMBERS} (each member is a network drawn and sampled)"),
        )?;
    }
    if settings.samples > MAX_SAMPLES {
        bad(
            "n",
            &settings.samples,
            &format!("must be at most {MAX_SAMPLES} samples per member"),
        )?;
    }
    if args.common.epochs.is_none() && settings.train.iterations == 0 {
        bad("iterations", &0, "must be at least 1")?;
    }
    if args.common.epochs == Some(0) {
        bad("epochs", &0, "must be at least 1")?;
    }
    if let Err(e) = settings.sampler.check(settings.diffusion.steps) {
        bail!("toy option 'sampler': {e}");
    }
    let lr = settings.train.optimizer.lr;
    if !(lr.is_finite() && lr > 0.0) {
        bad("lr", &lr, "must be a number > 0")?;
    }
    let anchor = settings.train.anchor;
    if !(anchor.is_finite() && anchor >= 0.0) {
        bad("anchor", &anchor, "must be a number ≥ 0")?;
    }
    let z_init = settings.hyper.z_init;
    if !(z_init.is_finite() && z_init >= 0.0) {
        bad("z-init", &z_init, "must be a number ≥ 0")?;
    }
    let floor = settings.train.final_lr_fraction;
    if !(0.0..=1.0).contains(&floor) {
        bad("final-lr-fraction", &floor, "must be within 0..1")?;
    }
    let (size_option, sizes, sigma2): (&str, &[usize], &[f64]) = match &args.experiment {
        Experiment::Au { sigma2, train_size } => {
            ("train-size", std::slice::from_ref(train_size), sigma2)
        }
        Experiment::Eu { sizes, sigma2 } => ("sizes", sizes, std::slice::from_ref(sigma2)),
        Experiment::Gap {
            train_size, sigma2, ..
        } => (
            "train-size",
            std::slice::from_ref(train_size),
            std::slice::from_ref(sigma2),
        ),
    };
    if let Some(size) = sizes.iter().find(|&&n| n == 0) {
        bad(size_option, size, "must be at least 1 pair")?;
    }
    if let Some(s2) = sigma2.iter().find(|s2| !(s2.is_finite() && **s2 >= 0.0)) {
        bad("sigma2", s2, "must be a noise variance ≥ 0")?;
    }
    Ok(())
}

pub async fn run_toy(args: ToyArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || experiment(args)).await?
}

/// Default (M, N) of `au` and `gap`, and of `eu` (see `Common::m`).
const DRAWS: (usize, usize) = (10, 1000);
const EU_DRAWS: (usize, usize) = (200, 50);
/// Default training length of `eu` (see `Common::iterations`).
const EU_ITERATIONS: u64 = 24_000;
/// Default rows per update of `eu` (see `Common::batch_size`).
const EU_BATCH_SIZE: usize = 1024;

fn experiment(mut args: ToyArgs) -> Result<()> {
    if matches!(args.experiment, Experiment::Eu { .. }) {
        args.common.m.get_or_insert(EU_DRAWS.0);
        args.common.n.get_or_insert(EU_DRAWS.1);
        args.common.batch_size.get_or_insert(EU_BATCH_SIZE);
        if args.common.epochs.is_none() {
            args.common.iterations.get_or_insert(EU_ITERATIONS);
        }
    }
    let settings = args.common.settings();
    check(&settings, &args)?;
    let (device, seed, quiet) = (default_device()?, args.common.seed, false);
    let started = Instant::now();
    let (name, rows): (&str, Vec<Value>) = match &args.experiment {
        Experiment::Au { sigma2, train_size } => {
            let test_y = grid(-4.5, 4.5, 32);
            let mut rows = Vec::new();
            for &s2 in sigma2 {
                let data = ToyData::generate(*train_size, s2, None, seed);
                let row_settings = args.common.settings_for(*train_size);
                let out = run(
                    &data,
                    &row_settings,
                    &test_y,
                    &device,
                    progress(format!("σ²={s2}"), quiet),
                )?;
                rows.push(json!({"sigma2": s2, "au": out.average(&out.au, |_| true), "eu": out.average(&out.eu, |_| true),
                    "iterations": row_settings.train.iterations,
                    "train_seconds": out.train_seconds, "sample_seconds": out.sample_seconds}));
            }
            ("au", rows)
        }
        Experiment::Eu { sizes, sigma2 } => {
            let test_y = grid(-4.5, 4.5, 32);
            let mut rows = Vec::new();
            for &size in sizes {
                let data = ToyData::generate(size, *sigma2, None, seed);
                let row_settings = args.common.settings_for(size);
                let out = run(
                    &data,
                    &row_settings,
                    &test_y,
                    &device,
                    progress(format!("|D|={size}"), quiet),
                )?;
                rows.push(json!({"train_size": size, "au": out.average(&out.au, |_| true), "eu": out.average(&out.eu, |_| true),
                    "iterations": row_settings.train.iterations,
                    "train_seconds": out.train_seconds, "sample_seconds": out.sample_seconds}));
            }
            ("eu", rows)
        }
        Experiment::Gap {
            band,
            train_size,
            sigma2,
        } => {
            let [lo, hi] = band[..] else {
                bail!("toy gap option 'band': expected LOW,HIGH, got {band:?}")
            };
            if !((-5.0..5.0).contains(&lo) && lo < hi && hi <= 5.0) {
                bail!("toy gap option 'band': {lo},{hi} must be an interval inside (-5, 5)");
            }
            let data = ToyData::generate(*train_size, *sigma2, Some((lo, hi)), seed);
            let test_y = grid(-4.5, 4.5, 37);
            let row_settings = args.common.settings_for(*train_size);
            let out = run(
                &data,
                &row_settings,
                &test_y,
                &device,
                progress("gap".into(), quiet),
            )?;
            let margin = 0.5;
            let inside = out.average(&out.eu, |y| y < lo - margin || y > hi + margin);
            let gap = out.average(&out.eu, |y| y > lo + margin && y < hi - margin);
            (
                "gap",
                vec![
                    json!({"band": [lo, hi], "eu_inside": inside, "eu_gap": gap, "ratio": gap / inside,
                "au_inside": out.average(&out.au, |y| y < lo - margin || y > hi + margin),
                "iterations": row_settings.train.iterations,
                "train_seconds": out.train_seconds, "sample_seconds": out.sample_seconds}),
                ],
            )
        }
    };
    let report = json!({"experiment": name, "rows": rows, "seconds": started.elapsed().as_secs_f64(),
        "m": settings.members, "n": settings.samples, "sampler": settings.sampler.to_string(),
        "batch_size": settings.train.batch_size,
        // Per row with --epochs (each data size gets its own count).
        "iterations": args.common.epochs.is_none().then_some(settings.train.iterations)});
    let mut out = super::output::stdout();
    if args.common.json {
        writeln!(out, "{report}")?;
    } else {
        for row in &rows {
            writeln!(out, "{row}")?;
        }
        writeln!(
            out,
            "{name}: {:.1} s in all (M = {}, N = {}, {})",
            report["seconds"].as_f64().unwrap_or(0.0),
            settings.members,
            settings.samples,
            settings.sampler
        )?;
    }
    Ok(())
}
