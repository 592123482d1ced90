//! ERA5 2 m temperature forecasts with HyperDM uncertainty.
//!
//! - [`features`]: what the cell model sees (t2m neighbourhood, position, local
//!   solar time) and predicts (the 6-hour change);
//! - [`pairs`]: training pairs exactly one lead apart;
//! - [`packed`]: a step as training holds it, 2 bytes a cell;
//! - [`pair_sample`]: the pairs drawn from a span too long to hold;
//! - [`model`]: training and loading a field checkpoint, sampling a step;
//! - [`resume`]: the partial checkpoints that make training resumable;
//! - [`assemble`]: source rows → whole steps on the model grid;
//! - [`input_digest`]: a step's input in a few bytes, to see it revised;
//! - [`exec`] / [`table`]: the DataFusion operator, the table provider and
//!   the `hyperdm_forecast` SQL table function.

pub mod assemble;
pub mod error;
pub mod exec;
pub mod features;
pub mod grid;
pub mod input_digest;
pub mod model;
pub mod packed;
pub mod pair_sample;
pub mod pairs;
pub mod resume;
pub mod schema;
pub mod spec;
pub mod table;

pub use error::{ForecastError, Result};
pub use exec::HyperdmExec;
pub use grid::ModelGrid;
pub use model::{FieldMeta, FieldTraining, ForecastModel, InferenceSettings, StepForecast};
pub use packed::PackedStep;
pub use pairs::StepField;
pub use schema::forecast_schema;
pub use spec::ForecastSpec;
pub use table::{
    ForecastTable, HyperdmForecastFunction, ModelFiles, PlanSourceWhenCalled, Source,
    StepPartitions,
};
