//! `HyperdmExec`: appends HyperDM forecast columns to a stream of ERA5 rows.
//!
//! ```text
//! input rows (any order, one partition) ──StepAssembler──► whole steps
//!   ──spawn_blocking: M weight draws × N samples (candle)──►
//!   one RecordBatch per step: init_time, valid_time, latitude, longitude,
//!                             t2m, t2m_mean, t2m_au, t2m_eu
//! ```
//! Steps in `skip` (already forecast by an earlier run) are assembled but
//! not sampled. Sampling takes all cores (or the GPU), so steps run one
//! after another; the input is read ahead while a step samples.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float32Array, Float64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput, Time,
};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    Partitioning, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::assemble::{StepAssembler, check_source_columns};
use crate::model::{ForecastModel, InferenceSettings, StepForecast};
use crate::pairs::StepField;
use crate::schema::forecast_schema;

/// The forecast operator.
#[derive(Debug)]
pub struct HyperdmExec {
    input: Arc<dyn ExecutionPlan>,
    model: Arc<ForecastModel>,
    settings: InferenceSettings,
    skip: Arc<BTreeSet<i64>>,
    /// Partitions asked for: 1, or whole steps in each of this many.
    step_partitions: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl HyperdmExec {
    /// Checks the input has the needed columns. `partitions`: 1 reads every
    /// input partition into one stream; more hash-partition the input by
    /// `valid_time`, so each partition holds whole steps and the steps are
    /// sampled in parallel (on a cluster, by different executors).
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        model: Arc<ForecastModel>,
        settings: InferenceSettings,
        skip: Arc<BTreeSet<i64>>,
        partitions: usize,
    ) -> Result<Self> {
        check_source_columns(&input.schema())?;
        // The job runs the plan directly, without the physical optimiser
        // that would add these for `required_input_distribution`.
        let count = input.properties().output_partitioning().partition_count();
        let input: Arc<dyn ExecutionPlan> = if partitions > 1 {
            let time = input.schema().index_of(crate::schema::VALID_TIME)?;
            let key: Arc<dyn PhysicalExpr> = Arc::new(Column::new(crate::schema::VALID_TIME, time));
            Arc::new(RepartitionExec::try_new(
                input,
                Partitioning::Hash(vec![key], partitions),
            )?)
        } else if count > 1 {
            Arc::new(CoalescePartitionsExec::new(input))
        } else {
            input
        };
        Self::over(input, model, settings, skip, partitions)
    }

    /// The operator over an input already distributed as it needs: one
    /// partition, or whole steps per partition (a rebuilt plan's input, or
    /// a cluster task's share of it). One output partition per input one.
    pub(crate) fn over(
        input: Arc<dyn ExecutionPlan>,
        model: Arc<ForecastModel>,
        settings: InferenceSettings,
        skip: Arc<BTreeSet<i64>>,
        step_partitions: usize,
    ) -> Result<Self> {
        check_source_columns(&input.schema())?;
        let partitions = input.properties().output_partitioning().partition_count();
        let schema = forecast_schema();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            model,
            settings,
            skip,
            step_partitions: step_partitions.max(1),
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl HyperdmExec {
    pub(crate) fn parts(&self) -> (&ForecastModel, &InferenceSettings, &BTreeSet<i64>, usize) {
        (
            &self.model,
            &self.settings,
            &self.skip,
            self.step_partitions,
        )
    }
}

impl DisplayAs for HyperdmExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        match t {
            DisplayFormatType::TreeRender => {
                writeln!(f, "model={}", self.model.id)?;
                writeln!(f, "m={} n={} sampler={}", s.members, s.samples, s.sampler)
            }
            _ => write!(
                f,
                "HyperdmExec: model={}, grid={}, lead={}h, m={}, n={}, sampler={}, skip={}",
                self.model.id,
                self.model.meta.grid.describe(),
                self.model.meta.lead_hours,
                s.members,
                s.samples,
                s.sampler,
                self.skip.len()
            ),
        }
    }
}

/// Metrics of the operator (visible in `EXPLAIN ANALYZE`).
#[derive(Debug, Clone)]
struct ForecastMetrics {
    baseline: BaselineMetrics,
    sampling_time: Time,
    steps_forecast: Count,
    steps_skipped: Count,
}

impl ExecutionPlan for HyperdmExec {
    fn name(&self) -> &str {
        "HyperdmExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    // From the partitions asked for, not from the input: the optimiser asks
    // this of the operator over an input stripped of its repartitioning.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let time = self.input.schema().index_of(crate::schema::VALID_TIME);
        match time {
            Ok(i) if self.step_partitions > 1 => {
                vec![Distribution::KeyPartitioned(vec![Arc::new(Column::new(
                    crate::schema::VALID_TIME,
                    i,
                ))])]
            }
            _ => vec![Distribution::SinglePartition],
        }
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "HyperdmExec has one child".into(),
            ));
        }
        let input = children.remove(0);
        Ok(Arc::new(Self::over(
            input,
            self.model.clone(),
            self.settings,
            self.skip.clone(),
            self.step_partitions,
        )?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let metrics = ForecastMetrics {
            baseline: BaselineMetrics::new(&self.metrics, partition),
            sampling_time: MetricBuilder::new(&self.metrics)
                .subset_time("sampling_time", partition),
            steps_forecast: MetricBuilder::new(&self.metrics).counter("steps_forecast", partition),
            steps_skipped: MetricBuilder::new(&self.metrics).counter("steps_skipped", partition),
        };
        let model = self.model.clone();
        let settings = self.settings;
        let skip = self.skip.clone();
        let schema = self.schema.clone();
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 1);
        let tx = builder.tx();
        builder.spawn(async move {
            let mut assembler = StepAssembler::new(model.meta.grid.clone());
            // elapsed_compute is the operator's own work: assembling steps,
            // sampling and building batches, not waiting on its input or
            // its consumer. sampling_time is the part spent sampling.
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let steps = {
                    let _compute = metrics.baseline.elapsed_compute().timer();
                    assembler.push(&batch)?
                };
                for step in steps {
                    if skip.contains(&step.time) {
                        metrics.steps_skipped.add(1);
                        continue;
                    }
                    let compute = metrics.baseline.elapsed_compute().timer();
                    let timer = metrics.sampling_time.timer();
                    let m = model.clone();
                    let (step, forecast) = tokio::task::spawn_blocking(move || {
                        let f = m.forecast(&step, &settings);
                        (step, f)
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    drop(timer);
                    let batch = output_batch(&schema, &model, &step, &forecast?)?;
                    compute.done();
                    metrics.steps_forecast.add(1);
                    let batch = batch.record_output(&metrics.baseline);
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(()); // the consumer stopped (LIMIT or cancel)
                    }
                }
            }
            assembler.finish()?;
            Ok(())
        });
        Ok(builder.build())
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One step's rows, in the model grid's order.
fn output_batch(
    schema: &SchemaRef,
    model: &ForecastModel,
    step: &StepField,
    forecast: &StepForecast,
) -> Result<RecordBatch> {
    let grid = &model.meta.grid;
    let cells = grid.cells();
    let time = |t: i64| {
        Arc::new(TimestampMicrosecondArray::from_value(t, cells).with_timezone("UTC")) as ArrayRef
    };
    let lat = grid
        .latitude
        .iter()
        .flat_map(|&y| std::iter::repeat_n(y, grid.cols()));
    let lon = (0..grid.rows()).flat_map(|_| grid.longitude.iter().copied());
    let f32s = |v: &[f32]| Arc::new(Float32Array::from(v.to_vec())) as ArrayRef;
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            time(step.time),
            time(forecast.valid_time),
            Arc::new(Float64Array::from_iter_values(lat)),
            Arc::new(Float64Array::from_iter_values(lon)),
            f32s(&step.values),
            f32s(&forecast.mean),
            f32s(&forecast.au),
            f32s(&forecast.eu),
        ],
    )?)
}
