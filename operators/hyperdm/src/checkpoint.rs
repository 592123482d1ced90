//! Checkpoints: `NAME.safetensors` (hyper-network weights and AdamW moments)
//! beside `NAME.json` (every config, the training step, the seed and a free
//! description of the data: normalisation, grid, time span). Both files are
//! written to temporaries and renamed, so a crash never leaves half a model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, HyperdmError, Result};
use crate::hyper::HyperConfig;
use crate::method::Method;
use crate::model::{HyperDm, TrainConfig, named_vars};
use crate::optim::AdamW;
use crate::primary::{PrimaryConfig, PrimaryNetwork};
use crate::schedule::DiffusionConfig;

pub const FORMAT: &str = "uqcast-hyperdm/1";

/// The JSON half of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: String,
    pub primary: PrimaryConfig,
    /// HyperDM or a baseline; checkpoints from before the baselines hold HyperDM.
    #[serde(default)]
    pub method: Method,
    pub hyper: HyperConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    /// Optimiser updates applied.
    pub step: u64,
    /// Free description of the training data (normalisation, grid, span).
    pub data: serde_json::Value,
    /// SHA-256 of the `.safetensors` file written beside it (lower-case hex,
    /// as `sha256sum` prints it): a damaged file, or weights paired with
    /// another model's metadata, is refused at load instead of forecasting
    /// with weights that differ from the trained ones. Checkpoints from
    /// before it have none and load unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

fn tmp(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Saves model, optimiser and metadata; `path` is the `.safetensors` file.
pub fn save<P: PrimaryNetwork>(
    path: &Path,
    model: &HyperDm<P>,
    optimizer: &AdamW,
    train: &TrainConfig,
    data: serde_json::Value,
) -> Result<()> {
    let meta = CheckpointMeta {
        format: FORMAT.into(),
        primary: model.primary.config(),
        method: model.method,
        hyper: model.hyper_config.clone(),
        diffusion: model.diffusion.clone(),
        train: train.clone(),
        step: optimizer.step,
        data,
        weights_sha256: None,
    };
    let mut tensors: HashMap<String, Tensor> = named_vars(&model.varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    tensors.extend(optimizer.state()?);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HyperdmError::Io {
            path: path.clone(),
            source,
        }
    };
    let (weights_tmp, meta_path) = (tmp(path), json_path(path));
    if meta_path == path {
        return Err(HyperdmError::Checkpoint {
            path: path.to_path_buf(),
            problem: "weights and metadata would share this file; name the weights X.safetensors"
                .into(),
        });
    }
    let meta_tmp = tmp(&meta_path);
    candle_core::safetensors::save(&tensors, &weights_tmp).ctx("writing safetensors")?;
    let written = std::fs::read(&weights_tmp).map_err(io(&weights_tmp))?;
    let meta = CheckpointMeta {
        weights_sha256: Some(sha256_hex(&written)),
        ..meta
    };
    let text = serde_json::to_string_pretty(&meta).map_err(|e| HyperdmError::Checkpoint {
        path: meta_path.clone(),
        problem: e.to_string(),
    })?;
    std::fs::write(&meta_tmp, text).map_err(io(&meta_tmp))?;
    std::fs::rename(&weights_tmp, path).map_err(io(path))?;
    std::fs::rename(&meta_tmp, &meta_path).map_err(io(&meta_path))?;
    Ok(())
}

/// Reads a checkpoint's metadata.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta> {
    let meta_path = json_path(path);
    let text = std::fs::read_to_string(&meta_path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            // Weights alone: copied without their metadata, or not a model.
            HyperdmError::Checkpoint {
                path: meta_path.clone(),
                problem: "metadata is missing: a model is its weights and this file beside \
                          them (X.safetensors and X.json), written together by `uqcast train`"
                    .into(),
            }
        } else {
            HyperdmError::Io {
                path: meta_path.clone(),
                source,
            }
        }
    })?;
    let meta: CheckpointMeta =
        serde_json::from_str(&text).map_err(|e| HyperdmError::Checkpoint {
            path: meta_path.clone(),
            problem: format!("metadata is invalid: {e}"),
        })?;
    if meta.format != FORMAT {
        return Err(HyperdmError::Checkpoint {
            path: meta_path,
            problem: format!("format '{}', expected '{FORMAT}'", meta.format),
        });
    }
    Ok(meta)
}

/// Loads a model (and optimiser state) from `path`, rebuilding the primary
/// network with `build` from the stored config.
pub fn load<P: PrimaryNetwork>(
    path: &Path,
    device: &Device,
    build: impl FnOnce(&PrimaryConfig) -> Result<P>,
) -> Result<(HyperDm<P>, AdamW, CheckpointMeta)> {
    let bytes = std::fs::read(path).map_err(|source| HyperdmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(path, &bytes, device, build)
}

/// [`load`] from `bytes`, the `.safetensors` file at `path` already read
/// (a caller that also needs the bytes reads the file once).
pub fn load_bytes<P: PrimaryNetwork>(
    path: &Path,
    bytes: &[u8],
    device: &Device,
    build: impl FnOnce(&PrimaryConfig) -> Result<P>,
) -> Result<(HyperDm<P>, AdamW, CheckpointMeta)> {
    let meta = read_meta(path)?;
    let model = HyperDm::with_method(
        build(&meta.primary)?,
        meta.method,
        &meta.hyper,
        &meta.diffusion,
        device,
        0,
    )?;
    if let Some(recorded) = &meta.weights_sha256 {
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(recorded) {
            return Err(HyperdmError::Checkpoint {
                path: path.to_path_buf(),
                problem: format!(
                    "weights have SHA-256 {actual}, {} recorded {recorded} (weights_sha256) when \
                     training wrote them: the file is damaged, or these are another model's \
                     weights",
                    json_path(path).display()
                ),
            });
        }
    }
    let tensors = candle_core::safetensors::load_buffer(bytes, device).map_err(|e| {
        HyperdmError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("weights unreadable: {e}"),
        }
    })?;
    for (name, var) in named_vars(&model.varmap) {
        let t = tensors.get(&name).ok_or_else(|| HyperdmError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("tensor '{name}' missing"),
        })?;
        if t.dims() != var.dims() {
            return Err(HyperdmError::Checkpoint {
                path: path.to_path_buf(),
                problem: format!(
                    "tensor '{name}' has shape {:?}, the config needs {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        if !all_finite(t)? {
            return Err(HyperdmError::Checkpoint {
                path: path.to_path_buf(),
                problem: format!(
                    "tensor '{name}' holds NaN or infinite weights (training diverged, or \
                     the file is damaged)"
                ),
            });
        }
        var.set(t).ctx("loading weights")?;
    }
    let mut optimizer = model.optimizer(&meta.train.optimizer);
    optimizer
        .restore(&tensors, meta.step)
        .map_err(|e| HyperdmError::Checkpoint {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    Ok((model, optimizer, meta))
}

/// Whether every entry of `t` is finite: 0·t is 0 where it is and NaN
/// where it is not, so its sum says (without copying `t` to the host).
fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t
        .affine(0.0, 0.0)
        .and_then(|d| d.sum_all())
        .and_then(|s| s.to_dtype(candle_core::DType::F64))
        .and_then(|s| s.to_scalar::<f64>())
        .ctx("checking weights")?;
    Ok(sum == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyper::HyperForm;
    use crate::primary::{MlpConfig, PrimaryMlp};
    use crate::toy::ToyData;

    fn build(config: &PrimaryConfig) -> Result<PrimaryMlp> {
        match config {
            PrimaryConfig::Mlp(c) => Ok(PrimaryMlp::new(c)),
            other => Err(HyperdmError::Config {
                field: "primary",
                problem: format!("expected mlp, got {other:?}"),
            }),
        }
    }

    fn weights(model: &HyperDm<PrimaryMlp>) -> Vec<Vec<f32>> {
        named_vars(&model.varmap)
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    /// Training 2k steps straight equals k steps, save, load, k more steps,
    /// for HyperDM and both baselines (the method travels in the metadata).
    #[test]
    fn resuming_continues_exactly() {
        for method in [
            Method::Hyperdm,
            Method::Ensemble { members: 2 },
            Method::McDropout { p: 0.3 },
        ] {
            resume_case(method, &HyperConfig::default());
        }
        // A centred hyper-network: its base is saved and restored, and the
        // z path's own learning rate comes back with the settings.
        let centred = HyperConfig {
            z_skip: true,
            centred: true,
            z_lr: 0.5,
            ..HyperConfig::default()
        };
        resume_case(Method::Hyperdm, &centred);
        // The rank-1 form: its base and factor generator come back, and
        // the form itself travels in the settings.
        let rank1 = HyperConfig {
            z_skip: true,
            form: HyperForm::Rank1,
            ..HyperConfig::default()
        };
        resume_case(Method::Hyperdm, &rank1);
    }

    fn resume_case(method: Method, hyper: &HyperConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toy.safetensors");
        let data = ToyData::generate(128, 0.04, None, 5);
        let mlp = MlpConfig {
            hidden: vec![8, 8],
            ..MlpConfig::default()
        };
        let fresh = || {
            HyperDm::with_method(
                PrimaryMlp::new(&mlp),
                method,
                hyper,
                &DiffusionConfig::default(),
                &Device::Cpu,
                9,
            )
            .unwrap()
        };
        let full = TrainConfig {
            iterations: 40,
            batch_size: 32,
            ..TrainConfig::default()
        };

        let straight = fresh();
        let mut opt = straight.optimizer(&full.optimizer);
        straight.fit(&data, &full, &mut opt, |_| {}).unwrap();

        let first = fresh();
        let mut opt = first.optimizer(&full.optimizer);
        first.fit_until(&data, &full, &mut opt, 20, |_| {}).unwrap();
        save(
            &path,
            &first,
            &opt,
            &full,
            serde_json::json!({"normalisation": "none", "train_size": 128}),
        )
        .unwrap();

        let (resumed, mut opt, meta) = load(&path, &Device::Cpu, build).unwrap();
        assert_eq!(
            (meta.step, meta.data["train_size"].as_u64(), meta.method),
            (20, Some(128), method)
        );
        assert!(
            weights(&resumed) == weights(&first),
            "loading changed the weights"
        );
        resumed.fit(&data, &full, &mut opt, |_| {}).unwrap();
        let largest_difference = weights(&resumed)
            .iter()
            .flatten()
            .zip(weights(&straight).iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(
            largest_difference, 0.0,
            "{method}: resumed training diverged"
        );
    }

    /// A HyperDM model with every default setting, and its optimiser.
    fn default_model() -> (HyperDm<PrimaryMlp>, AdamW) {
        let model = HyperDm::new(
            PrimaryMlp::new(&MlpConfig::default()),
            &HyperConfig::default(),
            &DiffusionConfig::default(),
            &Device::Cpu,
            1,
        )
        .unwrap();
        let opt = model.optimizer(&Default::default());
        (model, opt)
    }

    fn save_default(path: &Path, model: &HyperDm<PrimaryMlp>, opt: &AdamW) {
        save(
            path,
            model,
            opt,
            &TrainConfig::default(),
            serde_json::Value::Null,
        )
        .unwrap();
    }

    #[test]
    fn refuses_mismatched_or_damaged_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let (model, opt) = default_model();
        save_default(&path, &model, &opt);
        // Weights named .json would share the metadata's file: refused, and
        // nothing written.
        let clash = dir.path().join("clash.json");
        let err = save(
            &clash,
            &model,
            &opt,
            &TrainConfig::default(),
            serde_json::Value::Null,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("clash.json") && err.contains("share"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A config whose hyper-network is wider than the stored weights.
        let mut meta = read_meta(&path).unwrap();
        meta.hyper.hidden[0] = 16;
        std::fs::write(
            path.with_extension("json"),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        let err = load(&path, &Device::Cpu, build).unwrap_err().to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("shape"),
            "{err}"
        );
        // Damaged metadata.
        std::fs::write(path.with_extension("json"), "{").unwrap();
        let err = load(&path, &Device::Cpu, build).unwrap_err().to_string();
        assert!(err.contains("m.json") && err.contains("invalid"), "{err}");
        // Weights without their metadata.
        std::fs::remove_file(path.with_extension("json")).unwrap();
        let err = load(&path, &Device::Cpu, build).unwrap_err().to_string();
        assert!(
            err.contains("m.json: checkpoint metadata is missing") && err.contains("uqcast train"),
            "{err}"
        );
    }

    /// A checkpoint with one NaN weight (a diverged run, a flipped bit) is
    /// refused, naming the tensor: forecasts from it would be NaN.
    #[test]
    fn refuses_weights_that_are_not_finite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let (model, opt) = default_model();
        let (name, var) = named_vars(&model.varmap).into_iter().next().unwrap();
        let mut values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let middle = values.len() / 2;
        values[middle] = f32::NAN;
        var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
        save_default(&path, &model, &opt);
        let err = load(&path, &Device::Cpu, build).unwrap_err().to_string();
        assert!(
            err.contains("m.safetensors")
                && err.contains(&format!("tensor '{name}' holds NaN or infinite weights")),
            "{err}"
        );
    }

    #[test]
    fn sha256_is_the_standard_one() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The metadata records the weights' SHA-256: a byte changed in the
    /// weights, or another model's weights beside this metadata, is refused;
    /// a checkpoint from before the field loads unchecked.
    #[test]
    fn refuses_weights_that_are_not_the_trained_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let (model, opt) = default_model();
        save_default(&path, &model, &opt);
        let bytes = std::fs::read(&path).unwrap();
        let recorded = read_meta(&path).unwrap().weights_sha256.unwrap();
        assert_eq!(recorded, sha256_hex(&bytes));
        assert!(load(&path, &Device::Cpu, build).is_ok());

        // The last byte is the high byte of a finite f32 (an AdamW moment or
        // a weight): 0x3f keeps it finite, so only the checksum can tell.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] = if damaged[last] == 0x3f { 0x3e } else { 0x3f };
        std::fs::write(&path, &damaged).unwrap();
        let err = load(&path, &Device::Cpu, build).unwrap_err().to_string();
        assert!(
            err.contains("m.safetensors: ")
                && err.contains(&format!("m.json recorded {recorded} (weights_sha256)"))
                && err.contains("damaged, or these are another model's weights"),
            "{err}"
        );

        // Another model's weights, same shapes.
        let other_dir = tempfile::tempdir().unwrap();
        let other = other_dir.path().join("m.safetensors");
        let seeded = HyperDm::new(
            PrimaryMlp::new(&MlpConfig::default()),
            &HyperConfig::default(),
            &DiffusionConfig::default(),
            &Device::Cpu,
            2,
        )
        .unwrap();
        save_default(&other, &seeded, &opt);
        std::fs::copy(&other, &path).unwrap();
        let err = load(&path, &Device::Cpu, build).unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");

        // Metadata without the field (written before it existed).
        let mut meta = read_meta(&path).unwrap();
        meta.weights_sha256 = None;
        let text = serde_json::to_string(&meta).unwrap();
        assert!(!text.contains("weights_sha256"));
        std::fs::write(path.with_extension("json"), text).unwrap();
        std::fs::write(&path, &damaged).unwrap();
        assert!(load(&path, &Device::Cpu, build).is_ok());
    }
}
