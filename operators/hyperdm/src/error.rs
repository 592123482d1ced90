//! Errors of the HyperDM model crate.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = HyperdmError> = std::result::Result<T, E>;

/// What went wrong while building, training, sampling or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum HyperdmError {
    #[error("tensor operation failed in {context}: {source}")]
    Candle {
        context: &'static str,
        #[source]
        source: candle_core::Error,
    },

    #[error("model config '{field}': {problem}")]
    Config {
        field: &'static str,
        problem: String,
    },

    #[error("input '{what}': expected {expected}, found {found}")]
    Shape {
        what: &'static str,
        expected: String,
        found: String,
    },

    /// The loss stopped being a number: every weight it reaches is NaN
    /// after the next step, so the run stops instead of saving them.
    #[error(
        "train.lr: training diverged, the loss is {loss} after update {iteration} of \
         {iterations} at a learning rate of {lr}; a lower one keeps it finite"
    )]
    Diverged {
        loss: f32,
        iteration: u64,
        iterations: u64,
        lr: f64,
    },

    #[error("UQCAST_DEVICE={value}: {problem}")]
    Device { value: String, problem: String },

    #[error("{}: checkpoint {problem}", path.display())]
    Checkpoint { path: PathBuf, problem: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Attaches a context name to candle errors.
pub trait CandleContext<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| HyperdmError::Candle { context, source })
    }
}
