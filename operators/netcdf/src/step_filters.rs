//! Filters on `valid_time` alone that the scan's constraints
//! (`crate::pushdown`) do not read as bounds or lists:
//! `date_trunc('month', valid_time) = …`, `EXTRACT(MONTH FROM valid_time)
//! IN (12, 1, 2)`, `date_part('hour', valid_time) = 12`. Every row of a
//! step has the step's time, so such a filter keeps a step whole or leaves
//! it out: the scan evaluates it once per step, on the catalog's times,
//! while it is planned, and reads only the steps it keeps. Without this,
//! every step of every file would be read and decoded for DataFusion's
//! own filter to drop most of them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;

use crate::schema::VALID_TIME;

/// Whether `filter` names no column but `valid_time` (at least once) and
/// gives the same answer for the same time whenever it is evaluated: no
/// volatile function, subquery, placeholder or outer column.
pub fn on_step_time(filter: &Expr) -> bool {
    let columns = filter.column_refs();
    let only_time = !columns.is_empty() && columns.iter().all(|c| c.name == VALID_TIME);
    let unsettled = filter
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::Placeholder(_)
                    | Expr::OuterReferenceColumn(..)
                    | Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
            ))
        })
        .unwrap_or(true);
    only_time && !unsettled && !filter.is_volatile()
}

/// The `times` (UTC microseconds) `filter` keeps, as nanoseconds: those
/// for which it is true (not false or null, as `WHERE` keeps rows).
/// `time_type` is the table's `valid_time` type.
pub fn times_kept(
    session: &dyn Session,
    filter: &Expr,
    time_type: &DataType,
    times: &[i64],
) -> Result<Vec<i128>> {
    // The filter names the table's column as the query qualified it; the
    // batch it is evaluated on is the column alone.
    let unqualified = filter
        .clone()
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                c.name,
            )))),
            e => Ok(Transformed::no(e)),
        })?
        .data;
    let schema = Arc::new(Schema::new(vec![Field::new(
        VALID_TIME,
        time_type.clone(),
        false,
    )]));
    let micros = TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC");
    let column = cast(&micros, time_type)?;
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column])?;
    let predicate =
        session.create_physical_expr(unqualified, &DFSchema::try_from(schema.as_ref().clone())?)?;
    let kept = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
    let Some(kept) = kept.as_boolean_opt() else {
        return plan_err!("filter {filter} on {VALID_TIME} is not true or false");
    };
    Ok(times
        .iter()
        .enumerate()
        .filter(|&(i, _)| kept.is_valid(i) && kept.value(i))
        .map(|(_, &t)| i128::from(t) * 1_000)
        .collect())
}

#[cfg(test)]
mod tests {
    use datafusion::common::ScalarValue;
    use datafusion::functions::expr_fn::{date_part, date_trunc, random};
    use datafusion::logical_expr::{TableProviderFilterPushDown, col, lit, placeholder};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::pushdown::support;
    use crate::schema::{LATITUDE, time_type};

    fn vt() -> Expr {
        col(VALID_TIME)
    }

    /// `2020-MM-DDTHH:00Z` in microseconds.
    fn at(month: u32, day: u32, hour: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(2020, month, day)
            .and_then(|d| d.and_hms_opt(hour, 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
            .expect("a valid date")
    }

    fn ts(micros: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(micros),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn filters_on_the_time_alone_are_applied_by_the_scan() {
        let month = date_trunc(lit("month"), vt()).eq(ts(at(2, 1, 0)));
        let winter = date_part(lit("month"), vt()).in_list(vec![lit(12), lit(1), lit(2)], false);
        let noon_on_the_first = date_part(lit("hour"), vt())
            .eq(lit(12))
            .and(date_part(lit("day"), vt()).eq(lit(1)));
        for f in [month, winter, noon_on_the_first] {
            assert!(on_step_time(&f), "{f}");
            assert_eq!(support(&f), TableProviderFilterPushDown::Exact, "{f}");
        }
        // Another column, no column, a volatile function, a placeholder:
        // left to DataFusion.
        for f in [
            date_part(lit("month"), vt()).eq(col(LATITUDE)),
            lit(true),
            date_part(lit("month"), vt()).eq(random()),
            date_part(lit("month"), vt()).eq(placeholder("$1")),
        ] {
            assert!(!on_step_time(&f), "{f}");
            assert_eq!(support(&f), TableProviderFilterPushDown::Unsupported, "{f}");
        }
    }

    #[test]
    fn a_step_is_kept_where_its_filter_is_true() {
        let state = SessionContext::new().state();
        let times = [
            at(1, 31, 12),
            at(1, 31, 18),
            at(2, 1, 0),
            at(2, 1, 6),
            at(2, 29, 18),
            at(3, 1, 0),
        ];
        let nanos = |ts: &[i64]| {
            ts.iter()
                .map(|&t| i128::from(t) * 1_000)
                .collect::<Vec<_>>()
        };
        let kept = |f: Expr| times_kept(&state, &f, &time_type(), &times).unwrap();

        let february = date_trunc(lit("month"), col("era5.valid_time")).eq(ts(at(2, 1, 0)));
        assert_eq!(kept(february), nanos(&times[2..5]));
        let evening = date_part(lit("hour"), vt()).gt_eq(lit(18));
        assert_eq!(kept(evening), nanos(&[times[1], times[4]]));
        // Null is not true: the step is left out.
        let six_or_null = date_part(lit("hour"), vt())
            .eq(lit(6))
            .or(lit(ScalarValue::Boolean(None)));
        assert_eq!(kept(six_or_null), nanos(&[times[3]]));
        let none = vt().lt(ts(at(1, 1, 0)));
        assert_eq!(kept(none), Vec::<i128>::new());
    }
}
