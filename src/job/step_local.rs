//! Whether a source query is step-local: each step's rows come from the
//! input rows of that step alone, and keep its time. Then a changed input
//! file can change only the steps it holds, and the recheck reads only
//! those ([`super::recheck_ledger`]); otherwise (a window function over
//! time, a join, a limit) a change anywhere may change any step, and the
//! whole window is read.
//!
//! Decided on the query's logical plan, conservatively: only the shapes
//! below pass; anything else is taken as not step-local.

use std::collections::HashSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};
use datafusion::prelude::SessionContext;

/// The time column of the source table and of the query's rows.
const TIME: &str = "valid_time";

/// Whether `sql`, planned in `ctx` over the table `table`, is step-local.
/// A query that does not plan is not (the run then says why, as before).
pub async fn is_step_local(ctx: &SessionContext, sql: &str, table: &str) -> bool {
    match ctx.state().create_logical_plan(sql).await {
        Ok(plan) => plan_is_step_local(&plan, table),
        Err(_) => false,
    }
}

fn plan_is_step_local(plan: &LogicalPlan, table: &str) -> bool {
    let mut local = true;
    let _ = plan.apply(|node| {
        local = node_is_step_local(node, table);
        Ok(if local {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    local
}

fn node_is_step_local(node: &LogicalPlan, table: &str) -> bool {
    let mut has_subquery = false;
    let _ = node.apply_subqueries(|_| {
        has_subquery = true;
        Ok(TreeNodeRecursion::Stop)
    });
    if has_subquery {
        return false;
    }
    match node {
        // Row by row; the time passed on unchanged.
        LogicalPlan::Projection(p) => {
            let Some(i) = p.schema.fields().iter().position(|f| f.name() == TIME) else {
                return false;
            };
            is_time_column(&p.expr[i])
        }
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => true,
        LogicalPlan::Sort(s) => s.fetch.is_none(),
        LogicalPlan::Distinct(Distinct::All(_)) => true,
        // Groups within a step: the time is one of the keys.
        LogicalPlan::Aggregate(a) => a.group_expr.iter().any(is_time_column),
        LogicalPlan::TableScan(scan) => scan.table_name.table() == table && scan.fetch.is_none(),
        _ => false,
    }
}

/// Whether `sql` is step-local and returns every step of the table (or
/// none): its rows are dropped only by conditions on the cells' latitude
/// and longitude, which are the same in every step. Then the steps it
/// returns are the table's, known from a NetCDF catalog without a read.
/// Any condition on time or on the values (`WHERE t2m > 200`, `HAVING`),
/// or a coordinate column made from anything but coordinates, refuses.
pub async fn keeps_every_step(ctx: &SessionContext, sql: &str, table: &str) -> bool {
    match ctx.state().create_logical_plan(sql).await {
        Ok(plan) => plan_is_step_local(&plan, table) && coordinate_columns(&plan).is_some(),
        Err(_) => false,
    }
}

/// The columns of `plan`'s rows made from the cells' coordinates alone,
/// or `None` where a condition names another (a step-local plan's nodes).
fn coordinate_columns(plan: &LogicalPlan) -> Option<HashSet<String>> {
    let inputs = plan.inputs();
    let below = match inputs.as_slice() {
        [] => ["latitude", "longitude"].map(String::from).into(),
        [input] => coordinate_columns(input)?,
        _ => return None,
    };
    let of_coordinates = |e: &Expr| e.column_refs().iter().all(|c| below.contains(&c.name));
    // Output column i of a projection or an aggregate is made by expr i.
    let made_of_coordinates = |exprs: Vec<&Expr>| {
        let names = plan.schema().fields().iter().map(|f| f.name().clone());
        names
            .zip(exprs)
            .filter(|(_, e)| of_coordinates(e))
            .map(|(name, _)| name)
            .collect()
    };
    match plan {
        LogicalPlan::Filter(f) => of_coordinates(&f.predicate).then_some(below),
        LogicalPlan::Projection(p) => Some(made_of_coordinates(p.expr.iter().collect())),
        // Aggregates are not coordinates, even of coordinates alone.
        LogicalPlan::Aggregate(a) => Some(made_of_coordinates(a.group_expr.iter().collect())),
        _ => Some(below),
    }
}

fn is_time_column(expr: &Expr) -> bool {
    matches!(expr.clone().unalias(), Expr::Column(c) if c.name == TIME)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::datasource::MemTable;

    use super::*;

    /// A session with empty tables `era5` and `other` of the source's columns.
    fn session() -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                TIME,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("latitude", DataType::Float64, false),
            Field::new("longitude", DataType::Float64, false),
            Field::new("t2m", DataType::Float32, true),
        ]));
        let ctx = SessionContext::new();
        for name in ["era5", "other"] {
            let table = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        ctx
    }

    async fn verdict(sql: &str) -> bool {
        is_step_local(&session(), sql, "era5").await
    }

    #[tokio::test]
    async fn row_by_row_queries_and_groups_within_a_step_are_step_local() {
        for sql in [
            include_str!("../../pipelines/era5_na_1deg.sql"),
            "SELECT * FROM era5",
            "SELECT valid_time, latitude, longitude, t2m - 273.15 AS t2m FROM era5 \
             WHERE latitude > 10 ORDER BY latitude",
            "SELECT * FROM (SELECT * FROM era5 WHERE t2m > 200) AS warm",
            "SELECT valid_time, round(latitude) AS latitude, round(longitude) AS longitude, \
             avg(t2m) AS t2m FROM era5 GROUP BY valid_time, round(latitude), round(longitude)",
            "SELECT DISTINCT valid_time, latitude, longitude, t2m FROM era5",
        ] {
            assert!(verdict(sql).await, "{sql}");
        }
    }

    async fn every_step(sql: &str) -> bool {
        keeps_every_step(&session(), sql, "era5").await
    }

    #[tokio::test]
    async fn queries_that_drop_cells_by_their_coordinates_alone_keep_every_step() {
        for sql in [
            include_str!("../../pipelines/era5_na_1deg.sql"),
            "SELECT * FROM era5",
            "SELECT valid_time, round(latitude) AS latitude, round(longitude) AS longitude, \
             avg(t2m) AS t2m FROM era5 WHERE longitude % 2 = 0 \
             GROUP BY valid_time, round(latitude), round(longitude)",
            "SELECT * FROM (SELECT * FROM era5 WHERE latitude > 10) AS north \
             WHERE longitude < 300",
        ] {
            assert!(every_step(sql).await, "{sql}");
        }
        for sql in [
            // A condition on time or on the values may drop a step.
            "SELECT * FROM era5 WHERE valid_time >= '2020-03-01T00:00:00Z'",
            "SELECT * FROM era5 WHERE extract(hour FROM valid_time) = 0",
            "SELECT * FROM era5 WHERE t2m > 200",
            "SELECT valid_time, latitude, longitude, avg(t2m) AS t2m FROM era5 \
             GROUP BY valid_time, latitude, longitude HAVING avg(t2m) > 200",
            // A coordinate column made from the values, then a condition on it.
            "SELECT * FROM (SELECT valid_time, t2m AS latitude, longitude, t2m FROM era5) \
             AS moved WHERE latitude > 250",
            // Not step-local.
            "SELECT * FROM era5 WHERE latitude > 10 LIMIT 5",
        ] {
            assert!(!every_step(sql).await, "{sql}");
        }
    }

    #[tokio::test]
    async fn queries_that_mix_steps_or_move_time_are_not() {
        for sql in [
            // A value from other steps.
            "SELECT valid_time, latitude, longitude, \
             t2m - avg(t2m) OVER (PARTITION BY latitude, longitude) AS t2m FROM era5",
            "SELECT e.valid_time, e.latitude, e.longitude, e.t2m - o.t2m AS t2m \
             FROM era5 e JOIN other o ON e.latitude = o.latitude AND e.longitude = o.longitude",
            "SELECT * FROM era5 WHERE t2m > (SELECT avg(t2m) FROM era5)",
            "SELECT * FROM era5 LIMIT 10",
            "SELECT * FROM era5 UNION ALL SELECT * FROM other",
            // Rows moved to another time.
            "SELECT valid_time + INTERVAL '6 hours' AS valid_time, latitude, longitude, t2m \
             FROM era5",
            "SELECT max(valid_time) AS valid_time, latitude, longitude, avg(t2m) AS t2m \
             FROM era5 GROUP BY latitude, longitude",
            // Another table's rows.
            "SELECT * FROM other",
            "SELECT * FROM no_such_table",
        ] {
            assert!(!verdict(sql).await, "{sql}");
        }
    }
}
