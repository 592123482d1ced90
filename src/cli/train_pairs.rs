//! `[train] max_pairs` (`uqcast train --max-pairs`): the valid times the
//! source query returns, the pairs drawn from them, and the source query
//! narrowed to those pairs' steps, so a span of decades is read and held
//! only for the steps training uses.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use uqcast_forecast::pair_sample::PairSample;

use crate::job::{source_steps, step_local, timestamps_sql};
use crate::pipeline::Pipeline;

/// The pairs drawn from the span `sql` returns (the pipeline's source
/// `query` between `since` and `until`), and `sql` narrowed to their steps;
/// `None` where the span has no more than `max` pairs.
pub async fn drawn(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    (query, sql): (&str, &str),
    (since, until): (Option<i64>, Option<i64>),
    max: usize,
) -> Result<Option<(PairSample, String)>> {
    let times = span_times(ctx, query, sql, (since, until)).await?;
    let lead = i64::from(pipeline.model.lead_hours) * 3_600_000_000;
    let drawn = PairSample::draw(&times, lead, max, pipeline.train.seed);
    Ok(drawn.map(|sample| {
        let steps = timestamps_sql(&sample.steps());
        let sql = format!("SELECT * FROM ({sql}) AS span WHERE valid_time IN ({steps})");
        (sample, sql)
    }))
}

/// The distinct valid times of the rows of `sql` (the source `query`
/// between `since` and `until`). Where the source query keeps every step of a
/// NetCDF table ([`step_local::keeps_every_step`], as the shipped one
/// does), they are the table's, from its catalog; else a query of them,
/// which makes every row's coordinates, and reads `t2m` only where the
/// query's conditions name it.
async fn span_times(
    ctx: &SessionContext,
    query: &str,
    sql: &str,
    (since, until): (Option<i64>, Option<i64>),
) -> Result<BTreeSet<i64>> {
    if step_local::keeps_every_step(ctx, query, "era5").await
        && let Some(steps) = source_steps::table_steps(ctx).await
    {
        let within = |t: &i64| since.is_none_or(|s| *t >= s) && until.is_none_or(|u| *t <= u);
        return Ok(steps.into_iter().filter(within).collect());
    }
    let query = format!("SELECT DISTINCT valid_time FROM ({sql}) AS span");
    // One row a step: small enough to collect.
    let batches = ctx.sql(&query).await.context("source query")?.collect();
    let mut times = BTreeSet::new();
    for batch in batches.await.context("source query")? {
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        let column = cast(batch.column(0), &micros).context("source query: column 'valid_time'")?;
        times.extend(
            column
                .as_primitive::<TimestampMicrosecondType>()
                .iter()
                .flatten(),
        );
    }
    Ok(times)
}
