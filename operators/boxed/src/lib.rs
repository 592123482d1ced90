//! DataFusion's planning and query calls, each behind a boxed future.
//!
//! A crate compiled at `opt-level = 3` does not share generic code with its
//! dependencies, and awaiting one of DataFusion's `async fn`s copies that
//! function's body, and every generic function under it (the whole SQL
//! planner, instantiated for DataFusion's context provider), into the awaiting
//! crate, to be optimised again there. `uqcast-forecast` awaited SQL planning
//! this way: without that one call its LLVM IR was 76 MB instead of 198, and
//! its clean build took 244 s of CPU at opt-level 3 against 23 s at opt-level
//! 1, which shares generic code (docs/build-profiles.md).
//!
//! This crate stays at opt-level 0 (which shares generic code), so each body
//! is compiled here once, and an optimised crate only polls a
//! `Pin<Box<dyn Future>>`. The optimised crates' own loops are unaffected:
//! the calls below plan queries and collect results, once per query.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

/// `state.create_logical_plan(sql)`.
pub fn logical_plan<'a>(
    state: &'a SessionState,
    sql: &'a str,
) -> BoxFuture<'a, Result<LogicalPlan>> {
    Box::pin(state.create_logical_plan(sql))
}

/// `state.create_physical_plan(plan)`.
pub fn physical_plan<'a>(
    state: &'a SessionState,
    plan: &'a LogicalPlan,
) -> BoxFuture<'a, Result<Arc<dyn ExecutionPlan>>> {
    Box::pin(state.create_physical_plan(plan))
}

/// Runs `sql` in `ctx` and collects its batches (`ctx.sql(sql)` then
/// `collect`), for the optimised crates' tests.
pub fn collect<'a>(
    ctx: &'a SessionContext,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<RecordBatch>>> {
    Box::pin(async move { ctx.sql(sql).await?.collect().await })
}

/// The physical plan of `sql` in `ctx`, for tests that inspect a plan's
/// metrics after running it with [`execute`].
pub fn plan_of<'a>(
    ctx: &'a SessionContext,
    sql: &'a str,
) -> BoxFuture<'a, Result<Arc<dyn ExecutionPlan>>> {
    Box::pin(async move { ctx.sql(sql).await?.create_physical_plan().await })
}

/// Runs `plan` in `ctx` and collects its batches.
pub fn execute(
    plan: Arc<dyn ExecutionPlan>,
    ctx: &SessionContext,
) -> BoxFuture<'_, Result<Vec<RecordBatch>>> {
    Box::pin(datafusion::physical_plan::collect(plan, ctx.task_ctx()))
}
