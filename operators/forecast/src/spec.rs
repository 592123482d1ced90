//! Plan serialisation: what a [`HyperdmExec`] is rebuilt from in another
//! process (a distributed executor).
//!
//! The spec names the model file and the id of the weights it was planned
//! with; the executor loads the same path (shared storage) and refuses
//! weights with another id, so no forecast comes from a model the query did
//! not plan with.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use crate::error::ForecastError;
use crate::exec::HyperdmExec;
use crate::model::{ForecastModel, InferenceSettings};

/// The forecast operator's settings; its input travels as the plan's child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastSpec {
    pub model_path: PathBuf,
    /// [`ForecastModel::id`]: file stem and a hash of the weights.
    pub model_id: String,
    pub settings: InferenceSettings,
    /// Initial times (UTC microseconds) not to forecast.
    pub skip: Vec<i64>,
    /// Partitions asked for (see [`crate::StepPartitions`]).
    pub partitions: usize,
}

impl ForecastSpec {
    /// Whether `model` (loaded from [`Self::model_path`]) is the one planned with.
    pub fn check_model(&self, model: &ForecastModel) -> Result<(), ForecastError> {
        if model.id != self.model_id {
            return Err(ForecastError::Meta {
                path: self.model_path.clone(),
                field: "weights",
                problem: format!(
                    "the query was planned with model {}, this file holds {}",
                    self.model_id, model.id
                ),
            });
        }
        model
            .check_settings(&self.settings)
            .map_err(|(field, problem)| ForecastError::Meta {
                path: self.model_path.clone(),
                field,
                problem,
            })
    }
}

impl HyperdmExec {
    pub fn spec(&self) -> ForecastSpec {
        let (model, settings, skip, partitions) = self.parts();
        ForecastSpec {
            model_path: model.path.clone(),
            model_id: model.id.clone(),
            settings: *settings,
            skip: skip.iter().copied().collect(),
            partitions,
        }
    }

    /// Rebuilds the operator over `input` with `model`, loaded by the caller
    /// from `spec.model_path` (which device, and whether to cache it, is the
    /// caller's choice).
    pub fn from_spec(
        spec: &ForecastSpec,
        input: Arc<dyn ExecutionPlan>,
        model: Arc<ForecastModel>,
    ) -> Result<Self> {
        spec.check_model(&model)?;
        Self::over(
            input,
            model,
            spec.settings,
            Arc::new(spec.skip.iter().copied().collect()),
            spec.partitions,
        )
    }
}
