//! `ForecastModel`: a HyperDM U-Net checkpoint that forecasts a t2m field one
//! lead time ahead, with the grid and normalisation it was trained on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use uqcast_hyperdm::checkpoint::{self, CheckpointMeta};
use uqcast_hyperdm::error::CandleContext;
use uqcast_hyperdm::{
    DiffusionConfig, HyperConfig, HyperDm, Method, MlpConfig, PrimaryConfig, PrimaryMlp, Progress,
    Sampler, TrainConfig,
};

use crate::error::{ForecastError, Result, iso};
use crate::features::{Normalisation, Patch, StepFeatures};
use crate::grid::ModelGrid;
use crate::packed::PackedStep;
use crate::pair_sample::PairSample;
use crate::pairs::{PairData, StepField};
use crate::resume;

/// What a field checkpoint records about its data (the checkpoint's `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMeta {
    pub variable: String,
    pub lead_hours: u32,
    pub grid: ModelGrid,
    pub patch: Patch,
    pub normalisation: Normalisation,
    pub training: TrainingSpan,
}

impl FieldMeta {
    /// What training always writes, checked on load: a hand-edited or
    /// damaged `.json` would otherwise forecast on a grid that no source
    /// fits (blamed on the source) or divide by a zero temperature range.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let axis = |values: &[f64], descending: bool, range: (f64, f64)| {
            if values.is_empty() {
                return Err("holds no value".to_string());
            }
            if let Some(v) = values
                .iter()
                .find(|v| !v.is_finite() || **v < range.0 || **v > range.1)
            {
                return Err(format!("holds {v}, outside {}…{}", range.0, range.1));
            }
            let order = |w: &[f64]| if descending { w[0] > w[1] } else { w[0] < w[1] };
            match values.windows(2).position(|w| !order(w)) {
                Some(i) => Err(format!(
                    "not strictly {}: {} at index {i}, then {}",
                    if descending {
                        "north to south"
                    } else {
                        "west to east"
                    },
                    values[i],
                    values[i + 1]
                )),
                None => Ok(()),
            }
        };
        axis(&self.grid.latitude, true, (-90.0, 90.0)).map_err(|e| ("data.grid.latitude", e))?;
        axis(&self.grid.longitude, false, (-180.0, 360.0))
            .map_err(|e| ("data.grid.longitude", e))?;
        if self.lead_hours == 0 {
            return Err(("data.lead_hours", "0 hours".into()));
        }
        if self.patch.0.is_multiple_of(2) {
            return Err(("data.patch", format!("{} is not odd", self.patch.0)));
        }
        let n = &self.normalisation;
        if !(n.kelvin_min.is_finite() && n.kelvin_max.is_finite() && n.kelvin_min < n.kelvin_max) {
            return Err((
                "data.normalisation",
                format!(
                    "kelvin_min {} is not below kelvin_max {}",
                    n.kelvin_min, n.kelvin_max
                ),
            ));
        }
        if !(n.residual_gain.is_finite() && n.residual_gain > 0.0) {
            return Err((
                "data.normalisation.residual_gain",
                format!("{} is not a positive number", n.residual_gain),
            ));
        }
        Ok(())
    }
}

/// The training data, for provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpan {
    pub first: String,
    pub last: String,
    pub steps: usize,
    pub pairs: usize,
    /// Steps without a partner exactly one lead later (skipped; of the
    /// whole span where the pairs were drawn from it).
    pub unpaired: usize,
    /// The pairs of the span the `pairs` were drawn from (`[train]
    /// max_pairs`); absent where every pair of the span was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs_in_span: Option<usize>,
    pub source: String,
    pub seconds: f64,
}

impl TrainingSpan {
    /// The first and last valid time of `steps`, as the span records them.
    fn bounds(steps: &[PackedStep]) -> (String, String) {
        let times = steps.iter().map(|s| s.time);
        (
            iso(times.clone().min().unwrap_or_default()),
            iso(times.max().unwrap_or_default()),
        )
    }

    /// Whether these steps are the span a model was trained on (same count,
    /// first and last valid time); the source path may have moved.
    pub fn covers_the_same_steps(&self, steps: &[PackedStep]) -> bool {
        self.steps == steps.len() && (self.first.clone(), self.last.clone()) == Self::bounds(steps)
    }
}

/// Architecture and optimisation of a field model.
#[derive(Debug, Clone)]
pub struct FieldTraining {
    /// Hidden widths and time-embedding size of the cell MLP.
    pub mlp: MlpConfig,
    pub patch: Patch,
    /// HyperDM or a baseline (MC-Dropout, deep ensemble).
    pub method: Method,
    pub hyper: HyperConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub normalisation: Normalisation,
    pub lead_hours: u32,
    /// The pairs drawn from a longer span, whose steps are the ones given
    /// to [`train`]; `None`: every pair of those steps.
    pub sample: Option<PairSample>,
}

/// How many predictions to draw per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceSettings {
    pub members: usize,
    pub samples: usize,
    pub sampler: Sampler,
    pub seed: u64,
}

/// One step's forecast, row-major over the model grid.
#[derive(Debug, Clone, PartialEq)]
pub struct StepForecast {
    /// Valid time of the forecast (initial time + lead), UTC microseconds.
    pub valid_time: i64,
    /// Kelvin.
    pub mean: Vec<f32>,
    /// K², E_i[Var_j].
    pub au: Vec<f32>,
    /// K², Var_i[E_j].
    pub eu: Vec<f32>,
}

/// A loaded field model.
#[derive(Debug)]
pub struct ForecastModel {
    pub model: HyperDm<PrimaryMlp>,
    pub meta: FieldMeta,
    pub checkpoint: CheckpointMeta,
    pub path: PathBuf,
    /// `<file stem>@<16 hex digits of a hash of the weights>`.
    pub id: String,
}

pub(crate) fn build_cell_mlp(config: &PrimaryConfig) -> uqcast_hyperdm::Result<PrimaryMlp> {
    match config {
        PrimaryConfig::Mlp(c) => Ok(PrimaryMlp::new(c)),
        other => Err(uqcast_hyperdm::HyperdmError::Config {
            field: "primary",
            problem: format!("a field model is a cell MLP, the checkpoint has {other:?}"),
        }),
    }
}

/// Cells sampled together at N ≤ 100 (see [`ForecastModel::forecast`]).
const CELLS_PER_CHUNK: usize = 1024;
/// Rows (N samples × cells) one forward pass holds at most. A row of the
/// cell model costs about 1.5 KB in flight (measured peak: 6.3 GB at
/// N = 4,000 with 1,024-cell chunks), so a pass stays near 150 MB whatever
/// N is: above N = 100 a chunk holds fewer cells.
const ROWS_PER_PASS: usize = CELLS_PER_CHUNK * 100;
/// The most samples per member and cell: one cell's N samples must fit a pass.
pub const MAX_SAMPLES: usize = ROWS_PER_PASS;
/// The most members (weight draws) per forecast: each is a whole network
/// drawn and sampled, so a forecast's time grows with M. The HyperDM paper
/// uses 10; this is a hundred times that, and a mistyped count (a few
/// digits too many) is refused instead of sampling for days.
pub const MAX_MEMBERS: usize = 1_000;

/// Cells per chunk for N samples: 1,024 up to N = 100 (the streams, so the
/// numbers, of those runs are unchanged), fewer above.
fn cells_per_chunk(samples: usize) -> usize {
    (ROWS_PER_PASS / samples.max(1)).clamp(1, CELLS_PER_CHUNK)
}

/// FNV-1a: a stable content hash for model ids (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from any input, for
/// seeds per step and seeded choices that must not depend on the order of
/// the work (`uqcast eval`'s rank histogram).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl ForecastModel {
    /// Whether this model can sample with `settings`: the sampler fits its
    /// diffusion steps and the members its method (an ensemble has only so
    /// many networks). On failure, the setting at fault and why; callers
    /// name where the setting came from.
    pub fn check_settings(
        &self,
        settings: &InferenceSettings,
    ) -> std::result::Result<(), (&'static str, String)> {
        settings
            .sampler
            .check(self.model.schedule.steps())
            .map_err(|e| ("sampler", e))?;
        self.checkpoint
            .method
            .check_members(settings.members)
            .map_err(|e| ("members", e))
    }

    /// Loads `path` (`.safetensors` beside its `.json`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let model_err = |source| ForecastError::Model {
            path: path.to_path_buf(),
            source,
        };
        if !path.is_file() {
            return Err(ForecastError::NoModel {
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| ForecastError::Meta {
            path: path.to_path_buf(),
            field: "checkpoint",
            problem: e.to_string(),
        })?;
        let (model, _, checkpoint) =
            checkpoint::load_bytes(path, &bytes, device, build_cell_mlp).map_err(model_err)?;
        let mut meta: FieldMeta =
            serde_json::from_value(checkpoint.data.clone()).map_err(|e| ForecastError::Meta {
                path: path.with_extension("json"),
                field: "data",
                problem: format!("not a field model: {e}"),
            })?;
        if let Err((field, problem)) = meta.check() {
            return Err(ForecastError::Meta {
                path: path.with_extension("json"),
                field,
                problem,
            });
        }
        meta.grid.build_index();
        // `load` built a cell MLP, so the config is one.
        if let PrimaryConfig::Mlp(mlp) = &checkpoint.primary
            && (mlp.cond_dim != meta.patch.cond_dim() || mlp.data_dim != 1)
        {
            return Err(ForecastError::Meta {
                path: path.with_extension("json"),
                field: "primary.cond_dim",
                problem: format!(
                    "{} condition values for a {}×{} patch, which needs {}",
                    mlp.cond_dim,
                    meta.patch.0,
                    meta.patch.0,
                    meta.patch.cond_dim()
                ),
            });
        }
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let id = format!("{stem}@{:016x}", fnv1a(&bytes));
        Ok(Self {
            model,
            meta,
            checkpoint,
            path: path.to_path_buf(),
            id,
        })
    }

    pub fn lead_micros(&self) -> i64 {
        i64::from(self.meta.lead_hours) * 3_600_000_000
    }

    /// Samples M×N forecasts from one complete step. Every step sees the
    /// same M networks (weights drawn from `settings.seed`); the diffusion
    /// noise of a step derives from the seed and its time only, so a step
    /// gets the same numbers whichever run, order or batch it is in.
    pub fn forecast(&self, step: &StepField, settings: &InferenceSettings) -> Result<StepForecast> {
        Ok(self.sample_step(step, settings, false)?.0)
    }

    /// As [`ForecastModel::forecast`], also returning every prediction in
    /// kelvin: `cells × (M·N)` values, cell after cell, each cell's M·N
    /// samples member by member (for scores such as the ensemble CRPS).
    pub fn forecast_with_samples(
        &self,
        step: &StepField,
        settings: &InferenceSettings,
    ) -> Result<(StepForecast, Vec<f32>)> {
        self.sample_step(step, settings, true)
    }

    fn sample_step(
        &self,
        step: &StepField,
        settings: &InferenceSettings,
        keep_samples: bool,
    ) -> Result<(StepForecast, Vec<f32>)> {
        let grid = &self.meta.grid;
        let norm = &self.meta.normalisation;
        let valid_time = step.time + self.lead_micros();
        let features = StepFeatures::new(norm, grid, &step.values, valid_time);
        let cond = features.all(grid, self.meta.patch);
        let dim = self.meta.patch.cond_dim();
        let step_seed = mix(settings.seed ^ mix(step.time as u64));
        let (mut mean, mut au, mut eu) = (Vec::new(), Vec::new(), Vec::new());
        let per_cell = settings.members * settings.samples;
        let scale = norm.kelvin_per_unit();
        let mut samples: Vec<f32> = Vec::new();
        if settings.samples > MAX_SAMPLES {
            return Err(ForecastError::Step {
                time: crate::error::iso(step.time),
                problem: format!(
                    "{} samples per member and cell; at most {MAX_SAMPLES} fit one forward pass",
                    settings.samples
                ),
            });
        }
        // Cells go through in chunks: the tensors of a chunk stay in cache
        // and the allocator reuses their memory (whole-field tensors of
        // N × cells rows spend more time in page faults than in arithmetic),
        // and a pass's memory stays bounded for any N.
        let chunk_cells = cells_per_chunk(settings.samples);
        for (k, chunk) in cond.chunks(chunk_cells * dim).enumerate() {
            let rows = chunk.len() / dim;
            let cond = Tensor::from_vec(chunk.to_vec(), (rows, dim), &self.model.device)
                .ctx("forecast input")?;
            let first = k * chunk_cells;
            let mut chunk_samples = vec![0f32; if keep_samples { rows * per_cell } else { 0 }];
            let moments = self.model.predict_each(
                &cond,
                settings.members,
                settings.samples,
                settings.sampler,
                (settings.seed, mix(step_seed ^ k as u64)),
                |member, x0| {
                    if !keep_samples {
                        return Ok(());
                    }
                    // x0: [N, rows, 1] in normalised change units.
                    let v: Vec<f32> = x0.flatten_all().and_then(|t| t.to_vec1()).ctx("samples")?;
                    for (j, row) in v.chunks_exact(rows).enumerate() {
                        for (cell, d) in row.iter().enumerate() {
                            let now = f64::from(step.values[first + cell]);
                            chunk_samples[cell * per_cell + member * settings.samples + j] =
                                (now + f64::from(*d) * scale) as f32;
                        }
                    }
                    Ok(())
                },
            )?;
            samples.extend(chunk_samples);
            for (out, t) in [
                (&mut mean, &moments.mean),
                (&mut au, &moments.au),
                (&mut eu, &moments.eu),
            ] {
                out.extend(
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .ctx("forecast output")?,
                );
            }
        }
        let mean = mean
            .iter()
            .zip(&step.values)
            .map(|(d, now)| (f64::from(*now) + f64::from(*d) * scale) as f32)
            .collect();
        let variance = |v: Vec<f32>| {
            v.iter()
                .map(|x| (f64::from(*x) * scale * scale) as f32)
                .collect()
        };
        Ok((
            StepForecast {
                valid_time,
                mean,
                au: variance(au),
                eu: variance(eu),
            },
            samples,
        ))
    }
}

/// Trains a field model on `steps` (all on `grid`, packed as training holds
/// them) and writes the checkpoint.
///
/// Resumable (see [`crate::resume`]): a partial checkpoint is kept every
/// tenth of the updates, and a training started again on the same data with
/// the same settings continues from it to the same model. `notes` hears
/// where training starts, when that is not simply the beginning.
#[allow(clippy::too_many_arguments)]
pub fn train(
    steps: &[PackedStep],
    grid: &ModelGrid,
    settings: &FieldTraining,
    source: &str,
    out: &Path,
    device: &Device,
    mut progress: impl FnMut(Progress),
    mut notes: impl FnMut(&str),
) -> Result<TrainingSpan> {
    let started = Instant::now();
    let lead = i64::from(settings.lead_hours) * 3_600_000_000;
    let sample = settings.sample.as_ref();
    let data = PairData::build(
        steps,
        grid,
        &settings.normalisation,
        settings.patch,
        lead,
        sample.map(|s| &s.starts),
    );
    if data.pairs() == 0 {
        return Err(ForecastError::Training(format!(
            "no two of the {} steps are exactly {} h apart",
            steps.len(),
            settings.lead_hours
        )));
    }
    let mlp = MlpConfig {
        data_dim: 1,
        cond_dim: settings.patch.cond_dim(),
        steps: settings.diffusion.steps,
        ..settings.mlp.clone()
    };
    let fresh = HyperDm::with_method(
        PrimaryMlp::new(&mlp),
        settings.method,
        &settings.hyper,
        &settings.diffusion,
        device,
        settings.train.seed,
    )?;
    let (first, last) = TrainingSpan::bounds(steps);
    let mut span = TrainingSpan {
        first,
        last,
        steps: steps.len(),
        pairs: data.pairs(),
        unpaired: sample.map_or(data.unpaired, |s| s.unpaired),
        pairs_in_span: sample.map(|s| s.in_span),
        source: source.to_string(),
        seconds: 0.0,
    };
    let data_json = |span: &TrainingSpan| {
        serde_json::to_value(FieldMeta {
            variable: "t2m".into(),
            lead_hours: settings.lead_hours,
            grid: grid.clone(),
            patch: settings.patch,
            normalisation: settings.normalisation,
            training: span.clone(),
        })
        .map_err(|e| ForecastError::Training(e.to_string()))
    };

    let partial = resume::folder(out);
    let fingerprint = resume::fingerprint(steps);
    let start = resume::start(
        &partial,
        &fingerprint,
        &fresh,
        &settings.train,
        &data_json(&span)?,
        device,
    );
    let (model, mut optimizer, spent) = match start {
        resume::Start::Resumed {
            model,
            optimizer,
            seconds,
            from,
        } => {
            notes(&format!(
                "resuming from update {} of {} ({})",
                optimizer.step,
                settings.train.iterations,
                from.display()
            ));
            (*model, optimizer, seconds)
        }
        resume::Start::Fresh(why) => {
            if let Some(why) = why {
                notes(&why);
            }
            // Partials of another training go: one of theirs numbered past
            // this training's first save would otherwise be taken for its
            // newest.
            resume::finish(&partial);
            let optimizer = fresh.optimizer(&settings.train.optimizer);
            (fresh, optimizer, 0.0)
        }
    };
    resume::prepare(&partial, &fingerprint)?;
    let seconds = |spent: f64| spent + started.elapsed().as_secs_f64();
    let iterations = settings.train.iterations;
    let every = (iterations / 10).max(1);
    loop {
        let stop = ((optimizer.step / every + 1) * every).min(iterations);
        model.fit_until(&data, &settings.train, &mut optimizer, stop, |p| {
            progress(Progress {
                elapsed_seconds: seconds(spent),
                ..p
            })
        })?;
        if optimizer.step >= iterations {
            break;
        }
        span.seconds = seconds(spent);
        resume::save(
            &partial,
            &fingerprint,
            &model,
            &optimizer,
            &settings.train,
            data_json(&span)?,
        )?;
    }
    span.seconds = seconds(spent);
    checkpoint::save(out, &model, &optimizer, &settings.train, data_json(&span)?).map_err(
        |source| ForecastError::Model {
            path: out.to_path_buf(),
            source,
        },
    )?;
    resume::finish(&partial);
    Ok(span)
}

#[cfg(test)]
mod tests {

    #[test]
    fn chunks_hold_fewer_cells_only_above_a_hundred_samples() {
        use super::{MAX_SAMPLES, cells_per_chunk};
        assert_eq!(cells_per_chunk(8), 1024);
        assert_eq!(cells_per_chunk(100), 1024);
        assert_eq!(cells_per_chunk(101), 1013);
        assert_eq!(cells_per_chunk(4000), 25);
        assert_eq!(cells_per_chunk(MAX_SAMPLES), 1);
        // Rows per pass never exceed 1,024 × 100.
        for n in [2, 99, 101, 333, 4000, 50_000, MAX_SAMPLES] {
            assert!(n * cells_per_chunk(n) <= 102_400, "N = {n}");
        }
    }

    use super::*;
    use crate::features::Normalisation;
    use uqcast_hyperdm::optim::AdamWConfig;

    /// Six steps on a 3 × 4 grid and a deep ensemble of two trained on them
    /// for 10 updates, saved as `dir/ens.safetensors`.
    fn tiny_ensemble(dir: &Path) -> (Vec<StepField>, PathBuf) {
        let grid = ModelGrid::new(vec![30.0, 29.0, 28.0], vec![250.0, 251.0, 252.0, 253.0]);
        let h = 3_600_000_000;
        let steps: Vec<StepField> = (0..6)
            .map(|k| StepField {
                time: k * 6 * h,
                values: (0..12).map(|c| 270.0 + c as f32 + k as f32).collect(),
            })
            .collect();
        let settings = FieldTraining {
            mlp: MlpConfig {
                hidden: vec![8],
                time_dim: 4,
                ..MlpConfig::default()
            },
            patch: Patch(3),
            method: Method::Ensemble { members: 2 },
            hyper: HyperConfig::default(),
            diffusion: DiffusionConfig::default(),
            train: TrainConfig {
                iterations: 10,
                batch_size: 8,
                optimizer: AdamWConfig::default(),
                ..TrainConfig::default()
            },
            normalisation: Normalisation::default(),
            lead_hours: 6,
            sample: None,
        };
        let path = dir.join("ens.safetensors");
        let packed: Vec<PackedStep> = steps.iter().map(PackedStep::pack).collect();
        train(
            &packed,
            &grid,
            &settings,
            "test",
            &path,
            &Device::Cpu,
            |_| {},
            |_| {},
        )
        .unwrap();
        (steps, path)
    }

    /// A deep ensemble trained briefly on a 3 × 4 grid goes through the
    /// same checkpoint and forecast path as HyperDM; the samples it hands
    /// out agree with the moments: per cell, their mean is `mean` and their
    /// population variance is AU + EU (f32 sums: 1e-3 relative tolerance).
    #[test]
    fn baseline_checkpoints_forecast_and_samples_match_moments() {
        let dir = tempfile::tempdir().unwrap();
        let (steps, path) = tiny_ensemble(dir.path());
        let model = ForecastModel::load(&path, &Device::Cpu).unwrap();
        assert_eq!(model.checkpoint.method, Method::Ensemble { members: 2 });
        let inference = InferenceSettings {
            members: 2,
            samples: 5,
            sampler: Sampler::Ddim { steps: 5 },
            seed: 1,
        };
        // N = 5 samples the 12 cells in one chunk, N = 20,000 in chunks of
        // 5 cells (`cells_per_chunk`): each cell's samples and moments must
        // still be that cell's.
        for samples_per_member in [5, 20_000] {
            let inference = InferenceSettings {
                samples: samples_per_member,
                ..inference
            };
            let draws = 2 * samples_per_member;
            let (f, samples) = model.forecast_with_samples(&steps[2], &inference).unwrap();
            assert_eq!(f, model.forecast(&steps[2], &inference).unwrap());
            assert_eq!(samples.len(), 12 * draws);
            for (cell, s) in samples.chunks_exact(draws).enumerate() {
                let mean = s.iter().map(|&x| f64::from(x)).sum::<f64>() / draws as f64;
                let var = s
                    .iter()
                    .map(|&x| (f64::from(x) - mean).powi(2))
                    .sum::<f64>()
                    / draws as f64;
                let total = f64::from(f.au[cell]) + f64::from(f.eu[cell]);
                assert!((mean - f64::from(f.mean[cell])).abs() < 1e-3 * mean.abs());
                assert!(
                    (var - total).abs() < 1e-3 * total.max(1e-3),
                    "N = {samples_per_member}, cell {cell}: {var} vs {total}"
                );
            }
        }
        let three = InferenceSettings {
            members: 3,
            ..inference
        };
        assert!(model.forecast(&steps[2], &three).is_err());
    }

    /// The `data` section of the `.json` is what the forecast relies on
    /// beyond the weights: each damaged field is refused at load, named.
    #[test]
    fn a_damaged_data_section_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = tiny_ensemble(dir.path());
        let json = path.with_extension("json");
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let cases: [(&str, serde_json::Value, &str); 7] = [
            // One digit changed in a longitude: the order breaks.
            (
                "/data/grid/longitude/2",
                250.5.into(),
                "'data.grid.longitude': not strictly west to east: 251 at index 1, then 250.5",
            ),
            (
                "/data/grid/longitude/1",
                9251.0.into(),
                "'data.grid.longitude': holds 9251, outside -180…360",
            ),
            (
                "/data/grid/latitude",
                serde_json::json!([28.0, 29.0, 30.0]),
                "'data.grid.latitude': not strictly north to south: 28 at index 0, then 29",
            ),
            (
                "/data/grid/latitude",
                serde_json::json!([]),
                "'data.grid.latitude': holds no value",
            ),
            ("/data/patch", 4.into(), "'data.patch': 4 is not odd"),
            (
                "/data/normalisation/kelvin_max",
                200.0.into(),
                "'data.normalisation': kelvin_min 210 is not below kelvin_max 200",
            ),
            (
                "/data/normalisation/residual_gain",
                0.0.into(),
                "'data.normalisation.residual_gain': 0 is not a positive number",
            ),
        ];
        for (pointer, value, expected) in cases {
            let mut damaged = good.clone();
            *damaged.pointer_mut(pointer).unwrap() = value;
            std::fs::write(&json, serde_json::to_string(&damaged).unwrap()).unwrap();
            let e = ForecastModel::load(&path, &Device::Cpu)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{}: model metadata field ", json.display()))
                    && e.contains(expected),
                "{pointer}: {e}"
            );
        }
        std::fs::write(&json, serde_json::to_string(&good).unwrap()).unwrap();
        assert!(ForecastModel::load(&path, &Device::Cpu).is_ok());
    }
}
