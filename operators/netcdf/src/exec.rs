//! `NetcdfExec`: the physical scan of an ERA5 NetCDF table.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, ScalarValue, Statistics};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, StatisticsArgs,
};
use futures::TryStreamExt;

use crate::catalog::{Catalog, Step};
use crate::copies::LocalCopies;
use crate::names::FileNames;
use crate::pushdown::Selection;
use crate::reader::Hyperslab;
use crate::stream::{PartitionScan, ScanMetrics};

/// Scans ERA5 NetCDF files one step at a time.
///
/// ```text
/// files ──(catalog: steps by time)──► partition i: steps[i] ──spawn_blocking──►
///   per step: open file once · read hyperslab (libnetcdf lock) · unpack/fill→NULL
///   ──bounded channel (1)──► RecordBatch (one step, file's lat/lon order)
/// ```
///
/// Pushed down: the projection (unprojected variables are never read), exact
/// filters on `valid_time` (steps skipped) and on `latitude`/`longitude` (only
/// the hyperslab is read), and `LIMIT` (only the steps needed).
#[derive(Debug)]
pub struct NetcdfExec {
    catalog: Arc<Catalog>,
    schema: SchemaRef,
    projection: Vec<usize>,
    selection: Selection,
    slab: Hyperslab,
    partitions: Vec<Vec<Step>>,
    /// The partitions' steps as an in-memory input, on a cluster
    /// (`crate::steps_input`); `None`: a leaf.
    steps_input: Option<Arc<dyn ExecutionPlan>>,
    /// How many steps of each file the whole scan reads, where this is a
    /// task's share of it (from the steps input); `None`: all of it.
    file_steps_in_scan: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl NetcdfExec {
    /// Plans the scan: chooses steps and hyperslab, splits steps into at most
    /// `target_partitions` contiguous, time-ordered runs.
    pub fn new(
        catalog: Arc<Catalog>,
        full_schema: SchemaRef,
        projection: Option<&Vec<usize>>,
        selection: Selection,
        limit: Option<usize>,
        target_partitions: usize,
    ) -> Result<Self> {
        let projection: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..full_schema.fields().len()).collect());
        let schema = Arc::new(full_schema.project(&projection)?);
        let slab = Hyperslab {
            latitude: selection.latitude.index_range(&catalog.latitude().values),
            longitude: selection.longitude.index_range(&catalog.longitude().values),
        };
        let mut steps: Vec<Step> = if slab.cells() == 0 {
            vec![]
        } else {
            catalog
                .steps
                .iter()
                .copied()
                .filter(|s| selection.time_contains_micros(s.time))
                .collect()
        };
        if let Some(limit) = limit {
            steps.truncate(limit.div_ceil(slab.cells().max(1)));
        }
        let n = target_partitions.clamp(1, steps.len().max(1));
        let partitions: Vec<Vec<Step>> = (0..n)
            .map(|i| steps[i * steps.len() / n..(i + 1) * steps.len() / n].to_vec())
            .collect();
        Ok(Self::from_parts(
            catalog, schema, projection, selection, slab, partitions,
        ))
    }

    /// A scan whose steps and partitions are already chosen (by [`Self::new`],
    /// or in another process: see [`crate::spec`]).
    pub(crate) fn from_parts(
        catalog: Arc<Catalog>,
        schema: SchemaRef,
        projection: Vec<usize>,
        selection: Selection,
        slab: Hyperslab,
        partitions: Vec<Vec<Step>>,
    ) -> Self {
        let properties = Arc::new(Self::compute_properties(&schema, partitions.len(), true));
        Self {
            catalog,
            schema,
            projection,
            selection,
            slab,
            partitions,
            steps_input: None,
            file_steps_in_scan: None,
            properties,
            metrics: Default::default(),
        }
    }

    /// The same scan, carrying its steps as an input a distributed
    /// scheduler can cut to each task's partitions (see `crate::steps_input`).
    pub fn with_steps_input(&self) -> Result<Self> {
        self.over_steps(crate::steps_input::plan_of(
            &self.partitions,
            &self.steps_per_file(),
        )?)
    }

    /// The scan of the steps `input` lists, partition by partition.
    pub fn over_steps(&self, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let times = crate::steps_input::times_of(&input)?;
        let partitions = self.catalog.steps_at(&times).map_err(|t| {
            DataFusionError::Internal(format!(
                "NetcdfExec: step {} is not in the table's files",
                crate::cf::time::format_micros(t)
            ))
        })?;
        let mut scan = Self::from_parts(
            self.catalog.clone(),
            self.schema.clone(),
            self.projection.clone(),
            self.selection.clone(),
            self.slab.clone(),
            partitions,
        );
        // Its steps as an input: a scan for a cluster. Ballista's shuffles
        // do not keep the order a sort-preserving repartition promises, so
        // a plan relying on this scan's order would merge unsorted
        // partitions (ORDER BY out of order). Declaring none makes
        // DataFusion sort where order is needed.
        scan.properties = Arc::new(Self::compute_properties(
            &scan.schema,
            scan.partitions.len(),
            false,
        ));
        let mut in_scan = vec![0; scan.catalog.files.len()];
        let counts = crate::steps_input::file_steps_of(&input)?;
        for (step, count) in scan
            .partitions
            .iter()
            .flatten()
            .zip(counts.iter().flatten())
        {
            in_scan[step.file] = usize::try_from(*count).unwrap_or(usize::MAX);
        }
        scan.file_steps_in_scan = Some(in_scan);
        scan.steps_input = Some(input);
        Ok(scan)
    }

    /// Each partition emits its steps in time order, so it is sorted by
    /// `valid_time`; declared only where the plan runs in one process.
    fn compute_properties(schema: &SchemaRef, partitions: usize, ordered: bool) -> PlanProperties {
        let valid_time = schema.index_of(crate::schema::VALID_TIME).ok();
        let orderings = valid_time.filter(|_| ordered).map(|i| {
            vec![PhysicalSortExpr::new_default(Arc::new(Column::new(
                crate::schema::VALID_TIME,
                i,
            )))]
        });
        PlanProperties::new(
            EquivalenceProperties::new_with_orderings(schema.clone(), orderings),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
    }

    /// What the scan was planned as: catalog, projection, selection,
    /// hyperslab and steps per partition.
    pub(crate) fn parts(&self) -> (&Catalog, &[usize], &Selection, &Hyperslab, &[Vec<Step>]) {
        (
            &self.catalog,
            &self.projection,
            &self.selection,
            &self.slab,
            &self.partitions,
        )
    }

    /// Steps this scan reads, over all partitions.
    pub fn step_count(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }

    /// How many steps the whole scan (every partition, every task's share
    /// of it) reads from each file.
    fn steps_per_file(&self) -> Vec<usize> {
        if let Some(in_scan) = &self.file_steps_in_scan {
            return in_scan.clone();
        }
        let mut counts = vec![0; self.catalog.files.len()];
        for step in self.partitions.iter().flatten() {
            counts[step.file] += 1;
        }
        counts
    }

    fn statistics_for(&self, steps: &[Step]) -> Statistics {
        let cells = self.slab.cells();
        let lat = &self.catalog.latitude().values[self.slab.latitude.clone()];
        let lon = &self.catalog.longitude().values[self.slab.longitude.clone()];
        let range = |v: &[f64]| -> (Precision<ScalarValue>, Precision<ScalarValue>) {
            let lo = v.iter().copied().reduce(f64::min);
            let hi = v.iter().copied().reduce(f64::max);
            let p = |x: Option<f64>| {
                x.map_or(Precision::Absent, |x| {
                    Precision::Exact(ScalarValue::Float64(Some(x)))
                })
            };
            (p(lo), p(hi))
        };
        let time = |t: Option<&Step>| {
            t.map_or(Precision::Absent, |s| {
                Precision::Exact(ScalarValue::TimestampMicrosecond(
                    Some(s.time),
                    Some("UTC".into()),
                ))
            })
        };
        let mut stats = Statistics::new_unknown(&self.schema)
            .with_num_rows(Precision::Exact(steps.len() * cells));
        for (out, &index) in self.projection.iter().enumerate() {
            let column = &mut stats.column_statistics[out];
            let (min, max) = match index {
                0 => (time(steps.first()), time(steps.last())),
                1 => range(lat),
                2 => range(lon),
                _ => continue,
            };
            *column = ColumnStatistics {
                null_count: Precision::Exact(0),
                min_value: min,
                max_value: max,
                ..ColumnStatistics::new_unknown()
            };
        }
        stats
    }
}

impl DisplayAs for NetcdfExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let (ny, nx) = (
            self.catalog.latitude().values.len(),
            self.catalog.longitude().values.len(),
        );
        let pushed = self.selection.to_string();
        match t {
            DisplayFormatType::TreeRender => {
                writeln!(f, "files={}", self.catalog.files.len())?;
                writeln!(
                    f,
                    "steps={}/{}",
                    self.step_count(),
                    self.catalog.steps.len()
                )?;
                writeln!(f, "projection=[{}]", names.join(", "))?;
                if !pushed.is_empty() {
                    writeln!(f, "pushed={pushed}")?;
                }
                Ok(())
            }
            _ => {
                write!(
                    f,
                    "NetcdfExec: files={}, steps={}/{}, projection=[{}], hyperslab=lat[{}..{}]/{ny} lon[{}..{}]/{nx}",
                    self.catalog.files.len(),
                    self.step_count(),
                    self.catalog.steps.len(),
                    names.join(", "),
                    self.slab.latitude.start,
                    self.slab.latitude.end,
                    self.slab.longitude.start,
                    self.slab.longitude.end,
                )?;
                if !pushed.is_empty() {
                    write!(f, ", pushed=[{pushed}]")?;
                }
                Ok(())
            }
        }
    }
}

impl ExecutionPlan for NetcdfExec {
    fn name(&self) -> &str {
        "NetcdfExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.steps_input.iter().collect()
    }

    // The steps input only lists steps: repartitioning it would hide them.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.children().len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            // A new steps input (a task's share): the partitions follow it.
            Ok([input]) if self.steps_input.is_some() => Ok(Arc::new(self.over_steps(input)?)),
            _ => Ok(self),
        }
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
        if !self.catalog.opened {
            return Err(DataFusionError::Internal(
                "NetcdfExec: this scan was planned from the table's headers, without its files; \
                 it is read where it is rebuilt from its spec"
                    .into(),
            ));
        }
        let steps = self
            .partitions
            .get(partition)
            .ok_or_else(|| {
                DataFusionError::Internal(format!("NetcdfExec has no partition {partition}"))
            })?
            .clone();
        let scan = PartitionScan {
            catalog: self.catalog.clone(),
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            slab: self.slab.clone(),
            steps,
            copies: context
                .session_config()
                .get_extension::<LocalCopies>()
                .map(|c| (c.as_ref().clone(), self.steps_per_file())),
            metrics: ScanMetrics {
                baseline: BaselineMetrics::new(&self.metrics, partition),
                read_time: MetricBuilder::new(&self.metrics)
                    .subset_time("netcdf_read_time", partition),
                steps_read: MetricBuilder::new(&self.metrics).counter("steps_read", partition),
            },
        };
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 1);
        let tx = builder.tx();
        builder.spawn_blocking(move || scan.run(tx));
        let stream = builder.build();
        match context.session_config().get_extension::<FileNames>() {
            None => Ok(stream),
            Some(names) => Ok(Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                stream.map_err(move |e| names.apply(e)),
            ))),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _inputs: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let stats = match args.partition() {
            Some(p) => self.statistics_for(
                self.partitions
                    .get(p)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            ),
            None => self.statistics_for(&self.partitions.concat()),
        };
        Ok(Arc::new(stats))
    }

    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}
