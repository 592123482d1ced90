//! Errors of the forecast operator: each names the file, step or field.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

pub type Result<T, E = ForecastError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        source: uqcast_hyperdm::HyperdmError,
    },
    #[error("{path}: no such model file (train one with `uqcast train`)")]
    NoModel { path: PathBuf },
    #[error("{path}: model metadata field '{field}': {problem}")]
    Meta {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
    #[error("source query: {0}")]
    Source(String),
    #[error("source rows do not fit the model grid: {0}")]
    Grid(String),
    #[error("step {time}: {problem}")]
    Step { time: String, problem: String },
    #[error("training data: {0}")]
    Training(String),
    #[error(transparent)]
    Hyperdm(#[from] uqcast_hyperdm::HyperdmError),
}

impl From<ForecastError> for DataFusionError {
    fn from(e: ForecastError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// ISO-8601 text for UTC microseconds, for messages and file names.
pub fn iso(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_else(|| format!("{micros}µs"))
}
