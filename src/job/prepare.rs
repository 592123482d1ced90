//! What `uqcast run` does before it samples, and `--dry-run` does too: the
//! model loaded and checked against the pipeline, the input registered, the
//! source and flags SQL checked ([`prepare`]), then the output's steps read
//! and the recheck window's input compared ([`Before`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use uqcast_forecast::ForecastModel;

use super::output::Output;
use super::store::Provenance;
use super::{
    RunOptions, flags, flags_per_step, recheck_ledger, revisions, source_check, source_sql,
    step_local,
};
use crate::pipeline::Pipeline;
use crate::session::context_with_table;
use crate::session::s3::S3Location;

/// What a run and a dry run check and open before the output: the
/// model, the input and its source query, the flags SQL.
pub(super) struct Prepared {
    pub(super) location: String,
    pub(super) model: Arc<ForecastModel>,
    pub(super) settings: uqcast_forecast::InferenceSettings,
    pub(super) device_name: String,
    pub(super) out_dir: PathBuf,
    /// Recheck window in days, and the recheck of its input.
    pub(super) days: u32,
    pub(super) recheck: recheck_ledger::Recheck,
    pub(super) ctx: datafusion::prelude::SessionContext,
    /// The source query, and it limited by `--since`/`--until`.
    pub(super) query: String,
    pub(super) sql: String,
    pub(super) step_local: bool,
    pub(super) flags_query: flags::FlagsQuery,
}

impl Prepared {
    /// What the forecast files are written with, and checked against.
    pub(super) fn provenance(&self, pipeline: &Pipeline) -> Provenance {
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
pub(super) async fn prepare(pipeline: &Pipeline, options: &RunOptions) -> Result<Prepared> {
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

/// What the output held before a run: the steps forecast (initial times),
/// those of the recheck window whose input is read again, and those of
/// them whose input changed (forecast again).
pub(super) struct Before {
    pub(super) forecast: BTreeSet<i64>,
    pub(super) rechecked: BTreeSet<i64>,
    pub(super) revised: BTreeSet<i64>,
}

impl Before {
    /// Reads `output`, whose steps are `existing` (valid times), and the
    /// input of the window's steps where the recheck needs it.
    pub(super) async fn find(p: &mut Prepared, output: &Output, existing: &[i64]) -> Result<Self> {
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
    pub(super) fn skip(&self) -> BTreeSet<i64> {
        self.forecast.difference(&self.revised).copied().collect()
    }
}
