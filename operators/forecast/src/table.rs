//! The forecast as a SQL table: `ForecastTable` (a provider over a source
//! query) and the `hyperdm_forecast` table function that makes one in SQL.
//!
//! ```sql
//! SELECT valid_time, avg(t2m_eu) FROM hyperdm_forecast(
//!   'models/era5_t2m_6h.safetensors',
//!   'SELECT * FROM era5 WHERE latitude % 1 = 0 AND longitude % 1 = 0',
//!   4, 8, 'dpm2m-20', 0)
//! GROUP BY valid_time;
//! ```
//! The source query is planned in the calling session, so it sees the same
//! tables and functions as the outer query.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::error::ForecastError;
use crate::exec::HyperdmExec;
use crate::model::{ForecastModel, InferenceSettings};
use crate::schema::forecast_schema;

/// Forecasts of every step a source query returns.
#[derive(Debug, Clone)]
pub struct ForecastTable {
    model: Arc<ForecastModel>,
    source: Source,
    settings: InferenceSettings,
    skip: Arc<BTreeSet<i64>>,
}

/// The source query: SQL, planned when the table is scanned (in the
/// scanning session), or a plan already made (one that can travel to a
/// distributed scheduler with the table).
#[derive(Debug, Clone)]
pub enum Source {
    Sql(String),
    Plan(LogicalPlan),
}

/// A session configuration extension: forecast with this many partitions,
/// the source hash-partitioned by step, so steps are sampled in parallel
/// (on a cluster's executors). Without it, one partition: sampling already
/// takes every core of one machine.
#[derive(Debug, Clone, Copy)]
pub struct StepPartitions(pub usize);

/// A session configuration extension: where `hyperdm_forecast(…)` finds the
/// files of a model named by something other than a local path (a URL the
/// application knows how to fetch). Without it, a model path is a file.
#[derive(Clone)]
pub struct ModelFiles(pub Arc<LocalModelFile>);

/// The local weights file for a model path.
pub type LocalModelFile = dyn Fn(&Path) -> Result<PathBuf> + Send + Sync;

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelFiles")
    }
}

/// A session configuration extension: `hyperdm_forecast(…)` plans its
/// source query when it is called, in the calling session, so the table
/// can travel (to a cluster's scheduler, which has not the caller's tables).
/// Needs a multi-threaded runtime: planning is async, the call is not.
#[derive(Debug, Clone, Copy)]
pub struct PlanSourceWhenCalled;

impl ForecastTable {
    /// `skip`: initial times (UTC microseconds) not to forecast.
    pub fn new(
        model: Arc<ForecastModel>,
        source_sql: impl Into<String>,
        settings: InferenceSettings,
        skip: BTreeSet<i64>,
    ) -> Self {
        Self::with_source(model, Source::Sql(source_sql.into()), settings, skip)
    }

    pub fn with_source(
        model: Arc<ForecastModel>,
        source: Source,
        settings: InferenceSettings,
        skip: BTreeSet<i64>,
    ) -> Self {
        Self {
            model,
            source,
            settings,
            skip: Arc::new(skip),
        }
    }

    pub fn model(&self) -> &Arc<ForecastModel> {
        &self.model
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn settings(&self) -> &InferenceSettings {
        &self.settings
    }

    pub fn skip(&self) -> &BTreeSet<i64> {
        &self.skip
    }
}

#[async_trait]
impl TableProvider for ForecastTable {
    fn schema(&self) -> SchemaRef {
        forecast_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(session) = state.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("hyperdm_forecast needs a DataFusion SessionState");
        };
        let described = match &self.source {
            Source::Sql(sql) => one_line(sql),
            Source::Plan(plan) => one_line(&plan.display_indent().to_string()),
        };
        let source = |e: DataFusionError| -> DataFusionError {
            ForecastError::Source(format!("{described}: {e}")).into()
        };
        let logical = match &self.source {
            Source::Sql(sql) => uqcast_boxed::logical_plan(session, sql)
                .await
                .map_err(source)?,
            Source::Plan(plan) => plan.clone(),
        };
        let input = uqcast_boxed::physical_plan(session, &logical)
            .await
            .map_err(source)?;
        let partitions = session
            .config()
            .get_extension::<StepPartitions>()
            .map_or(1, |p| p.0.max(1));
        let exec: Arc<dyn ExecutionPlan> = Arc::new(HyperdmExec::try_new(
            input,
            self.model.clone(),
            self.settings,
            self.skip.clone(),
            partitions,
        )?);
        match projection {
            None => Ok(exec),
            Some(columns) => {
                let schema = exec.schema();
                let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> =
                    columns
                        .iter()
                        .map(|&i| {
                            let name = schema.field(i).name().clone();
                            (Arc::new(Column::new(&name, i)) as _, name)
                        })
                        .collect();
                Ok(Arc::new(ProjectionExec::try_new(exprs, exec)?))
            }
        }
    }
}

/// Plans `sql` in `session` from the synchronous table-function call.
fn plan_now(session: &dyn Session, sql: &str) -> Result<LogicalPlan> {
    let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
        return plan_err!("hyperdm_forecast needs a DataFusion SessionState");
    };
    let handle = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => h,
        _ => return plan_err!("hyperdm_forecast plans its source on a multi-threaded runtime"),
    };
    tokio::task::block_in_place(|| handle.block_on(uqcast_boxed::logical_plan(state, sql)))
        .map_err(|e| ForecastError::Source(format!("{}: {e}", one_line(sql))).into())
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `hyperdm_forecast(model, source_sql [, members, samples [, sampler [, seed]]])`.
#[derive(Debug, Default)]
pub struct HyperdmForecastFunction;

impl HyperdmForecastFunction {
    pub const NAME: &'static str = "hyperdm_forecast";
    pub const DEFAULTS: InferenceSettings = InferenceSettings {
        members: 4,
        samples: 8,
        sampler: uqcast_hyperdm::Sampler::Ddim { steps: 25 },
        seed: 0,
    };
}

fn literal<'a>(args: &'a [Expr], i: usize, what: &str) -> Result<Option<&'a ScalarValue>> {
    match args.get(i) {
        None => Ok(None),
        Some(Expr::Literal(v, _)) => Ok(Some(v)),
        Some(other) => plan_err!(
            "{}: argument {} ({what}) must be a literal, got {other}",
            HyperdmForecastFunction::NAME,
            i + 1
        ),
    }
}

fn text(args: &[Expr], i: usize, what: &str) -> Result<Option<String>> {
    match literal(args, i, what)? {
        None => Ok(None),
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(Some(s.clone())),
        Some(v) => plan_err!(
            "{}: {what} must be text, got {v}",
            HyperdmForecastFunction::NAME
        ),
    }
}

fn count(args: &[Expr], i: usize, what: &str) -> Result<Option<u64>> {
    // A cast alone would truncate 2.5 to 2.
    let fractional = |v: &ScalarValue| match v {
        ScalarValue::Float64(Some(x)) => x.fract() != 0.0,
        ScalarValue::Float32(Some(x)) => x.fract() != 0.0,
        _ => false,
    };
    match literal(args, i, what)? {
        None => Ok(None),
        Some(v) if fractional(v) => plan_err!(
            "{}: {what} must be a non-negative integer, got {v}",
            HyperdmForecastFunction::NAME
        ),
        Some(v) => match v.cast_to(&datafusion::arrow::datatypes::DataType::UInt64) {
            Ok(ScalarValue::UInt64(Some(n))) => Ok(Some(n)),
            _ => plan_err!(
                "{}: {what} must be a non-negative integer, got {v}",
                HyperdmForecastFunction::NAME
            ),
        },
    }
}

impl TableFunctionImpl for HyperdmForecastFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let usage =
            "hyperdm_forecast(model_path, source_sql [, members, samples [, sampler [, seed]]])";
        let (Some(model), Some(source)) =
            (text(exprs, 0, "model_path")?, text(exprs, 1, "source_sql")?)
        else {
            return plan_err!("usage: {usage}");
        };
        if exprs.len() > 6 {
            return plan_err!("usage: {usage}");
        }
        let mut settings = Self::DEFAULTS;
        if let Some(m) = count(exprs, 2, "members")? {
            settings.members = m as usize;
        }
        if let Some(n) = count(exprs, 3, "samples")? {
            settings.samples = n as usize;
        }
        if let Some(s) = text(exprs, 4, "sampler")? {
            settings.sampler = s
                .parse()
                .map_err(|e: String| DataFusionError::Plan(format!("{}: {e}", Self::NAME)))?;
        }
        if let Some(seed) = count(exprs, 5, "seed")? {
            settings.seed = seed;
        }
        if settings.members < 2 || settings.samples < 2 {
            return plan_err!(
                "{}: needs members ≥ 2 (for EU) and samples ≥ 2 (for AU)",
                Self::NAME
            );
        }
        if settings.members > crate::model::MAX_MEMBERS {
            return plan_err!(
                "{}: members {} is above the {} one forecast may draw",
                Self::NAME,
                settings.members,
                crate::model::MAX_MEMBERS
            );
        }
        if settings.samples > crate::model::MAX_SAMPLES {
            return plan_err!(
                "{}: samples {} is above the {} that fit one forward pass",
                Self::NAME,
                settings.samples,
                crate::model::MAX_SAMPLES
            );
        }
        let device = uqcast_hyperdm::default_device().map_err(ForecastError::from)?;
        let path = PathBuf::from(&model);
        let local = match args.session().config().get_extension::<ModelFiles>() {
            Some(files) => (files.0)(&path)?,
            None => path.clone(),
        };
        let model = ForecastModel::load(&local, &device)?;
        if let Err((field, e)) = model.check_settings(&settings) {
            return plan_err!("{}: {field}: {e} ({})", Self::NAME, path.display());
        }
        let source = match args
            .session()
            .config()
            .get_extension::<PlanSourceWhenCalled>()
        {
            None => Source::Sql(source),
            Some(_) => Source::Plan(plan_now(args.session(), &source)?),
        };
        Ok(Arc::new(ForecastTable::with_source(
            Arc::new(model),
            source,
            settings,
            BTreeSet::new(),
        )))
    }
}
