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
use crate::session::context_with_table;
use crate::session::s3::S3Location;
use output::Output;
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

/// What a run and a dry run check and open before the output: the
/// model, the input and its source query, the flags SQL.
struct Prepared {
    location: String,
    model: Arc<ForecastModel>,
    settings: uqcast_forecast::InferenceSettings,
    device_name: String,
    out_dir: PathBuf,
    /// Recheck window in days, and the recheck of its input.
    days: u32,
    recheck: recheck_ledger::Recheck,
    ctx: datafusion::prelude::SessionContext,
    /// The source query, and it limited by `--since`/`--until`.
    query: String,
    sql: String,
    step_local: bool,
    flags_query: flags::FlagsQuery,
}

impl Prepared {
    /// What the forecast files are written with, and checked against.
    fn provenance(&self, pipeline: &Pipeline) -> Provenance {
        let (model, settings) = (&self.model, &self.settings);
        [
            ("model_id", model.id.clone()),
            ("method", model.checkpoint.method.to_string()),
            ("members", settings.members.to_string()),
            ("samples", settings.samples.to_string()),
            ("sampler", settings.sampler.to_string()),
            ("seed", settings.seed.to_string()),
            ("lead_hours", model.meta.lead_hours.to_string()),
            ("pipeline", pipeline.name.clone()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Loads the model and checks it against the pipeline, registers the
/// input and checks the source and flags SQL: all a run does before it
/// opens its output, each failure naming its file and field.
async fn prepare(pipeline: &Pipeline, options: &RunOptions) -> Result<Prepared> {
    let location = options
        .input
        .clone()
        .unwrap_or_else(|| pipeline.source_location());
    let model_path = options
        .model
        .clone()
        .unwrap_or_else(|| pipeline.resolve(&pipeline.model.checkpoint));
    let out_dir = options
        .output
        .clone()
        .unwrap_or_else(|| pipeline.resolve(&pipeline.output.dir));
    let settings = pipeline.inference()?;

    let device = uqcast_hyperdm::default_device()?;
    let device_name = uqcast_hyperdm::device_name(&device);
    let model = {
        // A model in a bucket is read from this process's copy.
        let path = match S3Location::parse(&model_path.to_string_lossy())? {
            Some(_) => crate::session::s3::model_copy(&model_path.to_string_lossy()).await,
            None => Ok(model_path.clone()),
        };
        let path = match (path, &options.model) {
            (Ok(path), _) => path,
            (Err(e), Some(_)) => return Err(e.context("--model")),
            (Err(e), None) => {
                return Err(e.context(format!(
                    "pipeline {} model.checkpoint",
                    pipeline.file.display()
                )));
            }
        };
        let loaded = tokio::task::spawn_blocking(move || {
            ForecastModel::load(&path, &device).map_err(anyhow::Error::from)
        })
        .await
        .context("model loading task failed")?;
        // A model the pipeline names: say where it was named.
        match options.model {
            None => loaded.with_context(|| {
                format!("pipeline {} model.checkpoint", pipeline.file.display())
            })?,
            Some(_) => loaded?,
        }
    };
    if model.meta.lead_hours != pipeline.model.lead_hours {
        anyhow::bail!(
            "{}: the model forecasts {} h ahead, pipeline {} says model.lead_hours = {}",
            model_path.display(),
            model.meta.lead_hours,
            pipeline.file.display(),
            pipeline.model.lead_hours
        );
    }
    if let Err((field, e)) = model.check_settings(&settings) {
        anyhow::bail!(
            "{}: pipeline {} inference.{field}: {e}",
            model_path.display(),
            pipeline.file.display()
        );
    }
    // The input files' identities are taken before they are opened (see
    // `recheck_ledger`).
    let days = options.recheck_days.unwrap_or(pipeline.source.recheck_days);
    let query = source_sql(pipeline, None, None)?;
    let recheck = recheck_ledger::Recheck::start(&location, &query, days).await;
    // The input is opened before the output, so a run that cannot read its
    // input leaves no empty forecast directory behind.
    let ctx = match &options.ballista {
        None => context_with_table("era5", location.clone()).await?,
        Some(url) => {
            let ctx = crate::cluster::client(url).await?;
            crate::session::register_tables(
                &ctx,
                &[crate::session::TableArg {
                    name: "era5".into(),
                    location: location.clone(),
                }],
            )
            .await?;
            ctx
        }
    };
    source_check::check(&ctx, pipeline, &query).await?;
    let sql = source_sql(pipeline, options.since, options.until)?;
    let step_local = step_local::is_step_local(&ctx, &query, "era5").await;
    let flags_query = flags::render(pipeline)?;
    flags::check(&flags_query).await?;
    if pipeline.flags.per_step {
        flags_per_step::check(&flags_query).await?;
    }
    Ok(Prepared {
        location,
        model: Arc::new(model),
        settings,
        device_name,
        out_dir,
        days,
        recheck,
        ctx,
        query,
        sql,
        step_local,
        flags_query,
    })
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
        let cluster = ballista.is_some();
        let sql = source_steps::narrowed(&p.ctx, &p.sql, &skip, p.step_local, cluster).await;
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

/// What the output held before a run: the steps forecast (initial times),
/// those of the recheck window whose input is read again, and those of
/// them whose input changed (forecast again).
struct Before {
    forecast: BTreeSet<i64>,
    rechecked: BTreeSet<i64>,
    revised: BTreeSet<i64>,
}

impl Before {
    /// Reads `output`, whose steps are `existing` (valid times), and the
    /// input of the window's steps where the recheck needs it.
    async fn find(p: &mut Prepared, output: &Output, existing: &[i64]) -> Result<Self> {
        let lead = p.model.lead_micros();
        let forecast: BTreeSet<i64> = existing.iter().map(|t| t - lead).collect();
        let window = revisions::window(&forecast, p.days);
        let rechecked = p
            .recheck
            .steps_to_read(&p.ctx, p.step_local, output, &window, lead)
            .await;
        let revised = revisions::revised(&p.ctx, &p.sql, output, &rechecked, lead).await?;
        Ok(Self {
            forecast,
            rechecked,
            revised,
        })
    }

    /// The initial times the run leaves as they are.
    fn skip(&self) -> BTreeSet<i64> {
        self.forecast.difference(&self.revised).copied().collect()
    }
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
    let device = summary
        .device
        .as_ref()
        .map(|d| format!("device={d} "))
        .unwrap_or_default();
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
