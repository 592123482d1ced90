//! Resumable training. [`crate::model::train`] keeps a partial checkpoint
//! after every tenth of its updates in `OUT.partial/` (weights, optimiser
//! moments and update count, as a finished checkpoint holds them) and
//! removes the folder once `OUT` is written. Started again with the same
//! settings on the same data, it continues from the newest one: an update
//! draws its minibatch and noise from the seed and its own number, so the
//! model written is the one an uninterrupted training writes, bit for bit.
//!
//! A partial checkpoint is a pair `update-K.safetensors` + `update-K.json`,
//! the metadata written last; a pair is used only when both are there, and
//! older pairs are removed only after a newer one is complete, so a kill at
//! any moment leaves a usable pair or none. The data's fingerprint sits
//! beside them: a partial from other data is never continued.

use std::path::{Path, PathBuf};

use candle_core::Device;
use uqcast_hyperdm::checkpoint;
use uqcast_hyperdm::optim::AdamW;
use uqcast_hyperdm::{HyperDm, PrimaryMlp, PrimaryNetwork, TrainConfig};

use crate::error::{ForecastError, Result};
use crate::packed::PackedStep;

const FINGERPRINT: &str = "data.fingerprint";

/// How a fingerprint of packed steps ends. Partials kept by a uqcast that
/// held its steps unpacked lack it, and are not continued (their data's
/// values differ from the packed ones by the packing's rounding).
const PACKED: &str = ", packed";

/// Where the partial checkpoints of a training writing `out` are kept.
pub fn folder(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// FNV-1a over the steps' times and values as training holds them: equal
/// for the same data, and stable across builds (unlike std's hasher), so a
/// partial survives an upgrade of uqcast that packs steps the same way.
pub fn fingerprint(steps: &[PackedStep]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for step in steps {
        step.feed(&mut eat);
    }
    format!("{hash:016x} {} steps{PACKED}", steps.len())
}

fn pair(folder: &Path, update: u64) -> PathBuf {
    folder.join(format!("update-{update:010}.safetensors"))
}

/// The complete pairs in `folder`, newest first.
fn complete_pairs(folder: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut pairs: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let update = name
                .strip_prefix("update-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            let path = e.path();
            path.with_extension("json")
                .is_file()
                .then_some((update, path))
        })
        .collect();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.0));
    pairs
}

/// Makes the folder and writes the data's fingerprint into it: done before
/// the first update, so a place that cannot be written stops a training
/// before it computes, not a tenth of the way in.
pub fn prepare(folder: &Path, fingerprint: &str) -> Result<()> {
    let keep = |source| ForecastError::Partial {
        path: folder.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(folder).map_err(keep)?;
    std::fs::write(folder.join(FINGERPRINT), fingerprint).map_err(keep)
}

/// Writes the partial checkpoint after update `optimizer.step`, then
/// removes the older ones.
pub fn save(
    folder: &Path,
    fingerprint: &str,
    model: &HyperDm<PrimaryMlp>,
    optimizer: &AdamW,
    train: &TrainConfig,
    data: serde_json::Value,
) -> Result<()> {
    prepare(folder, fingerprint)?;
    let path = pair(folder, optimizer.step);
    checkpoint::save(&path, model, optimizer, train, data).map_err(|source| {
        ForecastError::Model {
            path: path.clone(),
            source,
        }
    })?;
    for (update, older) in complete_pairs(folder) {
        if update < optimizer.step {
            let _ = std::fs::remove_file(older.with_extension("json"));
            let _ = std::fs::remove_file(&older);
        }
    }
    Ok(())
}

/// Where a training starts.
#[derive(Debug)]
pub enum Start {
    /// From the beginning; with why a partial checkpoint was not used.
    Fresh(Option<String>),
    /// From a partial checkpoint: its model and optimiser, and the training
    /// seconds spent before it.
    Resumed {
        model: Box<HyperDm<PrimaryMlp>>,
        optimizer: AdamW,
        seconds: f64,
        from: PathBuf,
    },
}

/// The newest partial checkpoint in `folder` if it continues this training:
/// the same network, method, settings, data description (`data`, its
/// seconds and source path aside) and data fingerprint as the `fresh` model
/// about to train.
pub fn start(
    folder: &Path,
    fingerprint: &str,
    fresh: &HyperDm<PrimaryMlp>,
    train: &TrainConfig,
    data: &serde_json::Value,
    device: &Device,
) -> Start {
    let Some((_, path)) = complete_pairs(folder).into_iter().next() else {
        return Start::Fresh(None);
    };
    let afresh = |why: String| {
        Start::Fresh(Some(format!(
            "not resuming from {}: {why}; training from the start",
            path.display()
        )))
    };
    let stored = std::fs::read_to_string(folder.join(FINGERPRINT)).unwrap_or_default();
    if !stored.is_empty() && !stored.ends_with(PACKED) {
        return afresh("it was kept by an older uqcast, which held its steps unpacked".into());
    }
    if stored != fingerprint {
        return afresh("it was trained on other data".into());
    }
    let meta = match checkpoint::read_meta(&path) {
        Ok(meta) => meta,
        Err(e) => return afresh(e.to_string()),
    };
    let same = json(&meta.primary) == json(&fresh.primary.config())
        && json(&meta.method) == json(&fresh.method)
        && json(&meta.hyper) == json(&fresh.hyper_config)
        && json(&meta.diffusion) == json(&fresh.diffusion)
        && json(&meta.train) == json(train)
        && without_seconds_and_source(&meta.data) == without_seconds_and_source(data);
    if !same {
        return afresh("it was trained with other settings".into());
    }
    match checkpoint::load(&path, device, crate::model::build_cell_mlp) {
        Ok((model, optimizer, meta)) => Start::Resumed {
            model: Box::new(model),
            optimizer,
            seconds: meta.data["training"]["seconds"].as_f64().unwrap_or(0.0),
            from: path,
        },
        Err(e) => afresh(e.to_string()),
    }
}

/// Removes the partial checkpoints once the model is written.
pub fn finish(folder: &Path) {
    let _ = std::fs::remove_dir_all(folder);
}

/// The data description without what may differ between two sessions of
/// one training: the seconds spent, and the path the data were read from
/// (the fingerprint says whether they are the same data).
fn without_seconds_and_source(data: &serde_json::Value) -> serde_json::Value {
    let mut data = data.clone();
    if let Some(training) = data.get_mut("training").and_then(|t| t.as_object_mut()) {
        training.remove("seconds");
        training.remove("source");
    }
    data
}

/// Settings of different types compared through their JSON form.
fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use uqcast_hyperdm::optim::AdamWConfig;
    use uqcast_hyperdm::{DiffusionConfig, HyperConfig, Method, MlpConfig};

    use super::*;
    use crate::features::{Normalisation, Patch};
    use crate::grid::ModelGrid;
    use crate::model::{FieldTraining, ForecastModel, train};

    fn steps(offset: f32) -> Vec<PackedStep> {
        let h = 3_600_000_000;
        (0..6)
            .map(|k| {
                PackedStep::pack(&crate::StepField {
                    time: k * 6 * h,
                    values: (0..12)
                        .map(|c| 270.0 + c as f32 + k as f32 + offset)
                        .collect(),
                })
            })
            .collect()
    }

    fn settings(lr: f64) -> FieldTraining {
        FieldTraining {
            mlp: MlpConfig {
                hidden: vec![8],
                time_dim: 4,
                ..MlpConfig::default()
            },
            patch: Patch(3),
            method: Method::Hyperdm,
            hyper: HyperConfig::default(),
            diffusion: DiffusionConfig::default(),
            train: TrainConfig {
                iterations: 40,
                batch_size: 8,
                optimizer: AdamWConfig {
                    lr,
                    ..AdamWConfig::default()
                },
                ..TrainConfig::default()
            },
            normalisation: Normalisation::default(),
            lead_hours: 6,
            sample: None,
        }
    }

    /// Trains to `out`, `progress` watching, what `notes` says going to
    /// `heard`.
    fn train_to(
        out: &Path,
        steps: &[PackedStep],
        settings: &FieldTraining,
        progress: impl FnMut(uqcast_hyperdm::Progress),
        heard: &mut Vec<String>,
    ) -> Result<crate::model::TrainingSpan> {
        let grid = ModelGrid::new(vec![30.0, 29.0, 28.0], vec![250.0, 251.0, 252.0, 253.0]);
        train(
            steps,
            &grid,
            settings,
            "test",
            out,
            &Device::Cpu,
            progress,
            |n| heard.push(n.to_string()),
        )
    }

    /// Trains to `out`; returns what `notes` said.
    fn trained(out: &Path, steps: &[PackedStep], settings: &FieldTraining) -> Vec<String> {
        let mut heard = Vec::new();
        train_to(out, steps, settings, |_| {}, &mut heard).unwrap();
        heard
    }

    /// Trains to `out` and stops it at update `stop` of 40, as a kill would
    /// (at 24, the partial checkpoint of update 20 is the last one kept);
    /// returns what `notes` said.
    fn interrupted(
        out: &Path,
        steps: &[PackedStep],
        settings: &FieldTraining,
        stop: u64,
    ) -> Vec<String> {
        let mut heard = Vec::new();
        let stopped = catch_unwind(AssertUnwindSafe(|| {
            let progress = |p: uqcast_hyperdm::Progress| {
                assert!(p.iteration < stop, "stopped at update {}", p.iteration)
            };
            train_to(out, steps, settings, progress, &mut heard)
        }));
        assert!(stopped.is_err() && !out.exists());
        heard
    }

    /// The hash of the weights (the model id after its file stem).
    fn weights_hash(path: &Path) -> String {
        let id = ForecastModel::load(path, &Device::Cpu).unwrap().id;
        id.split_once('@').unwrap().1.to_string()
    }

    #[test]
    fn an_interrupted_training_resumes_to_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        let (data, plain) = (steps(0.0), settings(1e-2));
        let straight = dir.path().join("straight.safetensors");
        assert!(trained(&straight, &data, &plain).is_empty());
        assert!(!folder(&straight).exists(), "partials left behind");

        let resumed = dir.path().join("resumed.safetensors");
        interrupted(&resumed, &data, &plain, 24);
        let kept = folder(&resumed);
        assert_eq!(complete_pairs(&kept)[0].0, 20);
        // A newer pair whose metadata was never written (killed while
        // saving) is passed over.
        std::fs::copy(pair(&kept, 20), pair(&kept, 28)).unwrap();
        let heard = trained(&resumed, &data, &plain);
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert!(
            heard[0].starts_with("resuming from update 20 of 40"),
            "{heard:?}"
        );
        assert_eq!(weights_hash(&resumed), weights_hash(&straight));
        assert!(!kept.exists(), "partials left behind");

        // Other settings, or other data: the partial is not continued.
        let other = dir.path().join("other.safetensors");
        interrupted(&other, &data, &plain, 24);
        let heard = trained(&other, &data, &settings(5e-3));
        assert!(
            heard[0].contains("trained with other settings"),
            "{heard:?}"
        );
        // The other data's training is itself stopped early: its partial of
        // update 4 is newer than the first data's of update 20, though
        // numbered lower, and is the one the next start continues.
        let other_data = dir.path().join("other-data.safetensors");
        interrupted(&other_data, &data, &plain, 24);
        let heard = interrupted(&other_data, &steps(0.5), &plain, 8);
        assert!(heard[0].contains("trained on other data"), "{heard:?}");
        let heard = trained(&other_data, &steps(0.5), &plain);
        assert!(
            heard[0].starts_with("resuming from update 4 of 40"),
            "{heard:?}"
        );
        assert!(!folder(&other).exists() && !folder(&other_data).exists());

        // A partial kept before steps were packed: its fingerprint has the
        // same form less the packing's mark.
        let older = dir.path().join("older.safetensors");
        interrupted(&older, &data, &plain, 24);
        let mark = folder(&older).join(FINGERPRINT);
        let kept_mark = std::fs::read_to_string(&mark).unwrap();
        let unpacked = kept_mark.strip_suffix(PACKED).unwrap().to_string();
        std::fs::write(&mark, unpacked).unwrap();
        let heard = trained(&older, &data, &plain);
        assert!(
            heard[0].contains("kept by an older uqcast, which held its steps unpacked"),
            "{heard:?}"
        );
        assert_eq!(weights_hash(&older), weights_hash(&straight));
    }
}
