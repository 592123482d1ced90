//! The flags of only the steps a run wrote (`flags.per_step`), merged into
//! the flags earlier runs kept, a month ([`super::flags_months`]) at a
//! time. Computing the flags again over the whole forecast table costs a
//! run time and memory in proportion to the table's history (5.4 s and
//! 1.1 GB for 40 months of 6-hourly steps at 1°; see
//! docs/forecast-job-measurements.md); a flags SQL that derives each valid
//! time's rows from that valid time's cells alone (the shipped one does)
//! gives the same rows when shown only the steps written, so a run reads
//! those steps and the kept rows of their months instead.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::prelude::SessionContext;

use super::flags::{Flags, FlagsQuery, compute, flags_schema};
use super::flags_months::month_of;
use super::output::Output;
use crate::session::TableArg;

/// Steps flagged by one query: a month of 6-hourly steps, so the exact
/// percentiles a flags SQL takes hold a month's cells at a time.
const STEPS_PER_QUERY: usize = 124;

/// The flags of one month after a run, for a month whose valid times are
/// now `steps`, of which the run wrote `written`. `kept` are the rows of
/// the month's kept file where it was made by this SQL and settings: those
/// of the steps neither written nor gone stay; the flags SQL gives the
/// others' rows over those steps alone (the steps written, and any a killed
/// run wrote without its flags), [`STEPS_PER_QUERY`] steps a query, over
/// `forecast` (a session whose table `forecast_all` is the forecast table:
/// [`Output::forecast_session`]). Every step's rows keep the order the SQL
/// gave them, and the steps are in time order.
pub async fn month(
    forecast: &(SessionContext, TableArg),
    query: &FlagsQuery,
    steps: &BTreeSet<i64>,
    written: &BTreeSet<i64>,
    mut kept: Vec<Run>,
) -> Result<Flags> {
    let (ctx, table) = forecast;
    let flagged_before: BTreeSet<i64> = kept.iter().map(|r| r.valid_time).collect();
    kept.retain(|r| steps.contains(&r.valid_time) && !written.contains(&r.valid_time));
    let to_flag: Vec<i64> = steps
        .iter()
        .copied()
        .filter(|t| written.contains(t) || !flagged_before.contains(t))
        .collect();
    for chunk in to_flag.chunks(STEPS_PER_QUERY) {
        let steps = super::store::months_select(&table.name, "*", chunk)?;
        ctx.sql(&format!("CREATE OR REPLACE VIEW forecast AS {steps}"))
            .await?;
        let fresh = compute(ctx, query).await;
        let fresh =
            crate::session::footers::naming_damaged(std::slice::from_ref(table), fresh).await?;
        for batch in &fresh.batches {
            kept.extend(runs_of(batch)?);
        }
    }
    merge(kept)
}

/// `runs` without the steps `withdrawn` (valid times), as a table: a run
/// that forecasts steps again withdraws their flags first, so that a run
/// that fails before its own flags leaves none that belong to a forecast
/// no longer there.
pub fn without(mut runs: Vec<Run>, withdrawn: &BTreeSet<i64>) -> Result<Flags> {
    runs.retain(|r| !withdrawn.contains(&r.valid_time));
    merge(runs)
}

/// The rows of the kept flags file `file` (below the flags folder), cut
/// into steps.
pub async fn kept_runs(output: &Output, file: &str) -> Result<Vec<Run>> {
    let tables = [TableArg {
        name: "kept_flags".into(),
        location: output.flags_file_location(file),
    }];
    let ctx = crate::session::new_context();
    crate::session::register_tables(&ctx, &tables).await?;
    let read = async {
        let batches = ctx.sql("SELECT * FROM kept_flags").await?.collect().await?;
        let mut runs = Vec::new();
        for batch in &batches {
            runs.extend(runs_of(batch)?);
        }
        anyhow::Ok(runs)
    }
    .await;
    crate::session::footers::naming_damaged(&tables, read)
        .await
        .context("the flags kept from earlier runs")
}

/// A flags table (the whole-table query's) cut into months, each month's
/// rows in the order the table had them.
pub fn by_month(flags: &Flags) -> Result<BTreeMap<String, Flags>> {
    let mut runs = Vec::new();
    for batch in &flags.batches {
        runs.extend(runs_of(batch)?);
    }
    runs_by_month(runs)?
        .into_iter()
        .map(|(month, runs)| Ok((month, in_order(runs)?)))
        .collect()
}

/// Steps' rows grouped by their month, each month's in the order given.
pub fn runs_by_month(runs: Vec<Run>) -> Result<BTreeMap<String, Vec<Run>>> {
    let mut months: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for run in runs {
        months
            .entry(month_of(run.valid_time)?)
            .or_default()
            .push(run);
    }
    Ok(months)
}

/// A flags table of no step, in the contract's schema.
pub fn none() -> Result<Flags> {
    merge(Vec::new())
}

/// One step's rows: a slice of a batch.
pub struct Run {
    valid_time: i64,
    rows: RecordBatch,
}

/// The runs as one table in time order. Every run stays whole and in its
/// order (the sort is stable), so a step's rows keep the order the SQL
/// gave them.
fn merge(mut runs: Vec<Run>) -> Result<Flags> {
    runs.sort_by_key(|r| r.valid_time);
    in_order(runs)
}

/// The runs as one table, in the order given.
fn in_order(runs: Vec<Run>) -> Result<Flags> {
    let schema = flags_schema()?;
    let batches = runs
        .into_iter()
        .map(|r| {
            Ok(RecordBatch::try_new(
                schema.clone(),
                r.rows.columns().to_vec(),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let tiles = batches.iter().map(RecordBatch::num_rows).sum();
    let flagged = batches
        .iter()
        .filter_map(|b| b.column_by_name("flagged")?.as_boolean_opt().cloned())
        .map(|c: BooleanArray| c.true_count())
        .sum();
    Ok(Flags {
        batches: if batches.is_empty() {
            vec![RecordBatch::new_empty(schema)]
        } else {
            batches
        },
        tiles,
        flagged,
    })
}

/// A batch cut where its valid time changes.
fn runs_of(batch: &RecordBatch) -> Result<Vec<Run>> {
    let times = batch
        .column_by_name("valid_time")
        .context("no valid_time column")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .context("valid_time is not a timestamp in microseconds")?;
    let mut runs = Vec::new();
    let mut start = 0;
    for row in 1..=times.len() {
        if row == times.len() || times.value(row) != times.value(start) {
            runs.push(Run {
                valid_time: times.value(start),
                rows: batch.slice(start, row - start),
            });
            start = row;
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, TimestampMicrosecondArray,
    };

    use super::*;

    /// Flags rows of (valid time, tile latitude, flagged), in the
    /// contract's schema.
    fn rows(cells: &[(i64, f64, bool)]) -> RecordBatch {
        let n = cells.len();
        let floats = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from(cells.iter().map(|c| c.0).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            floats(cells.iter().map(|c| c.1).collect()),
            floats(vec![0.0; n]),
            Arc::new(Int64Array::from(vec![1; n])),
            floats(vec![0.0; n]),
            floats(vec![0.0; n]),
            floats(vec![0.0; n]),
            floats(vec![0.0; n]),
            Arc::new(BooleanArray::from(
                cells.iter().map(|c| c.2).collect::<Vec<_>>(),
            )),
        ];
        RecordBatch::try_new(flags_schema().unwrap(), columns).unwrap()
    }

    fn cells(flags: &Flags) -> Vec<(i64, f64)> {
        flags
            .batches
            .iter()
            .flat_map(|b| {
                let t = b
                    .column(0)
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone();
                let lat = b
                    .column(1)
                    .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                    .clone();
                (0..b.num_rows()).map(move |i| (t.value(i), lat.value(i)))
            })
            .collect()
    }

    #[test]
    fn steps_merge_in_time_order_each_in_the_order_its_rows_came() {
        // Kept: steps 1 and 3; fresh: step 2, and step 0 after it (a SQL
        // need not order by time), rows within a step in "descending" order.
        let kept = rows(&[(1, 80.0, true), (1, 70.0, false), (3, 80.0, false)]);
        let fresh = rows(&[(2, 80.0, false), (2, 70.0, true), (0, 60.0, true)]);
        let mut runs = runs_of(&kept).unwrap();
        assert_eq!(runs.len(), 2);
        runs.extend(runs_of(&fresh).unwrap());
        let merged = merge(runs).unwrap();
        assert_eq!(
            cells(&merged),
            [
                (0, 60.0),
                (1, 80.0),
                (1, 70.0),
                (2, 80.0),
                (2, 70.0),
                (3, 80.0)
            ]
        );
        assert_eq!((merged.tiles, merged.flagged), (6, 3));
    }

    #[test]
    fn no_rows_make_an_empty_table_in_the_contracts_schema() {
        let merged = merge(Vec::new()).unwrap();
        assert_eq!((merged.tiles, merged.flagged), (0, 0));
        assert_eq!(merged.batches.len(), 1);
        assert_eq!(merged.batches[0].schema(), flags_schema().unwrap());
    }
}
