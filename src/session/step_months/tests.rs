use datafusion::common::TableReference;
use datafusion::logical_expr::{col, lit};

use super::*;

/// Filters on `date_trunc` and `date_part` of `valid_time`.
mod functions;

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

fn vt() -> Expr {
    col("f.valid_time")
}

/// `date_trunc(unit, f.valid_time)`.
fn trunc(unit: &str) -> Expr {
    datafusion::functions::expr_fn::date_trunc(lit(unit), vt())
}

/// The filters `month_filters` adds, as the month keys each bounds.
fn keys(filters: &[Expr]) -> (Option<i32>, Option<i32>) {
    let mut found = (None, None);
    for f in month_filters(filters) {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else {
            panic!("not a comparison: {f}");
        };
        assert!(left.to_string().contains("f.year"), "{left}");
        let Expr::Literal(ScalarValue::Int32(Some(key)), _) = *right else {
            panic!("not a key: {right}");
        };
        match op {
            Operator::GtEq => found.0 = Some(key),
            Operator::LtEq => found.1 = Some(key),
            _ => panic!("{op}"),
        }
    }
    found
}

const JAN: i32 = 2020 * 12 + 1;
const FEB: i32 = 2020 * 12 + 2;
const MAR: i32 = 2020 * 12 + 3;

#[test]
fn a_range_bounds_the_months_both_ways() {
    let range = [vt().gt_eq(ts(at(2, 1, 0))), vt().lt(ts(at(3, 1, 0)))];
    // A strict bound at midnight of March 1 leaves March out.
    assert_eq!(keys(&range), (Some(FEB), Some(FEB)));
    // One conjunction, as a scan may hold it.
    let joined = [range[0].clone().and(range[1].clone())];
    assert_eq!(keys(&joined), (Some(FEB), Some(FEB)));
    // Up to and with that midnight: March stays.
    let with_it = [vt().lt_eq(ts(at(3, 1, 0)))];
    assert_eq!(keys(&with_it), (None, Some(MAR)));
    // After the last microsecond of January: February on.
    let after = [vt().gt(ts(at(2, 1, 0) - 1))];
    assert_eq!(keys(&after), (Some(FEB), None));
    // Before a time a nanosecond past midnight of March 1, rounded down
    // to that midnight: March stays.
    let past = ScalarValue::TimestampNanosecond(Some(at(3, 1, 0) * 1_000 + 1), None);
    let before_past = [vt().lt(lit(past))];
    assert_eq!(keys(&before_past), (None, Some(MAR)));
    // Literal first.
    let reversed = [ts(at(1, 31, 18)).lt_eq(vt())];
    assert_eq!(keys(&reversed), (Some(JAN), None));
    let between = [vt().between(ts(at(1, 5, 0)), ts(at(2, 29, 18)))];
    assert_eq!(keys(&between), (Some(JAN), Some(FEB)));
    let one = [vt().eq(ts(at(3, 1, 6)))];
    assert_eq!(keys(&one), (Some(MAR), Some(MAR)));
}

#[test]
fn several_bounds_narrow_to_the_tightest() {
    let filters = [
        vt().gt(ts(at(1, 2, 0))),
        vt().gt_eq(ts(at(2, 3, 0))),
        vt().lt(ts(at(3, 4, 0))),
        vt().lt_eq(ts(at(2, 5, 0))),
    ];
    assert_eq!(keys(&filters), (Some(FEB), Some(FEB)));
}

#[test]
fn a_list_bounds_by_its_first_and_last_members() {
    let null = lit(ScalarValue::TimestampMicrosecond(None, Some("UTC".into())));
    let list = [vt().in_list(vec![ts(at(3, 1, 0)), null, ts(at(1, 9, 6))], false)];
    assert_eq!(keys(&list), (Some(JAN), Some(MAR)));
    let negated = [vt().in_list(vec![ts(at(3, 1, 0))], true)];
    assert_eq!(keys(&negated), (None, None));
    // A member that is not a timestamp literal: the list bounds nothing.
    let computed = [vt().in_list(vec![ts(at(3, 1, 0)), col("f.init_time")], false)];
    assert_eq!(keys(&computed), (None, None));
}

#[test]
fn either_of_two_ranges_lies_within_their_span() {
    let january = vt().between(ts(at(1, 5, 0)), ts(at(1, 9, 0)));
    let march = vt().gt_eq(ts(at(3, 1, 0))).and(vt().lt(ts(at(3, 2, 0))));
    let either = [january.clone().or(march.clone())];
    assert_eq!(keys(&either), (Some(JAN), Some(MAR)));
    // Nested, with a single time, and narrowed by a bound beside it.
    let three = january
        .clone()
        .or(march.clone().or(vt().eq(ts(at(2, 9, 6)))));
    assert_eq!(keys(std::slice::from_ref(&three)), (Some(JAN), Some(MAR)));
    let narrowed = [three, vt().lt_eq(ts(at(2, 20, 0)))];
    assert_eq!(keys(&narrowed), (Some(JAN), Some(FEB)));
    // A side unbounded above leaves the span so.
    let open = [january.clone().or(vt().gt(ts(at(2, 1, 0))))];
    assert_eq!(keys(&open), (Some(JAN), None));
    // A side that does not bound valid_time: its rows may be any month.
    let other = [january.or(col("f.t2m_eu").gt(lit(5.0)))];
    assert_eq!(keys(&other), (None, None));
}

#[test]
fn filters_that_bound_no_valid_time_imply_nothing() {
    let either = vt().lt(ts(at(1, 2, 0))).or(vt().gt(ts(at(3, 2, 0))));
    let other_column = col("f.init_time").gt_eq(ts(at(2, 1, 0)));
    let unequal = col("f.valid_time").not_eq(ts(at(2, 1, 0)));
    let not_a_time = vt().gt_eq(lit(5i64));
    for filters in [
        vec![either],
        vec![other_column],
        vec![unequal],
        vec![not_a_time],
        vec![],
    ] {
        assert!(month_filters(&filters).is_empty(), "{filters:?}");
    }
}

#[test]
fn every_unit_reads_as_the_same_instant() {
    let t = at(2, 1, 0);
    for value in [
        ScalarValue::TimestampSecond(Some(t / 1_000_000), None),
        ScalarValue::TimestampMillisecond(Some(t / 1_000), Some("UTC".into())),
        ScalarValue::TimestampNanosecond(Some(t * 1_000 + 999), Some("+05:00".into())),
    ] {
        assert_eq!(micros(&lit(value.clone())), Some(t), "{value:?}");
    }
    // A nanosecond before February is January's, not rounded into February.
    let before = ScalarValue::TimestampNanosecond(Some(t * 1_000 - 1), None);
    let filters = [vt().gt_eq(lit(before))];
    assert_eq!(keys(&filters), (Some(JAN), None));
    // Seconds beyond microseconds' range bound nothing.
    let far = ScalarValue::TimestampSecond(Some(i64::MAX / 10), None);
    assert_eq!(micros(&lit(far)), None);
}

#[test]
fn the_filters_name_the_scans_own_columns() {
    let unqualified = [col("valid_time").gt_eq(ts(at(2, 1, 0)))];
    let [implied] = month_filters(&unqualified).try_into().expect("one filter");
    assert_eq!(
        implied.to_string(),
        "CAST(year AS Int32) * Int32(12) + CAST(month AS Int32) >= Int32(24242)"
    );
    let other = [col("g.valid_time").gt_eq(ts(at(2, 1, 0)))];
    let [implied] = month_filters(&other).try_into().expect("one filter");
    let mut columns = implied.column_refs().into_iter().collect::<Vec<_>>();
    columns.sort_by_key(|c| c.name.clone());
    assert_eq!(
        columns,
        [
            &Column::new(Some(TableReference::bare("g")), "month"),
            &Column::new(Some(TableReference::bare("g")), "year"),
        ]
    );
}

#[test]
fn a_step_file_belongs_in_its_valid_times_month() {
    let placed = |path: &str| in_its_month_folder(path.split('/'));
    assert!(placed("year=2020/month=02/t2m_20200201T0000.parquet"));
    assert!(placed("year=2019/month=12/t2m_20191231T1800.parquet"));
    assert!(!placed("year=2020/month=01/t2m_20200201T0000.parquet"));
    assert!(!placed("year=2020/month=2/t2m_20200201T0000.parquet"));
    assert!(!placed("month=02/year=2020/t2m_20200201T0000.parquet"));
    assert!(!placed("year=2020/t2m_20200201T0000.parquet"));
    assert!(!placed("x/year=2020/month=02/t2m_20200201T0000.parquet"));
    assert!(!placed("year=2020/month=02/part-0.parquet"));
    assert!(!placed("year=2020/month=02/t2m_20200230T0000.parquet"));
    assert!(!placed("year=2020/month=02/t2m_20200201T0000.parquet/x"));
    assert!(!placed("year=2020/month=02"));
    // Each folder as `job::store::step_name` writes it, over the years.
    for t in [at(1, 1, 0), at(12, 31, 18), at(2, 29, 6)] {
        for years in [-170, 0, 80] {
            let t = t + years * 365 * 86_400_000_000;
            let (name, folder) = crate::job::store::step_name(t).unwrap();
            assert!(placed(&format!("{folder}/{name}")), "{folder}/{name}");
        }
    }
}

/// The folder prefix DataFusion lists for a scan holding `filters` and the
/// partition filters they imply (`None`: the whole table).
fn listed_prefix(filters: &[Expr]) -> Option<String> {
    use datafusion::datasource::listing::helpers::evaluate_partition_prefix;
    let folders = ["year", "month"].map(|c| (c.to_string(), crate::session::partition_type()));
    let mut scan = filters.to_vec();
    scan.extend(folder_filters(filters));
    evaluate_partition_prefix(&folders, &scan).map(|p| p.to_string())
}

#[test]
fn times_within_one_month_or_year_list_only_its_folder() {
    let february = [vt().gt_eq(ts(at(2, 1, 0))), vt().lt(ts(at(3, 1, 0)))];
    assert_eq!(
        listed_prefix(&february).as_deref(),
        Some("year=2020/month=02")
    );
    let one_step = [vt().eq(ts(at(3, 1, 6)))];
    assert_eq!(
        listed_prefix(&one_step).as_deref(),
        Some("year=2020/month=03")
    );
    let a_day = [trunc("day").eq(ts(at(1, 31, 0)))];
    assert_eq!(listed_prefix(&a_day).as_deref(), Some("year=2020/month=01"));
    let list = [vt().in_list(vec![ts(at(3, 1, 0)), ts(at(1, 9, 6))], false)];
    assert_eq!(listed_prefix(&list).as_deref(), Some("year=2020"));
    let december = vt().gt_eq(ts(at(12, 1, 0)));
    let year = [december.clone(), vt().lt_eq(ts(at(12, 31, 18)))];
    assert_eq!(listed_prefix(&year).as_deref(), Some("year=2020/month=12"));
    // Across the new year, or unbounded on one side: every folder.
    let new_year = [december, vt().lt(ts(at(12, 31, 18) + 86_400_000_000))];
    assert_eq!(listed_prefix(&new_year), None);
    assert_eq!(listed_prefix(&[vt().gt_eq(ts(at(2, 1, 0)))]), None);
    // Years before 1000 keep their four digits, as their folders.
    let early = ts(at(2, 1, 0) - 1_100 * 365 * 86_400_000_000);
    let prefix = listed_prefix(&[vt().eq(early)]).unwrap();
    assert!(prefix.starts_with("year=09"), "{prefix}");
    // The prefix is the folder a run writes the step to.
    let (_, folder) = crate::job::store::step_name(at(3, 1, 6)).unwrap();
    assert_eq!(listed_prefix(&one_step).unwrap(), folder);
}

#[test]
fn a_folder_compared_with_a_number_lists_only_that_folder() {
    use datafusion::logical_expr::{cast, try_cast};
    let number = |c: &str, n: i64| cast(col(format!("f.{c}")), DataType::Int64).eq(lit(n));
    let march = [number("year", 2015), number("month", 3)];
    assert_eq!(listed_prefix(&march).as_deref(), Some("year=2015/month=03"));
    // The literal first, other integer widths, TRY_CAST.
    let reversed = [
        lit(2015i32).eq(cast(col("f.year"), DataType::Int32)),
        try_cast(col("f.month"), DataType::UInt8).eq(lit(12u8)),
    ];
    assert_eq!(
        listed_prefix(&reversed).as_deref(),
        Some("year=2015/month=12")
    );
    assert_eq!(
        listed_prefix(&[number("year", 987)]).as_deref(),
        Some("year=0987")
    );
    // The month of `valid_time` read on the folders, with its year.
    let parts = [
        datafusion::functions::expr_fn::date_part(lit("year"), vt()).eq(lit(2015i32)),
        datafusion::functions::expr_fn::date_part(lit("month"), vt()).eq(lit(3i32)),
    ];
    assert_eq!(listed_prefix(&parts).as_deref(), Some("year=2015/month=03"));
    // A month alone is no prefix; numbers no folder spells, a comparison
    // other than equality, a cast to text or a fraction imply no folder.
    for filters in [
        vec![number("month", 3)],
        vec![number("year", -1)],
        vec![number("year", 10_000)],
        vec![cast(col("f.year"), DataType::Int64).gt(lit(2015i64))],
        vec![cast(col("f.year"), DataType::Utf8).eq(lit("2015"))],
        vec![cast(col("f.year"), DataType::Float64).eq(lit(2015.0))],
        vec![cast(col("f.latitude"), DataType::Int64).eq(lit(2015i64))],
    ] {
        assert_eq!(listed_prefix(&filters), None, "{filters:?}");
    }
}
