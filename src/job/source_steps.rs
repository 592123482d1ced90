//! The steps the source table holds, from its NetCDF catalog (each file's
//! times, read when the table was registered): which steps a changed file
//! holds ([`super::recheck_ledger`]), and which steps are still to forecast
//! ([`narrowed`]).

use std::collections::{BTreeMap, BTreeSet};

use datafusion::prelude::SessionContext;
use uqcast_netcdf::{Catalog, Era5TableProvider, TimesLeftOut};

/// The SQL function, true for a step not yet forecast, that [`narrowed`]
/// registers for a run.
pub const NOT_FORECAST: &str = "uqcast_not_forecast";

/// `f` of the catalog of the table `era5` of `ctx`, if it is a NetCDF table.
async fn with_catalog<T>(ctx: &SessionContext, f: impl FnOnce(&Catalog) -> T) -> Option<T> {
    let provider = ctx.table_provider("era5").await.ok()?;
    let table = provider.downcast_ref::<Era5TableProvider>()?;
    Some(f(table.catalog()))
}

/// Every step the table `era5` of `ctx` holds, if it is a NetCDF table.
pub async fn table_steps(ctx: &SessionContext) -> Option<BTreeSet<i64>> {
    with_catalog(ctx, |catalog| {
        catalog.steps.iter().map(|s| s.time).collect()
    })
    .await
}

/// The initial times the files `names` (paths, or `s3://` URLs) hold;
/// `None` where the table is not NetCDF or a file is not in it.
pub async fn held_by(ctx: &SessionContext, names: &[&String]) -> Option<BTreeSet<i64>> {
    with_catalog(ctx, |catalog| {
        let held: BTreeMap<String, &Vec<i64>> = catalog
            .files
            .iter()
            .map(|f| {
                let name = match crate::session::s3::origin(&f.path) {
                    Some(object) => object.url,
                    None => f.path.display().to_string(),
                };
                (name, &f.times)
            })
            .collect();
        let mut steps = BTreeSet::new();
        for name in names {
            steps.extend(held.get(*name)?.iter().copied());
        }
        Some(steps)
    })
    .await
    .flatten()
}

/// `sql` (the source query, perhaps limited by time) narrowed to the steps
/// not in `skip`: they are left out by [`NOT_FORECAST`]`(valid_time)`,
/// registered in `ctx` holding them, which plans as one node however long
/// the history (a `NOT IN` list of ten years' steps took about two seconds
/// to plan) and reaches a cluster with its times. A NetCDF scan leaves
/// those steps unread (the filter is pushed down), so a run over `s3://`
/// objects downloads only objects holding steps still to forecast.
///
/// Where the query is `step_local` over a NetCDF table, its steps are the
/// table's, so when the catalog says none is left the query is planned
/// `WHERE false`, which still plans it, so a query that no longer fits the
/// model is said on a run with nothing new, but reads nothing.
pub async fn narrowed(
    ctx: &SessionContext,
    sql: &str,
    skip: &BTreeSet<i64>,
    step_local: bool,
) -> String {
    let keep = |condition: String| format!("SELECT * FROM ({sql}) AS unforecast WHERE {condition}");
    if skip.is_empty() {
        return sql.to_string();
    }
    let none_left = |c: &Catalog| c.steps.iter().all(|s| skip.contains(&s.time));
    if step_local && with_catalog(ctx, none_left).await == Some(true) {
        return keep("false".into());
    }
    ctx.register_udf(TimesLeftOut::udf(NOT_FORECAST, skip.iter().copied()));
    keep(format!("{NOT_FORECAST}(valid_time)"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMicrosecondType;
    use uqcast_netcdf::{Encoding, Grid, GridVariable, write_era5};

    use super::*;

    const HOUR: i64 = 3_600_000_000;
    /// 2021-01-01T00:00Z in microseconds.
    const START: i64 = 1_609_459_200_000_000;

    /// Steps `first`, `first + 1`, … (`n` of them) of a 2 × 3 grid.
    fn write_steps(path: &Path, first: i64, n: i64) {
        let times: Vec<i64> = (first..first + n).map(|k| START + k * 6 * HOUR).collect();
        let values = (0..n * 6).map(|i| 270.0 + i as f32).collect();
        let grid = Grid {
            latitude: vec![45.0, 44.0],
            longitude: vec![260.0, 261.0, 262.0],
            times,
            era5t_from: None,
        };
        let t2m = GridVariable::new("t2m", "K", "2 metre temperature", values);
        write_era5(path, Encoding::Nc3, grid, vec![t2m]).unwrap();
    }

    fn steps(ks: &[i64]) -> BTreeSet<i64> {
        ks.iter().map(|k| START + k * 6 * HOUR).collect()
    }

    async fn times_kept(ctx: &SessionContext, sql: &str) -> BTreeSet<i64> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut times = BTreeSet::new();
        for batch in &batches {
            let column = batch.column_by_name("valid_time").unwrap();
            times.extend(column.as_primitive::<TimestampMicrosecondType>().values());
        }
        times
    }

    #[tokio::test]
    async fn the_steps_forecast_are_left_out_of_the_query_and_its_scan() {
        let dir = tempfile::tempdir().unwrap();
        write_steps(&dir.path().join("a.nc"), 0, 4);
        write_steps(&dir.path().join("b.nc"), 4, 2);
        let location = dir.path().display().to_string();
        let ctx = crate::session::context_with_table("era5", location)
            .await
            .unwrap();
        let query = "SELECT * FROM era5 WHERE latitude > 44.5";
        let local = crate::job::step_local::is_step_local(&ctx, query, "era5").await;
        // Four of six forecast: the query keeps the other two steps' rows,
        // and only theirs, and its scan reads only those two.
        let left = narrowed(&ctx, query, &steps(&[0, 1, 2, 3]), local).await;
        assert!(
            left.ends_with("WHERE uqcast_not_forecast(valid_time)"),
            "{left}"
        );
        assert_eq!(times_kept(&ctx, &left).await, steps(&[4, 5]));
        assert_eq!(ctx.sql(&left).await.unwrap().count().await.unwrap(), 2 * 3);
        let plan = ctx.sql(&format!("EXPLAIN {left}")).await.unwrap();
        let plan = plan.collect().await.unwrap();
        let plan = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(plan.contains("steps=2/6"), "{plan}");
        assert!(plan.contains("pushed=[valid_time not in 4 times"), "{plan}");
        assert!(!plan.contains("FilterExec"), "{plan}");
        // All forecast (and steps the source no longer holds): nothing to do.
        let all = steps(&[0, 1, 2, 3, 4, 5, 9]);
        let none = narrowed(&ctx, query, &all, local).await;
        assert!(none.ends_with("WHERE false"), "{none}");
        assert_eq!(ctx.sql(&none).await.unwrap().count().await.unwrap(), 0);
        // A query that moves steps in time: its steps are not the table's.
        let moved = "SELECT valid_time + INTERVAL '6 hours' AS valid_time, latitude, \
                     longitude, t2m FROM era5";
        let moved_local = crate::job::step_local::is_step_local(&ctx, moved, "era5").await;
        let listed = narrowed(&ctx, moved, &all, moved_local).await;
        assert!(
            listed.ends_with("WHERE uqcast_not_forecast(valid_time)"),
            "{listed}"
        );
        // Its steps are 1 to 6: only the moved step 5 (at 6) was not
        // forecast.
        assert_eq!(times_kept(&ctx, &listed).await, steps(&[6]));

        // Which steps a file holds, by its path.
        let b = dir.path().join("b.nc").display().to_string();
        assert_eq!(held_by(&ctx, &[&b]).await, Some(steps(&[4, 5])));
        let gone = dir.path().join("c.nc").display().to_string();
        assert_eq!(held_by(&ctx, &[&b, &gone]).await, None);
    }
}
