//! A scan's steps as an in-memory input, for a distributed scheduler.
//!
//! A scheduler that hands each task only its share of a scan's partitions
//! must be able to cut the scan down to them. Ballista 55 can do that for
//! in-memory tables, not for a scan it does not know. So on a cluster a
//! `NetcdfExec` carries its partitions' step times as such a table (one
//! batch per partition) and takes its partitions from it whenever its input
//! is replaced: the scheduler cuts the table, the scan follows. Beside each
//! step's time the table holds how many steps of that step's file the whole
//! scan reads, which a task's share no longer shows (a partial copy is
//! worth making only of a file the query reads little of). The input is
//! never executed.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog::Step;

const STEP_TIME: &str = "step_time";
const FILE_STEPS: &str = "file_steps_in_scan";

/// One partition per scan partition, holding its steps' times (UTC µs)
/// and how many steps of each one's file the scan reads (`file_steps`, by
/// catalog file).
pub fn plan_of(partitions: &[Vec<Step>], file_steps: &[usize]) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(STEP_TIME, DataType::Int64, false),
        Field::new(FILE_STEPS, DataType::Int64, false),
    ]));
    let batches = partitions
        .iter()
        .map(|steps| {
            let times = Int64Array::from_iter_values(steps.iter().map(|s| s.time));
            let counts = Int64Array::from_iter_values(
                steps
                    .iter()
                    .map(|s| file_steps.get(s.file).map_or(0, |&n| n as i64)),
            );
            RecordBatch::try_new(schema.clone(), vec![Arc::new(times), Arc::new(counts)])
                .map(|b| vec![b])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(MemorySourceConfig::try_new_exec(&batches, schema, None)?)
}

/// The step times of each partition of `plan`, an input made by
/// [`plan_of`], possibly cut down and wrapped in one-input operators.
pub fn times_of(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<Vec<i64>>> {
    column_of(plan, STEP_TIME)
}

/// For each step [`times_of`] lists, how many steps of its file the whole
/// scan reads.
pub fn file_steps_of(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<Vec<i64>>> {
    column_of(plan, FILE_STEPS)
}

fn column_of(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Result<Vec<Vec<i64>>> {
    let mut node = plan.clone();
    loop {
        if let Some(memory) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<MemorySourceConfig>())
        {
            return memory
                .partitions()
                .iter()
                .map(|batches| {
                    let mut times = Vec::new();
                    for batch in batches {
                        let column = batch.column_by_name(name).ok_or_else(|| {
                            DataFusionError::Internal(format!(
                                "NetcdfExec's steps input has no {name} column"
                            ))
                        })?;
                        times.extend(column.as_primitive::<Int64Type>().values().iter().copied());
                    }
                    Ok(times)
                })
                .collect();
        }
        let children = node.children();
        let [only] = children.as_slice() else {
            return Err(DataFusionError::Internal(format!(
                "NetcdfExec's steps input must be an in-memory table, got {}",
                plan.name()
            )));
        };
        let next = Arc::clone(only);
        node = next;
    }
}
