//! Pipelines as data: a TOML file naming the source, model, sampling,
//! output and flagging rule of a forecast job. Unknown keys are errors.
//! Relative paths inside a pipeline resolve against the pipeline file's
//! directory, so a pipeline and its SQL travel together.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use uqcast_forecast::InferenceSettings;
use uqcast_forecast::features::{Normalisation, Patch};
use uqcast_hyperdm::optim::AdamWConfig;
use uqcast_hyperdm::{
    Activation, DiffusionConfig, HyperConfig, HyperForm, Method, MlpConfig, Prediction, Sampler,
    ScheduleKind, TrainConfig,
};

mod fits;

/// The most diffusion steps a model may be trained with: a hundred times
/// DDPM's 1,000, far past where more steps change a sample.
const MAX_DIFFUSION_STEPS: usize = 100_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: String,
    pub source: Source,
    pub model: ModelSection,
    pub train: TrainSection,
    pub inference: Inference,
    pub output: Output,
    pub flags: Flags,
    /// The pipeline file's directory (set on load).
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// ERA5 NetCDF file, directory or glob (`--input` overrides).
    pub path: String,
    /// SQL over table `era5` that crops/coarsens to the model grid (a file).
    pub query: PathBuf,
    /// `run` reads the input of the steps it forecast within this many days
    /// of the newest again, and forecasts again those whose input changed
    /// (ERA5T replaced by final ERA5); 0 (the default) never does.
    #[serde(default)]
    pub recheck_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub checkpoint: PathBuf,
    pub lead_hours: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub iterations: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Neighbourhood k × k (odd) the cell model sees.
    pub patch: usize,
    /// Hidden widths of the cell MLP and its time-embedding size.
    pub hidden: Vec<usize>,
    pub time_dim: usize,
    /// `relu` (fast on CPUs) or `silu`.
    pub activation: Activation,
    pub z_dim: usize,
    pub hyper_hidden: Vec<usize>,
    /// A linear path from z to the generated weights (see HyperConfig).
    #[serde(default)]
    pub z_skip: bool,
    /// Fraction of their usual initial scale at which the layers that carry
    /// z to the weights start (see HyperConfig::z_init; default 1).
    #[serde(default = "unit")]
    pub z_init: f64,
    /// Each network as a shared base plus a deviation odd in z (see
    /// HyperConfig::centred; default false).
    #[serde(default)]
    pub centred: bool,
    /// Learning rate of the layers that carry z, as a fraction of `lr`
    /// (see HyperConfig::z_lr; default 1).
    #[serde(default = "unit")]
    pub z_lr: f64,
    /// `full` (default: the hyper-network emits every weight) or `rank1`
    /// (per-channel factors of a shared base; see HyperForm).
    #[serde(default)]
    pub hyper_form: HyperForm,
    /// Pull of each generated network toward its own random anchor, which
    /// keeps the members apart away from the data (0: off; see
    /// operators/hyperdm/src/model.rs).
    pub anchor: f64,
    /// Train each z with its mirror −z on the same rows and noise, so the
    /// minibatch noise common to both cancels in the z-dependent weights
    /// (see operators/hyperdm/README.md).
    #[serde(default)]
    pub antithetic: bool,
    /// z draws per minibatch, each on its share of the rows (pairs with
    /// `antithetic`).
    #[serde(default = "one")]
    pub z_per_step: usize,
    pub diffusion_steps: usize,
    /// `hyperdm` (default), or a baseline: `mc-dropout` (p = 0.3) or
    /// `ensemble` (of `[inference] members` networks).
    #[serde(default = "default_method")]
    pub method: String,
    /// Train on at most this many (t, t + lead) pairs, drawn evenly over
    /// the span (seeded by `seed`), so only their steps are read and held
    /// (default: every pair of the span).
    #[serde(default)]
    pub max_pairs: Option<usize>,
}

fn default_method() -> String {
    "hyperdm".into()
}

fn one() -> usize {
    1
}

fn unit() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inference {
    pub members: usize,
    pub samples: usize,
    pub sampler: String,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// SQL over table `forecast` with `{{placeholders}}` (a file).
    pub sql: PathBuf,
    pub tile_degrees: f64,
    pub eu_threshold: Threshold,
    /// A tile is flagged when at least this fraction of its cells exceed the threshold.
    pub min_fraction: f64,
    /// The SQL makes each valid time's flags from that valid time's cells
    /// alone, so a run flags only the steps it wrote and keeps the others'
    /// (`job::flags_incremental`); false (the default) flags every step.
    #[serde(default)]
    pub per_step: bool,
    /// When a run warns of a step it wrote as an EU outlier.
    #[serde(default)]
    pub eu_outliers: Outliers,
}

/// A step whose EU peaks at `times_median` times the median peak of the
/// usual steps or more is an outlier, where the usual steps are at least
/// `min_steps`: the whole flags table's, or with `window_days` those valid
/// within that many days up to the step (`queries/eu_outlier_steps.sql`,
/// `job::eu_outliers`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outliers {
    pub times_median: f64,
    pub min_steps: u64,
    pub window_days: Option<u32>,
}

impl Default for Outliers {
    /// The shipped query's bounds: on the demo the hot disk's step peaks
    /// at 12.4× the median step's, and the next-highest at 1.8×.
    fn default() -> Self {
        Self {
            times_median: 3.0,
            min_steps: 8,
            window_days: None,
        }
    }
}

/// Which cells count as high-EU: EU above a quantile of the step's cells,
/// above a fixed number of K², or, both given, above the greater of the two
/// (high for the step and high in kelvin: a step where the model knows
/// everything well flags nothing).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// This quantile (0..1) of the step's cells' EU.
    pub percentile: Option<f64>,
    /// This many K².
    pub absolute: Option<f64>,
}

impl Pipeline {
    /// Reads and checks a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("pipeline {}", path.display()))?;
        let mut p: Pipeline = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "pipeline {}: {}",
                path.display(),
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })?;
        p.file = path.to_path_buf();
        p.dir = directory_of(path);
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<()> {
        let bad = |field: &str, problem: &str| -> Result<()> {
            bail!("pipeline {}: {field}: {problem}", self.file.display())
        };
        // A checkpoint may be s3://: runs load a cached copy, training stores
        // what it trained in the cache (`session::s3::model_copy`, `store_model`).
        if !is_checkpoint_name(&self.model.checkpoint) {
            bad(
                "model.checkpoint",
                "must name a .safetensors file (the weights; the metadata is the .json beside it)",
            )?;
        }
        if self.model.lead_hours == 0 {
            bad("model.lead_hours", "must be at least 1")?;
        }
        if self.inference.members < 2 {
            bad(
                "inference.members",
                "must be at least 2 (EU needs two weight draws)",
            )?;
        }
        if self.inference.members > uqcast_forecast::model::MAX_MEMBERS {
            bad(
                "inference.members",
                &format!(
                    "must be at most {} (each member is a network drawn and sampled in full)",
                    uqcast_forecast::model::MAX_MEMBERS
                ),
            )?;
        }
        if self.inference.samples < 2 {
            bad(
                "inference.samples",
                "must be at least 2 (AU is the variance of each weight draw's samples)",
            )?;
        }
        if self.inference.samples > uqcast_forecast::model::MAX_SAMPLES {
            bad(
                "inference.samples",
                &format!(
                    "must be at most {} (one cell's samples go through the network in one pass)",
                    uqcast_forecast::model::MAX_SAMPLES
                ),
            )?;
        }
        match self.inference.sampler.parse::<Sampler>() {
            Err(e) => bad("inference.sampler", &e)?,
            Ok(sampler) => {
                if let Err(e) = sampler.check(self.train.diffusion_steps) {
                    bad("inference.sampler", &format!("{e} (train.diffusion_steps)"))?;
                }
            }
        }
        if self.flags.tile_degrees.is_nan() || self.flags.tile_degrees <= 0.0 {
            bad("flags.tile_degrees", "must be positive")?;
        }
        if !(0.0..=1.0).contains(&self.flags.min_fraction) {
            bad("flags.min_fraction", "must be within 0..1")?;
        }
        let Threshold {
            percentile,
            absolute,
        } = self.flags.eu_threshold;
        if percentile.is_none() && absolute.is_none() {
            bad(
                "flags.eu_threshold",
                "give percentile (a quantile of each step's cells, 0..1), absolute (K²), or \
                 both (EU above the greater of the two)",
            )?;
        }
        if percentile.is_some_and(|q| !(0.0..=1.0).contains(&q)) {
            bad("flags.eu_threshold.percentile", "must be within 0..1")?;
        }
        if absolute.is_some_and(|k| k.is_nan() || k < 0.0) {
            bad("flags.eu_threshold.absolute", "must be ≥ 0 K²")?;
        }
        let outliers = self.flags.eu_outliers;
        if !(outliers.times_median.is_finite() && outliers.times_median > 1.0) {
            bad(
                "flags.eu_outliers.times_median",
                "must be a number > 1 (at 1, half the steps would be outliers)",
            )?;
        }
        if outliers.window_days == Some(0) {
            bad(
                "flags.eu_outliers.window_days",
                "must be at least 1 (or absent: the whole table's steps)",
            )?;
        }
        if outliers.min_steps < 3 {
            bad(
                "flags.eu_outliers.min_steps",
                "must be at least 3 (no step of 2 peaks at more than 2× their median)",
            )?;
        }
        if self.train.iterations == 0 {
            bad("train.iterations", "must be at least 1")?;
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0) {
            bad("train.lr", "must be a number > 0")?;
        }
        if !(self.train.weight_decay.is_finite() && self.train.weight_decay >= 0.0) {
            bad("train.weight_decay", "must be a number ≥ 0")?;
        }
        if !(self.train.anchor.is_finite() && self.train.anchor >= 0.0) {
            bad("train.anchor", "must be a number ≥ 0 (0: off)")?;
        }
        if self.train.patch.is_multiple_of(2) {
            bad("train.patch", "must be odd (the cell sits in the middle)")?;
        }
        if self.train.hidden.is_empty() || self.train.hidden.contains(&0) {
            bad("train.hidden", "needs at least one layer, none of width 0")?;
        }
        if self.train.hyper_hidden.contains(&0) {
            bad("train.hyper_hidden", "no layer may have width 0")?;
        }
        if self.train.z_dim == 0 {
            bad(
                "train.z_dim",
                "must be at least 1 (z is what tells the networks apart)",
            )?;
        }
        if self.train.time_dim < 2 {
            bad(
                "train.time_dim",
                "must be at least 2 (without the step's embedding a denoiser cannot tell how noisy its input is)",
            )?;
        }
        if self.train.max_pairs == Some(0) {
            bad(
                "train.max_pairs",
                "must be at least 1 (leave it out to train on every pair)",
            )?;
        }
        if self.train.batch_size == 0 || self.train.diffusion_steps < 2 {
            bad("train", "batch_size must be ≥ 1 and diffusion_steps ≥ 2")?;
        }
        if self.train.diffusion_steps > MAX_DIFFUSION_STEPS {
            bad(
                "train.diffusion_steps",
                &format!(
                    "must be at most {MAX_DIFFUSION_STEPS} (DDPM uses 1,000; the schedule keeps \
                     numbers for every step)"
                ),
            )?;
        }
        if !(self.train.z_init.is_finite() && self.train.z_init >= 0.0) {
            bad("train.z_init", "must be a number ≥ 0")?;
        }
        if !(self.train.z_lr.is_finite() && self.train.z_lr > 0.0) {
            bad("train.z_lr", "must be a number > 0")?;
        }
        if self.train.hyper_form == HyperForm::Rank1 && self.train.centred {
            bad(
                "train.centred",
                "the rank-1 form has its own shared base; centred is for hyper_form = \"full\"",
            )?;
        }
        let pairs = if self.train.antithetic { 2 } else { 1 };
        if self.train.z_per_step == 0 || self.train.z_per_step * pairs > self.train.batch_size {
            bad(
                "train.z_per_step",
                "must be ≥ 1 and leave every z at least one row of batch_size",
            )?;
        }
        Ok(())
    }

    /// A path from the pipeline, resolved against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || is_url(&path.to_string_lossy()) {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    pub fn source_location(&self) -> String {
        let p = Path::new(&self.source.path);
        if p.is_absolute() || is_url(&self.source.path) {
            self.source.path.clone()
        } else {
            self.dir.join(p).display().to_string()
        }
    }

    /// The source SQL text.
    pub fn source_sql(&self) -> Result<String> {
        let path = self.resolve(&self.source.query);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "pipeline {}: source.query {}",
                self.file.display(),
                path.display()
            )
        })
    }

    pub fn inference(&self) -> Result<InferenceSettings> {
        Ok(InferenceSettings {
            members: self.inference.members,
            samples: self.inference.samples,
            sampler: self
                .inference
                .sampler
                .parse()
                .map_err(|e: String| anyhow::anyhow!("inference.sampler: {e}"))?,
            seed: self.inference.seed,
        })
    }

    /// The method `[train] method` names (an ensemble of `[inference] members`).
    pub fn method(&self) -> Result<Method> {
        Method::from_name(&self.train.method, self.inference.members)
            .with_context(|| format!("pipeline {}: [train] method", self.file.display()))
    }

    /// The model's training settings: log-SNR schedule with v-prediction
    /// (what the toy experiments showed keeps small variances; see
    /// operators/hyperdm/README.md).
    pub fn field_training(&self, method: Method) -> uqcast_forecast::FieldTraining {
        let t = &self.train;
        uqcast_forecast::FieldTraining {
            method,
            mlp: MlpConfig {
                hidden: t.hidden.clone(),
                time_dim: t.time_dim,
                activation: t.activation,
                ..MlpConfig::default()
            },
            patch: Patch(t.patch),
            hyper: HyperConfig {
                z_dim: t.z_dim,
                hidden: t.hyper_hidden.clone(),
                z_skip: t.z_skip,
                z_init: t.z_init,
                centred: t.centred,
                z_lr: t.z_lr,
                form: t.hyper_form,
            },
            diffusion: DiffusionConfig {
                steps: t.diffusion_steps,
                prediction: Prediction::V,
                schedule: ScheduleKind::LogSnr,
            },
            train: TrainConfig {
                iterations: t.iterations,
                batch_size: t.batch_size,
                z_per_step: t.z_per_step,
                antithetic: t.antithetic,
                optimizer: AdamWConfig {
                    lr: t.lr,
                    weight_decay: t.weight_decay,
                    ..AdamWConfig::default()
                },
                final_lr_fraction: 0.05,
                seed: t.seed,
                anchor: t.anchor,
            },
            normalisation: Normalisation::default(),
            lead_hours: self.model.lead_hours,
            sample: None,
        }
    }
}

/// Whether a location is a URL (`s3://…`) rather than a local path.
pub fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// Whether `path` can name a checkpoint: its weights are `X.safetensors` and
/// its metadata `X.json`, so another extension (`.json` above all, which
/// would put both in one file) is refused before any training.
pub fn is_checkpoint_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// The directory a pipeline's relative paths resolve against. A pipeline in
/// the current directory has the empty parent, so its paths print as
/// written ("../models/m"), not "./../models/m".
fn directory_of(pipeline_file: &Path) -> PathBuf {
    pipeline_file
        .parent()
        .unwrap_or(Path::new(""))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_pipeline_directory() {
        let join = |file: &str, path: &str| directory_of(Path::new(file)).join(path);
        assert_eq!(join("p.toml", "../models/m"), Path::new("../models/m"));
        assert_eq!(
            join("pipelines/p.toml", "../models/m"),
            Path::new("pipelines/../models/m")
        );
        assert_eq!(
            join("/etc/uqcast/p.toml", "q.sql"),
            Path::new("/etc/uqcast/q.sql")
        );
    }
}
