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
    #[error("{path}: cannot keep the partial model (resumable training) there: {source}")]
    Partial {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hyperdm(#[from] uqcast_hyperdm::HyperdmError),
}

/// A forecast's error crosses into DataFusion as its message: a Ballista
/// executor reports a task's error in debug form, and the message (not the
/// variant's fields) is what a client reads back out of it. Nothing
/// downstream looks for the variant.
impl From<ForecastError> for DataFusionError {
    fn from(e: ForecastError) -> Self {
        DataFusionError::External(e.to_string().into())
    }
}

/// ISO-8601 text for UTC microseconds, for messages and file names.
pub fn iso(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_else(|| format!("{micros}µs"))
}
