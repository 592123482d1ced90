//! A plan node an executor could not rebuild (its files differ from those
//! planned over, an object it cannot fetch, a model replaced since), stood
//! in for by one that fails with the reason when run. Ballista drops the
//! reasons of tasks an executor cannot decode, telling the client only
//! that one was rejected; a task that runs and fails has its error sent
//! back, so the client can say what went wrong, and where.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

/// Stands in for a node that could not be rebuilt, with its schema and
/// partitions, so the plan above it decodes; every partition fails.
#[derive(Debug)]
pub struct RefusedExec {
    /// The node that could not be rebuilt ("NetcdfExec", "HyperdmExec").
    node: &'static str,
    reason: String,
    properties: Arc<PlanProperties>,
}

impl RefusedExec {
    pub fn new(
        node: &'static str,
        reason: &DataFusionError,
        schema: SchemaRef,
        partitions: usize,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            node,
            reason: reason.message().into_owned(),
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for RefusedExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RefusedExec: {} could not be rebuilt: {}",
            self.node, self.reason
        )
    }
}

impl ExecutionPlan for RefusedExec {
    fn name(&self) -> &str {
        "RefusedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Err(DataFusionError::Execution(self.reason.clone()))
    }
}
