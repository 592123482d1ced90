use datafusion::logical_expr::{col, lit};

use super::*;

const DEC: i32 = 2020 * 12 + 12;

#[test]
fn a_truncated_time_bounds_the_times_it_truncates() {
    let month = |e: Expr| keys(&[e]);
    assert_eq!(
        month(trunc("month").eq(ts(at(2, 1, 0)))),
        (Some(FEB), Some(FEB))
    );
    // After February's start: the next month to start is March.
    assert_eq!(month(trunc("month").gt(ts(at(2, 1, 0)))), (Some(MAR), None));
    assert_eq!(
        month(trunc("month").gt_eq(ts(at(2, 15, 0)))),
        (Some(MAR), None)
    );
    assert_eq!(month(trunc("month").lt(ts(at(3, 1, 0)))), (None, Some(FEB)));
    assert_eq!(
        month(trunc("Month").lt_eq(ts(at(3, 1, 0)))),
        (None, Some(MAR))
    );
    // A truncation compared with a time inside a period: to its end.
    assert_eq!(
        month(trunc("month").lt_eq(ts(at(2, 15, 0)))),
        (None, Some(FEB))
    );
    assert_eq!(
        month(trunc("YEAR").eq(ts(at(1, 1, 0)))),
        (Some(JAN), Some(DEC))
    );
    assert_eq!(
        month(trunc("quarter").eq(ts(at(1, 1, 0)))),
        (Some(JAN), Some(MAR))
    );
    // The week from Monday, January 27, ends in February.
    assert_eq!(
        month(trunc("week").eq(ts(at(1, 27, 0)))),
        (Some(JAN), Some(FEB))
    );
    let day = trunc("day").between(ts(at(1, 31, 0)), ts(at(1, 31, 0)));
    assert_eq!(month(day), (Some(JAN), Some(JAN)));
    let hours = trunc("hour").in_list(vec![ts(at(2, 29, 18)), ts(at(3, 1, 0))], false);
    assert_eq!(month(hours), (Some(FEB), Some(MAR)));
    // Either of two truncations: their span.
    let either = trunc("month")
        .eq(ts(at(1, 1, 0)))
        .or(trunc("day").eq(ts(at(2, 3, 0))));
    assert_eq!(month(either), (Some(JAN), Some(FEB)));
    // A unit date_trunc does not know, and the truncation of another
    // column: nothing.
    assert_eq!(month(trunc("fortnight").eq(ts(at(2, 1, 0)))), (None, None));
    let other = datafusion::functions::expr_fn::date_trunc(lit("month"), col("f.init_time"));
    assert_eq!(month(other.eq(ts(at(2, 1, 0)))), (None, None));
}

/// `date_trunc` as DataFusion computes it, of each of `times`
/// (microseconds), for `unit`.
async fn truncated_by_datafusion(unit: &str, times: &[i64]) -> Vec<i64> {
    use datafusion::arrow::array::{Array, TimestampMicrosecondArray};
    let values = times
        .iter()
        .map(|t| format!("({t})"))
        .collect::<Vec<_>>()
        .join(",");
    let query = format!(
        "SELECT date_trunc('{unit}', to_timestamp_micros(t)) FROM (VALUES {values}) AS v(t)"
    );
    let ctx = SessionContext::new();
    let batches = ctx.sql(&query).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for batch in batches {
        let column = batch.column(0);
        let column = column
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("microseconds");
        assert_eq!(column.null_count(), 0);
        out.extend(column.values().iter().copied());
    }
    out
}

#[tokio::test]
async fn each_units_last_instant_is_where_datafusion_starts_the_next_period() {
    // Instants around period boundaries (before the epoch, a leap day,
    // the turns of weeks, quarters and years) and between them.
    let mut times = Vec::new();
    for (y, m, d, h) in [
        (1969, 12, 28, 23),
        (1970, 1, 1, 0),
        (1970, 1, 5, 0),
        (2019, 12, 30, 0),
        (2020, 2, 29, 18),
        (2020, 3, 1, 0),
        (2020, 3, 31, 23),
        (2020, 4, 1, 0),
        (2020, 12, 31, 23),
        (2021, 1, 1, 0),
        (2021, 1, 4, 6),
        (1900, 3, 1, 0),
    ] {
        let t = chrono::NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
            .unwrap();
        for offset in [-1, 0, 1, 1_234_567, 59_999_999, 3_600_000_000 - 1] {
            times.push(t + offset);
        }
    }
    for (name, unit) in [
        ("microsecond", truncation::Unit::Microsecond),
        ("millisecond", truncation::Unit::Millisecond),
        ("second", truncation::Unit::Second),
        ("minute", truncation::Unit::Minute),
        ("hour", truncation::Unit::Hour),
        ("day", truncation::Unit::Day),
        ("week", truncation::Unit::Week),
        ("month", truncation::Unit::Month),
        ("quarter", truncation::Unit::Quarter),
        ("year", truncation::Unit::Year),
    ] {
        assert_eq!(truncation::Unit::named_by(&lit(name)), Some(unit));
        let last: Vec<i64> = times
            .iter()
            .map(|&t| unit.last_instant(t).expect("in range"))
            .collect();
        let next: Vec<i64> = last.iter().map(|l| l + 1).collect();
        let of_times = truncated_by_datafusion(name, &times).await;
        let of_last = truncated_by_datafusion(name, &last).await;
        let of_next = truncated_by_datafusion(name, &next).await;
        for i in 0..times.len() {
            // The last instant is in the same period as the time, and the
            // microsecond after it starts the next one.
            assert_eq!(of_last[i], of_times[i], "{name} of {}", times[i]);
            assert_eq!(of_next[i], next[i], "{name} of {}", times[i]);
        }
    }
}

fn part(name: &str) -> Expr {
    datafusion::functions::expr_fn::date_part(lit(name), vt())
}

/// What `parts::on_folders` makes of `e`, as text.
fn on_folders(e: Expr) -> Option<String> {
    parts::on_folders(&e).map(|e| e.to_string())
}

#[test]
fn a_part_of_valid_time_a_folder_names_is_read_from_the_folder() {
    let winter = part("MONTH").in_list(vec![lit(12i32), lit(1i32), lit(2i32)], false);
    assert_eq!(
        on_folders(winter).as_deref(),
        Some("CAST(f.month AS Int32) IN ([Int32(12), Int32(1), Int32(2)])")
    );
    let key = (part("year") * lit(12i32) + part("'mon'")).gt_eq(lit(24242i32));
    assert_eq!(
        on_folders(key).as_deref(),
        Some("CAST(f.year AS Int32) * Int32(12) + CAST(f.month AS Int32) >= Int32(24242)")
    );
    let first = part("qtr")
        .eq(lit(1i32))
        .and(part("years").not_eq(lit(2019i32)));
    assert_eq!(
        on_folders(first).as_deref(),
        Some(
            "(CAST(f.month AS Int32) + Int32(2)) / Int32(3) = Int32(1) \
             AND CAST(f.year AS Int32) != Int32(2019)"
        )
    );
    // Parts a folder does not name, other columns beside, `valid_time`
    // itself beside, another column's month, a volatile filter: nothing.
    let volatile = part("month").eq(datafusion::functions::expr_fn::random());
    for e in [
        part("day").eq(lit(1i32)),
        part("m").eq(lit(1i32)),
        part("month").eq(lit(2i32)).or(col("f.t2m").gt(lit(5.0))),
        part("month").eq(lit(2i32)).or(vt().gt(ts(at(2, 1, 0)))),
        datafusion::functions::expr_fn::date_part(lit("month"), col("f.init_time")).eq(lit(2i32)),
        volatile,
        col("f.year").eq(lit("2020")),
    ] {
        assert_eq!(on_folders(e.clone()), None, "{e}");
    }
}
