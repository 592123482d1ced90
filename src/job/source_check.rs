//! The source query checked before anything is read: it plans over the
//! input's table and returns the columns the model needs. Its errors name
//! the pipeline and the query's file, and speak of the query as written:
//! later the commands wrap it (`--since`/`--until`, the steps to forecast or
//! train on), and a parser's line and column would point into the wrapping.

use anyhow::{Context, Result, anyhow};
use datafusion::prelude::SessionContext;
use uqcast_forecast::ForecastError;
use uqcast_forecast::assemble::check_source_columns;

use crate::pipeline::Pipeline;

/// Plans `query` (the pipeline's source query, as written) in `ctx` and
/// checks the columns it returns.
pub async fn check(ctx: &SessionContext, pipeline: &Pipeline, query: &str) -> Result<()> {
    let named = || {
        format!(
            "pipeline {}: source.query {}",
            pipeline.file.display(),
            pipeline.resolve(&pipeline.source.query).display()
        )
    };
    let plan = ctx.state().create_logical_plan(query).await;
    let plan = plan.with_context(named)?;
    match check_source_columns(plan.schema().as_arrow()) {
        Err(ForecastError::Source(problem)) => Err(anyhow!("{}: {problem}", named())),
        other => other.with_context(named),
    }
}
