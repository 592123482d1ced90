//! The scheduled forecast job (`uqcast run`): forecast every source step not
//! yet in the output, one Parquet file per step, then refresh the flags.
//!
//! Incremental and idempotent: steps whose forecast file exists are skipped
//! (the operator does not sample them); a killed run leaves only whole
//! files, so a re-run completes the rest; a re-run with nothing new writes
//! nothing. Each step's numbers depend only on the model, the sampling
//! settings and the step, so resumed and uninterrupted runs write the same
//! values. Within a recheck window a run also forecasts again the steps
//! whose input changed ([`revisions`]), reading the window only where input
//! or forecast files changed since the last recheck ([`recheck_ledger`]);
//! the flags are made where they need making ([`flags_refresh`]).

pub mod dry_run;
pub mod empty_source;
pub mod eu_outliers;
pub mod flags;
pub mod flags_incremental;
pub mod flags_months;
pub mod flags_per_step;
pub mod flags_refresh;
pub mod output;
mod prepare;
pub mod recheck_ledger;
pub mod revisions;
pub mod s3_lock;
pub mod s3_store;
pub mod source_check;
pub mod source_steps;
pub mod step_local;
pub mod steps;
pub mod store;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::catalog::TableProvider;
use datafusion::physical_plan::execute_stream;
use futures::StreamExt;
use uqcast_forecast::{ForecastModel, ForecastTable, Source};

use crate::pipeline::Pipeline;
use output::Output;
use prepare::{Before, prepare};
use store::Provenance;

/// What a run did, for the summary line.
#[derive(Debug, Default)]
pub struct Summary {
    pub new_steps: usize,
    pub existing_steps: usize,
    /// Steps forecast before and again now, their input having changed
    /// ([`revisions`]); not counted in `existing_steps` or `new_steps`.
    pub revised_steps: usize,
    pub tiles: usize,
    pub flagged: usize,
    /// Steps written whose EU peaks far above the table's usual peak
    /// ([`eu_outliers`]); each is also warned of.
    pub eu_outliers: usize,
    /// Where this process forecast (`cpu`, `cuda:0`): said, so that a
    /// `cuda` build whose GPU is not visible does not fall back to the CPU
    /// unnoticed. None on a cluster, whose executors choose their own.
    pub device: Option<String>,
}

/// Overrides from the command line.
#[derive(Debug, Default)]
pub struct RunOptions {
    pub input: Option<String>,
    pub output: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Overrides the pipeline's `source.recheck_days`.
    pub recheck_days: Option<u32>,
    /// Forecast on this Ballista cluster (`df://HOST:PORT`); the output is
    /// written here, as always.
    pub ballista: Option<String>,
}

/// The source SQL, limited to initial times in [since, until].
pub fn source_sql(pipeline: &Pipeline, since: Option<i64>, until: Option<i64>) -> Result<String> {
    let sql = pipeline.source_sql()?;
    let sql = sql.trim().trim_end_matches(';');
    let ts = timestamp_sql;
    let mut bounds = Vec::new();
    if let Some(t) = since {
        bounds.push(format!("valid_time >= {}", ts(t)));
    }
    if let Some(t) = until {
        bounds.push(format!("valid_time <= {}", ts(t)));
    }
    Ok(if bounds.is_empty() {
        sql.to_string()
    } else {
        format!(
            "SELECT * FROM ({sql}) AS source WHERE {}",
            bounds.join(" AND ")
        )
    })
}

/// UTC microseconds as a SQL timestamp literal.
pub(crate) fn timestamp_sql(t: i64) -> String {
    format!("to_timestamp_micros({t}, 'UTC')")
}

/// Times as a SQL list of timestamp literals (for `IN (…)`).
pub(crate) fn timestamps_sql<'a>(times: impl IntoIterator<Item = &'a i64>) -> String {
    times
        .into_iter()
        .map(|&t| timestamp_sql(t))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(pipeline: &Pipeline, options: &RunOptions) -> Result<Summary> {
    let mut p = prepare(pipeline, options).await?;
    let provenance = p.provenance(pipeline);
    let output = Output::open(&p.out_dir).await?;
    let mut summary = Summary {
        device: options.ballista.is_none().then_some(p.device_name.clone()),
        ..Summary::default()
    };
    let result = async {
        let existing = output.existing(&provenance).await?;
        let lead = p.model.lead_micros();
        let before = Before::find(&mut p, &output, &existing).await?;
        let revised = &before.revised;
        revisions::announce(revised, before.rechecked.len());
        summary.existing_steps = existing.len() - revised.len();
        let flagging = flags_refresh::Flagging {
            pipeline,
            output: &output,
            query: &p.flags_query,
            provenance: &provenance,
        };
        let table_steps: BTreeSet<i64> = existing.iter().copied().collect();
        let withdrawn: BTreeSet<i64> = revised.iter().map(|t| t + lead).collect();
        flagging.withdraw(&table_steps, &withdrawn).await?;
        let skip = before.skip();
        let cells = p.model.meta.grid.cells();
        let ballista = options.ballista.as_deref();
        let sql = source_steps::narrowed(&p.ctx, &p.sql, &skip, p.step_local).await;
        let model = p.model.clone();
        let steps = forecast_stream(&p.ctx, model, sql, p.settings, skip, ballista).await?;
        let sink = Written {
            output: &output,
            provenance: &provenance,
            revised,
            lead,
        };
        let written = write_new_steps(steps, cells, ballista, &sink, &mut summary).await?;

        // Nothing written, ever: if the query keeps no row of the data at
        // all (not merely none in --since/--until), that is an error, not "ok".
        if summary.new_steps == 0
            && summary.existing_steps == 0
            && summary.revised_steps == 0
            && empty_source::is_empty(&p.ctx, &p.query).await?
        {
            return Err(empty_source::error(&p.ctx, pipeline, &p.location).await);
        }
        let steps: BTreeSet<i64> = existing.iter().copied().chain(written.clone()).collect();
        flagging.refresh(&steps, &written, &mut summary).await?;
        let bounds = pipeline.flags.eu_outliers;
        warn_of_eu_outliers(&output, &written, bounds, &mut summary).await;
        let written_inits = written.iter().map(|t| t - lead).collect();
        let limited = options.since.is_some() || options.until.is_some();
        let steps = (&before.forecast, &before.rechecked, &written_inits);
        p.recheck.finish(&output, steps, lead, limited).await;
        Ok(())
    }
    .await;
    // A run that made the output and fails before its first step (bad
    // values in the first step read, a source query keeping nothing) leaves
    // no empty table behind; every run releases the output's lock.
    output
        .close(result.is_err() && summary.new_steps + summary.revised_steps == 0)
        .await;
    result?;
    Ok(summary)
}

/// Warns of each step just written whose EU peaks far above the usual. The
/// forecasts and flags are written whatever it finds, so a check that
/// cannot run is a warning too, not a failed run.
async fn warn_of_eu_outliers(
    output: &Output,
    written: &BTreeSet<i64>,
    bounds: crate::pipeline::Outliers,
    summary: &mut Summary,
) {
    match eu_outliers::among(output, written, bounds).await {
        Ok(found) => {
            for outlier in &found {
                eprintln!("warning: {outlier}");
            }
            summary.eu_outliers = found.len();
        }
        Err(e) => eprintln!("warning: the steps written were not checked for EU outliers: {e:#}"),
    }
}

/// `DIR/TABLE` of the run output `dir` (`forecast` or `flags`), or an error
/// saying what the command's `flag` expects: the folder given does not
/// exist, is the table's own folder, or holds no such table yet.
pub fn output_table(dir: &Path, table: &str, flag: &str) -> Result<PathBuf> {
    // A run output in a bucket: the table's prefix (listing it says the rest).
    let text = dir.to_string_lossy();
    if crate::pipeline::is_url(&text) {
        return Ok(PathBuf::from(format!(
            "{}/{table}/",
            text.trim_end_matches('/')
        )));
    }
    let location = dir.join(table);
    if location.is_dir() && !crate::session::is_parquet(&location.display().to_string()) {
        // Left so by a run that failed before writing the table (flags SQL
        // that failed): read as a table, it would be taken for NetCDF.
        anyhow::bail!(
            "{}: no {table} table yet: the folder holds no Parquet file (the run that made it \
             stopped before writing it; `uqcast run` again writes it)",
            location.display()
        );
    }
    if location.exists() {
        return Ok(location);
    }
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: no such directory ({flag} is the output directory of `uqcast run`)",
            dir.display()
        );
    }
    if dir
        .file_name()
        .is_some_and(|n| n == "forecast" || n == "flags")
    {
        let parent = dir.parent().unwrap_or(Path::new("."));
        anyhow::bail!(
            "{}: no {table} table; {flag} is the output directory of `uqcast run`, the folder holding forecast/ ({})",
            location.display(),
            parent.display()
        );
    }
    anyhow::bail!(
        "{}: no {table} table (run `uqcast run` first)",
        location.display()
    )
}

/// The forecast of the steps not in `skip`: run here, or on the cluster at
/// `ballista`, where the source travels planned (the scheduler has not the
/// client's tables).
async fn forecast_stream(
    ctx: &datafusion::prelude::SessionContext,
    model: Arc<ForecastModel>,
    sql: String,
    settings: uqcast_forecast::InferenceSettings,
    skip: BTreeSet<i64>,
    ballista: Option<&str>,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
    let Some(url) = ballista else {
        let table = ForecastTable::new(model, sql, settings, skip);
        let plan = table.scan(&ctx.state(), None, &[], None).await?;
        return Ok(execute_stream(plan, ctx.task_ctx())?);
    };
    let source = ctx
        .state()
        .create_logical_plan(&sql)
        .await
        .with_context(|| format!("source query: {sql}"))?;
    let table = ForecastTable::with_source(model, Source::Plan(source), settings, skip);
    ctx.read_table(Arc::new(table))?
        .execute_stream()
        .await
        .map_err(|e| crate::cluster::failure("forecast", url, e))
}

/// Where [`write_new_steps`] writes, and which of its steps replace a
/// forecast whose input was revised (initial times).
struct Written<'a> {
    output: &'a Output,
    provenance: &'a Provenance,
    revised: &'a BTreeSet<i64>,
    lead: i64,
}

/// Writes each step of `steps` once all its cells have arrived. The
/// operator emits one batch per step, but a cluster returns batches as its
/// shuffle and transport cut them: rows of one step may come in pieces, or
/// share a batch with another step's.
async fn write_new_steps(
    mut steps: datafusion::physical_plan::SendableRecordBatchStream,
    cells: usize,
    ballista: Option<&str>,
    to: &Written<'_>,
    summary: &mut Summary,
) -> Result<BTreeSet<i64>> {
    let mut pending = steps::Pending::new(cells);
    let mut written = BTreeSet::new();
    while let Some(batch) = steps.next().await {
        // A cluster is reached only as the stream is read: name it in errors.
        let batch = match (batch, ballista) {
            (Err(e), Some(url)) => {
                return Err(crate::cluster::failure("forecast", url, e));
            }
            (batch, _) => batch?,
        };
        for (valid_time, step) in pending.push(&batch)? {
            let at = to
                .output
                .write_step(valid_time, &step, to.provenance)
                .await?;
            written.insert(valid_time);
            if to.revised.contains(&(valid_time - to.lead)) {
                summary.revised_steps += 1;
                eprintln!("forecast {at} (its input was revised)");
            } else {
                summary.new_steps += 1;
                eprintln!("forecast {at}");
            }
        }
    }
    pending.finish()?;
    Ok(written)
}

/// Where the output of a run lives, for messages.
pub fn describe(summary: &Summary, out: &Path) -> String {
    let device = device_field(summary.device.as_deref());
    format!(
        "new_steps={} existing_steps={} revised_steps={} tiles={} flagged_tiles={} eu_outliers={} \
         {device}output={}",
        summary.new_steps,
        summary.existing_steps,
        summary.revised_steps,
        summary.tiles,
        summary.flagged,
        summary.eu_outliers,
        out.display()
    )
}

/// The summary line's `device=… ` field, empty on a cluster (whose
/// executors choose their own).
pub(crate) fn device_field(device: Option<&str>) -> String {
    device.map(|d| format!("device={d} ")).unwrap_or_default()
}
