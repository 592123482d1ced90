//! `uqcast run --dry-run`: what a run would do now, found as the run finds
//! it, with nothing sampled and nothing written. An operator changing a
//! pipeline, a model or an input folder sees before the scheduled run
//! whether it still loads and fits, and which steps it would forecast
//! (a first run over years of input is hours of sampling), forecast again
//! (revised input) or flag again.
//!
//! Everything a run checks before it samples is checked the same way (the
//! model against the pipeline, the source and flags SQL, the output's
//! provenance), and the recheck window's input is read and compared as a
//! run reads it. The output is opened to read only: no lock (a dry run may
//! look at an output a run is writing), no folder made, no ledger kept.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use futures::StreamExt;

use super::output::Output;
use super::prepare::{Before, prepare};
use super::{RunOptions, empty_source, flags_refresh, source_steps, step_local};
use crate::pipeline::Pipeline;

/// What a run would do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Valid times it would forecast for the first time.
    pub new: BTreeSet<i64>,
    /// Valid times it would forecast again, their input having changed.
    pub revised: BTreeSet<i64>,
    /// Steps it would leave as they are.
    pub existing_steps: usize,
    /// Months whose flags it would make (again), and months whose flags
    /// it would remove (no step left in them).
    pub flag_months: usize,
    pub flag_months_removed: usize,
    /// Where this process would forecast (`cpu`, `cuda:0`); None on a cluster.
    pub device: Option<String>,
    /// The closest two steps of the table the run would leave, µs apart
    /// (the data's step, for [`spans`]).
    pub spacing: Option<i64>,
}

/// Finds what `uqcast run` with `options` would do now.
pub async fn plan(pipeline: &Pipeline, options: &RunOptions) -> Result<Plan> {
    let mut p = prepare(pipeline, options).await?;
    let provenance = p.provenance(pipeline);
    let output = Output::open_to_read(&p.out_dir)?;
    let existing = output.existing(&provenance).await?;
    let lead = p.model.lead_micros();
    let before = Before::find(&mut p, &output, &existing).await?;
    let skip = before.skip();
    let every_step = step_local::keeps_every_step(&p.ctx, &p.query, "era5").await;
    let to_forecast = match every_step {
        // The query's steps are the table's: its catalog says them unread.
        true => source_steps::table_steps(&p.ctx).await.map(|steps| {
            let within = |t: &i64| {
                options.since.is_none_or(|s| *t >= s) && options.until.is_none_or(|u| *t <= u)
            };
            steps
                .into_iter()
                .filter(|t| within(t) && !skip.contains(t))
                .collect()
        }),
        false => None,
    };
    let to_forecast = match to_forecast {
        Some(steps) => steps,
        None => {
            let sql = source_steps::narrowed(&p.ctx, &p.sql, &skip, p.step_local).await;
            distinct_steps(&p.ctx, &sql).await?
        }
    };
    if to_forecast.is_empty()
        && existing.is_empty()
        && empty_source::is_empty(&p.ctx, &p.query).await?
    {
        return Err(empty_source::error(&p.ctx, pipeline, &p.location).await);
    }
    let valid =
        |inits: &BTreeSet<i64>| -> BTreeSet<i64> { inits.iter().map(|t| t + lead).collect() };
    let new: BTreeSet<i64> = to_forecast.difference(&before.revised).copied().collect();
    let revised: BTreeSet<i64> = to_forecast.intersection(&before.revised).copied().collect();
    let written = valid(&to_forecast);
    let steps: BTreeSet<i64> = existing.iter().copied().chain(written.clone()).collect();
    let flagging = flags_refresh::Flagging {
        pipeline,
        output: &output,
        query: &p.flags_query,
        provenance: &provenance,
    };
    let (flag_months, flag_months_removed) = flagging.months_to_make(&steps, &written).await?;
    let listed: Vec<i64> = steps.into_iter().collect();
    let spacing = listed.windows(2).map(|w| w[1] - w[0]).min();
    Ok(Plan {
        existing_steps: existing.len() - revised.len(),
        new: valid(&new),
        revised: valid(&revised),
        flag_months,
        flag_months_removed,
        device: options.ballista.is_none().then(|| p.device_name.clone()),
        spacing,
    })
}

/// The distinct initial times `sql` (over `ctx`'s tables) returns: for a
/// source query that may drop or move steps, a pass over its rows (as
/// the run's own scan would read them).
async fn distinct_steps(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> Result<BTreeSet<i64>> {
    let query = format!("SELECT DISTINCT valid_time FROM ({sql}) AS to_forecast");
    let mut stream = ctx
        .sql(&query)
        .await?
        .execute_stream()
        .await
        .context("listing the steps the source query returns")?;
    let micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut steps = BTreeSet::new();
    while let Some(batch) = stream.next().await {
        let column = datafusion::arrow::compute::cast(batch?.column(0), &micros)?;
        let times = column.as_primitive::<TimestampMicrosecondType>();
        steps.extend(times.iter().flatten());
    }
    Ok(steps)
}

/// The summary line's fields, as `uqcast run`'s (`would_` where it
/// would write).
pub fn describe(plan: &Plan, out: &std::path::Path) -> String {
    let device = super::device_field(plan.device.as_deref());
    format!(
        "would_forecast={} would_revise={} existing_steps={} flag_months={} \
         flag_months_removed={} {device}output={}",
        plan.new.len(),
        plan.revised.len(),
        plan.existing_steps,
        plan.flag_months,
        plan.flag_months_removed,
        out.display()
    )
}

/// `times` (UTC µs) as runs of steps `spacing` µs apart, one line each:
/// `2020-01-01T06:00Z … 2020-01-03T18:00Z, every 6 h (10 steps)`. Where
/// a step is missing (kept, or not in the input) a new run starts.
pub fn spans(times: &BTreeSet<i64>, spacing: Option<i64>) -> Vec<String> {
    let iso = uqcast_forecast::error::iso;
    let listed: Vec<i64> = times.iter().copied().collect();
    let mut lines = Vec::new();
    let mut start = 0;
    for end in 1..=listed.len() {
        if end < listed.len() && Some(listed[end] - listed[end - 1]) == spacing {
            continue;
        }
        let (first, last, n) = (listed[start], listed[end - 1], end - start);
        lines.push(match (n, spacing) {
            (1, _) | (_, None) => iso(first),
            (_, Some(every)) => format!(
                "{} … {}, every {} ({n} steps)",
                iso(first),
                iso(last),
                every_text(every)
            ),
        });
        start = end;
    }
    lines
}

/// A spacing in µs as hours, or minutes where it is not whole hours.
fn every_text(micros: i64) -> String {
    const MINUTE: i64 = 60_000_000;
    match micros % (60 * MINUTE) {
        0 => format!("{} h", micros / (60 * MINUTE)),
        _ => format!("{} min", micros / MINUTE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;
    /// 2020-01-01T00:00Z in microseconds.
    const START: i64 = 1_577_836_800_000_000;

    #[test]
    fn steps_are_said_as_runs_at_the_tables_spacing_and_a_gap_starts_a_new_one() {
        let at =
            |hours: &[i64]| -> BTreeSet<i64> { hours.iter().map(|h| START + h * HOUR).collect() };
        let six = Some(6 * HOUR);
        assert!(spans(&BTreeSet::new(), six).is_empty());
        assert_eq!(spans(&at(&[6]), six), ["2020-01-01T06:00Z"]);
        assert_eq!(spans(&at(&[6]), None), ["2020-01-01T06:00Z"]);
        // Two steps a day apart in a 6-hourly table are two lines.
        assert_eq!(
            spans(&at(&[18, 42]), six),
            ["2020-01-01T18:00Z", "2020-01-02T18:00Z"]
        );
        assert_eq!(
            spans(&at(&[0, 6, 12, 18, 36, 42, 60]), six),
            [
                "2020-01-01T00:00Z … 2020-01-01T18:00Z, every 6 h (4 steps)",
                "2020-01-02T12:00Z … 2020-01-02T18:00Z, every 6 h (2 steps)",
                "2020-01-03T12:00Z",
            ]
        );
        let half_hours: BTreeSet<i64> = (0..3).map(|k| START + k * HOUR / 2).collect();
        assert_eq!(
            spans(&half_hours, Some(HOUR / 2)),
            ["2020-01-01T00:00Z … 2020-01-01T01:00Z, every 30 min (3 steps)"]
        );
    }
}
