//! Filter pushdown: comparisons of `valid_time`, `latitude` or `longitude`
//! with a literal choose which steps are read and which hyperslab of each;
//! `valid_time IN (…)` (or `=` … `OR` …) picks steps, and `valid_time <> t`
//! and `valid_time NOT IN (…)` leave steps out, as does a
//! [`TimesLeftOut`] function of `valid_time` (a forecast run leaves out the
//! steps an earlier run forecast).
//!
//! Such filters are applied exactly (the step's time and every coordinate are
//! known before reading), so they are reported `Exact` and DataFusion drops
//! them from its own `FilterExec`. Everything else is `Unsupported`.

use std::fmt;
use std::ops::Range;

use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::scalar::ScalarValue;
use serde::{Deserialize, Serialize};

use crate::schema::{LATITUDE, LONGITUDE, VALID_TIME};
use crate::times_left_out::TimesLeftOut;

/// A one-sided or two-sided interval; bounds carry their inclusiveness.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval<T> {
    lower: Option<(T, bool)>,
    upper: Option<(T, bool)>,
}

impl<T> Default for Interval<T> {
    fn default() -> Self {
        Self {
            lower: None,
            upper: None,
        }
    }
}

impl<T: PartialOrd + Copy> Interval<T> {
    pub fn contains(&self, v: T) -> bool {
        let above = match self.lower {
            None => true,
            Some((b, inclusive)) => v > b || (inclusive && v == b),
        };
        let below = match self.upper {
            None => true,
            Some((b, inclusive)) => v < b || (inclusive && v == b),
        };
        above && below
    }

    fn is_unbounded(&self) -> bool {
        self.lower.is_none() && self.upper.is_none()
    }

    /// Narrows the interval by `column <op> v`.
    fn tighten(&mut self, op: Operator, v: T) {
        let raise = |cur: &mut Option<(T, bool)>, new: (T, bool)| {
            if cur.is_none_or(|(b, inc)| new.0 > b || (new.0 == b && inc && !new.1)) {
                *cur = Some(new);
            }
        };
        let lower_to = |cur: &mut Option<(T, bool)>, new: (T, bool)| {
            if cur.is_none_or(|(b, inc)| new.0 < b || (new.0 == b && inc && !new.1)) {
                *cur = Some(new);
            }
        };
        match op {
            Operator::Gt => raise(&mut self.lower, (v, false)),
            Operator::GtEq => raise(&mut self.lower, (v, true)),
            Operator::Lt => lower_to(&mut self.upper, (v, false)),
            Operator::LtEq => lower_to(&mut self.upper, (v, true)),
            Operator::Eq => {
                raise(&mut self.lower, (v, true));
                lower_to(&mut self.upper, (v, true));
            }
            _ => {}
        }
    }

    /// The index range of a monotonic axis whose values lie in the interval.
    pub fn index_range(&self, values: &[f64]) -> Range<usize>
    where
        T: Into<f64>,
    {
        let as_f64 = Interval::<f64> {
            lower: self.lower.map(|(b, i)| (b.into(), i)),
            upper: self.upper.map(|(b, i)| (b.into(), i)),
        };
        // Monotonic axes make the selected indices contiguous.
        let first = values.iter().position(|&v| as_f64.contains(v));
        match first {
            None => 0..0,
            Some(start) => {
                let len = values[start..]
                    .iter()
                    .take_while(|&&v| as_f64.contains(v))
                    .count();
                start..start + len
            }
        }
    }
}

impl<T: fmt::Display> fmt::Display for Interval<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.lower {
            Some((b, true)) => write!(f, "[{b}, ")?,
            Some((b, false)) => write!(f, "({b}, ")?,
            None => write!(f, "(-inf, ")?,
        }
        match &self.upper {
            Some((b, true)) => write!(f, "{b}]"),
            Some((b, false)) => write!(f, "{b})"),
            None => write!(f, "+inf)"),
        }
    }
}

/// What the pushed-down filters select.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Nanoseconds since 1970-01-01 UTC (i128: exact for every timestamp unit).
    pub time: Interval<i128>,
    pub latitude: Interval<f64>,
    pub longitude: Interval<f64>,
    /// Times left out (nanoseconds, sorted, no repeats).
    #[serde(default)]
    pub excluded_times: Vec<i128>,
    /// The only times kept, if a list names them (nanoseconds, sorted, no
    /// repeats; several lists keep the times they share).
    #[serde(default)]
    pub only_times: Option<Vec<i128>>,
}

enum Constraint {
    Time(Operator, i128),
    TimesExcluded(Vec<i128>),
    TimesOnly(Vec<i128>),
    Latitude(Operator, f64),
    Longitude(Operator, f64),
}

impl Selection {
    /// Folds every filter this scan can apply exactly; others are ignored here.
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut selection = Self::default();
        for constraint in filters.iter().filter_map(constraints).flatten() {
            match constraint {
                Constraint::Time(op, v) => selection.time.tighten(op, v),
                Constraint::TimesExcluded(times) => selection.excluded_times.extend(times),
                Constraint::TimesOnly(times) => selection.keep_only(times),
                Constraint::Latitude(op, v) => selection.latitude.tighten(op, v),
                Constraint::Longitude(op, v) => selection.longitude.tighten(op, v),
            }
        }
        selection.excluded_times.sort_unstable();
        selection.excluded_times.dedup();
        selection
    }

    /// Keeps only `times` (nanoseconds) of the times kept so far.
    pub fn keep_only(&mut self, mut times: Vec<i128>) {
        times.sort_unstable();
        times.dedup();
        self.only_times = Some(match self.only_times.take() {
            None => times,
            Some(kept) => kept
                .into_iter()
                .filter(|t| times.binary_search(t).is_ok())
                .collect(),
        });
    }

    pub fn time_contains_micros(&self, micros: i64) -> bool {
        let nanos = i128::from(micros) * 1_000;
        self.time.contains(nanos)
            && self.excluded_times.binary_search(&nanos).is_err()
            && self
                .only_times
                .as_ref()
                .is_none_or(|only| only.binary_search(&nanos).is_ok())
    }

    pub fn is_unbounded(&self) -> bool {
        self.time.is_unbounded()
            && self.latitude.is_unbounded()
            && self.longitude.is_unbounded()
            && self.excluded_times.is_empty()
            && self.only_times.is_none()
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.time.is_unbounded() {
            let t = |b: Option<(i128, bool)>| {
                b.map(|(v, i)| (crate::cf::time::format_micros((v / 1000) as i64), i))
            };
            parts.push(format!(
                "valid_time in {}",
                Interval {
                    lower: t(self.time.lower),
                    upper: t(self.time.upper)
                }
            ));
        }
        if let Some(only) = &self.only_times {
            parts.push(format!("valid_time in a list ({} times)", only.len()));
        }
        match self.excluded_times.as_slice() {
            [] => {}
            [one] => parts.push(format!(
                "valid_time <> {}",
                crate::cf::time::format_micros((one / 1000) as i64)
            )),
            many => parts.push(format!("valid_time not in {} times", many.len())),
        }
        if !self.latitude.is_unbounded() {
            parts.push(format!("latitude in {}", self.latitude));
        }
        if !self.longitude.is_unbounded() {
            parts.push(format!("longitude in {}", self.longitude));
        }
        write!(f, "{}", parts.join(" AND "))
    }
}

/// Whether a filter can be applied exactly by the scan: read as bounds
/// and lists here, or evaluated on each step's time
/// (`crate::step_filters`).
pub fn support(expr: &Expr) -> TableProviderFilterPushDown {
    if read_as_bounds(expr) || crate::step_filters::on_step_time(expr) {
        TableProviderFilterPushDown::Exact
    } else {
        TableProviderFilterPushDown::Unsupported
    }
}

/// Whether [`Selection::from_filters`] reads `expr`.
pub fn read_as_bounds(expr: &Expr) -> bool {
    constraints(expr).is_some()
}

fn constraints(expr: &Expr) -> Option<Vec<Constraint>> {
    let is_list = matches!(
        expr,
        Expr::InList(InList { negated: false, .. })
            | Expr::BinaryExpr(BinaryExpr {
                op: Operator::Or,
                ..
            })
    );
    if is_list {
        return Some(vec![Constraint::TimesOnly(time_list(expr)?)]);
    }
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, op, literal) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
                (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
                _ => return None,
            };
            if op == Operator::NotEq && column.name == VALID_TIME {
                return Some(vec![Constraint::TimesExcluded(vec![nanos(literal)?])]);
            }
            Some(vec![constraint(&column.name, op, literal)?])
        }
        Expr::InList(InList {
            expr,
            list,
            negated: true,
        }) => match expr.as_ref() {
            Expr::Column(c) if c.name == VALID_TIME => {
                let times = list.iter().map(|item| match item {
                    Expr::Literal(v, _) => nanos(v),
                    _ => None,
                });
                Some(vec![Constraint::TimesExcluded(
                    times.collect::<Option<_>>()?,
                )])
            }
            _ => None,
        },
        Expr::ScalarFunction(f) => {
            let left_out = f.func.inner().downcast_ref::<TimesLeftOut>()?;
            match f.args.as_slice() {
                [Expr::Column(c)] if c.name == VALID_TIME => {
                    Some(vec![Constraint::TimesExcluded(left_out.nanos().collect())])
                }
                _ => None,
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => match (expr.as_ref(), low.as_ref(), high.as_ref()) {
            (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) => Some(vec![
                constraint(&c.name, Operator::GtEq, lo)?,
                constraint(&c.name, Operator::LtEq, hi)?,
            ]),
            _ => None,
        },
        _ => None,
    }
}

/// The times `expr` keeps, if it is `valid_time = t`, `valid_time IN
/// (…)`, or an `OR` of such.
fn time_list(expr: &Expr) -> Option<Vec<i128>> {
    let is_time = |e: &Expr| matches!(e, Expr::Column(c) if c.name == VALID_TIME);
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut times = time_list(left)?;
            times.extend(time_list(right)?);
            Some(times)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (c, Expr::Literal(v, _)) | (Expr::Literal(v, _), c) if is_time(c) => {
                Some(vec![nanos(v)?])
            }
            _ => None,
        },
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if is_time(expr) => list
            .iter()
            .map(|item| match item {
                Expr::Literal(v, _) => nanos(v),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn constraint(column: &str, op: Operator, literal: &ScalarValue) -> Option<Constraint> {
    if !matches!(
        op,
        Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    ) {
        return None;
    }
    match column {
        VALID_TIME => Some(Constraint::Time(op, nanos(literal)?)),
        LATITUDE => Some(Constraint::Latitude(op, number(literal)?)),
        LONGITUDE => Some(Constraint::Longitude(op, number(literal)?)),
        _ => None,
    }
}

fn nanos(v: &ScalarValue) -> Option<i128> {
    Some(match v {
        ScalarValue::TimestampSecond(Some(x), _) => i128::from(*x) * 1_000_000_000,
        ScalarValue::TimestampMillisecond(Some(x), _) => i128::from(*x) * 1_000_000,
        ScalarValue::TimestampMicrosecond(Some(x), _) => i128::from(*x) * 1_000,
        ScalarValue::TimestampNanosecond(Some(x), _) => i128::from(*x),
        _ => return None,
    })
}

fn number(v: &ScalarValue) -> Option<f64> {
    Some(match v {
        ScalarValue::Float64(Some(x)) => *x,
        ScalarValue::Float32(Some(x)) => f64::from(*x),
        ScalarValue::Int64(Some(x)) => *x as f64,
        ScalarValue::Int32(Some(x)) => f64::from(*x),
        ScalarValue::Int16(Some(x)) => f64::from(*x),
        ScalarValue::Int8(Some(x)) => f64::from(*x),
        ScalarValue::UInt64(Some(x)) => *x as f64,
        ScalarValue::UInt32(Some(x)) => f64::from(*x),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn folds_bounds_and_reversed_comparisons() {
        let filters = vec![
            col(LATITUDE).gt_eq(lit(10.0)),
            lit(50.0).gt(col(LATITUDE)),
            col(LATITUDE).lt_eq(lit(60.0)),
            col(LONGITUDE).between(lit(200.0), lit(210.0)),
        ];
        let s = Selection::from_filters(&filters);
        assert!(s.latitude.contains(10.0) && s.latitude.contains(49.99));
        assert!(!s.latitude.contains(50.0) && !s.latitude.contains(9.99));
        assert!(
            s.longitude.contains(200.0)
                && s.longitude.contains(210.0)
                && !s.longitude.contains(210.5)
        );
        assert_eq!(s.latitude.to_string(), "[10, 50)");
    }

    /// `<>` and `NOT IN` on valid_time leave steps out exactly; on other
    /// columns, or with a non-literal in the list, they are not pushed.
    #[test]
    fn times_left_out_are_exact() {
        let t = |s: i64| lit(ScalarValue::TimestampSecond(Some(s), Some("UTC".into())));
        let filters = vec![
            col(VALID_TIME).not_eq(t(600)),
            col(VALID_TIME).in_list(vec![t(300), t(0), t(600)], true),
            col(VALID_TIME).lt(t(900)),
        ];
        assert!(
            filters
                .iter()
                .all(|f| support(f) == TableProviderFilterPushDown::Exact)
        );
        let s = Selection::from_filters(&filters);
        assert_eq!(
            s.excluded_times,
            [0, 300_000_000_000, 600_000_000_000],
            "sorted, no repeats"
        );
        let micros = |s: i64| s * 1_000_000;
        assert!(!s.time_contains_micros(micros(0)));
        assert!(s.time_contains_micros(micros(1)));
        assert!(!s.time_contains_micros(micros(300)));
        assert!(s.time_contains_micros(micros(301)));
        assert!(!s.time_contains_micros(micros(600)));
        assert!(
            !s.time_contains_micros(micros(900)),
            "the bound still holds"
        );
        assert!(s.to_string().contains("valid_time not in 3 times"), "{s}");
        let not_a_list = col(VALID_TIME).in_list(vec![t(0), col(VALID_TIME)], true);
        assert!(!read_as_bounds(&not_a_list));
        // Still on valid_time alone: evaluated on each step's time.
        assert_eq!(support(&not_a_list), TableProviderFilterPushDown::Exact);
        let not_pushed = col(LATITUDE).in_list(vec![lit(1.0)], true);
        assert_eq!(
            support(&not_pushed),
            TableProviderFilterPushDown::Unsupported
        );
    }

    /// A `TimesLeftOut` function of valid_time leaves its times out as
    /// `NOT IN` does, together with a list; of another expression of
    /// valid_time it is evaluated on each step's time instead, and of any
    /// other column it is not pushed.
    #[test]
    fn times_left_out_by_the_function_are_exact() {
        let left_out = TimesLeftOut::udf("left_out", [600_000_000, 0]);
        let t = |s: i64| lit(ScalarValue::TimestampSecond(Some(s), Some("UTC".into())));
        let filters = vec![
            left_out.call(vec![col(VALID_TIME)]),
            col(VALID_TIME).in_list(vec![t(300)], true),
        ];
        for f in &filters {
            assert_eq!(support(f), TableProviderFilterPushDown::Exact, "{f}");
        }
        let s = Selection::from_filters(&filters);
        assert_eq!(s.excluded_times, [0, 300_000_000_000, 600_000_000_000]);
        let other = TimesLeftOut::udf("other", [0]);
        let of_a_sum = other.call(vec![
            col(VALID_TIME) + lit(ScalarValue::IntervalDayTime(None)),
        ]);
        assert!(!read_as_bounds(&of_a_sum));
        // Still on valid_time alone: evaluated on each step's time.
        assert_eq!(support(&of_a_sum), TableProviderFilterPushDown::Exact);
        let abs = datafusion::functions::math::abs();
        for not_pushed in [
            left_out.call(vec![col(LATITUDE)]),
            abs.call(vec![col(LATITUDE)]).gt(lit(1.0)),
        ] {
            assert_eq!(
                support(&not_pushed),
                TableProviderFilterPushDown::Unsupported,
                "{not_pushed}"
            );
        }
    }

    /// `IN` lists and `OR`s of equalities on valid_time keep only their
    /// times; two lists keep the times both name; an `OR` with anything
    /// else is not pushed.
    #[test]
    fn times_picked_by_lists_are_exact() {
        let t = |s: i64| lit(ScalarValue::TimestampSecond(Some(s), Some("UTC".into())));
        let picked = col(VALID_TIME).in_list(vec![t(600), t(0), t(300)], false);
        let either = col(VALID_TIME).eq(t(300)).or(t(900).eq(col(VALID_TIME)));
        for f in [&picked, &either] {
            assert_eq!(support(f), TableProviderFilterPushDown::Exact, "{f}");
        }
        let micros = |s: i64| s * 1_000_000;
        let s = Selection::from_filters(std::slice::from_ref(&picked));
        let kept: Vec<i64> = (0..1000)
            .filter(|&x| s.time_contains_micros(micros(x)))
            .collect();
        assert_eq!(kept, [0, 300, 600]);
        let s = Selection::from_filters(&[picked, either]);
        let kept: Vec<i64> = (0..1000)
            .filter(|&x| s.time_contains_micros(micros(x)))
            .collect();
        assert_eq!(kept, [300], "the times both lists name");
        assert!(
            s.to_string().contains("valid_time in a list (1 times)"),
            "{s}"
        );
        let mixed = col(VALID_TIME).eq(t(0)).or(col(LATITUDE).eq(lit(1.0)));
        assert_eq!(support(&mixed), TableProviderFilterPushDown::Unsupported);
    }

    #[test]
    fn index_range_on_descending_axis() {
        let lat = [80.0, 70.0, 60.0, 50.0, 40.0];
        let mut i = Interval::default();
        i.tighten(Operator::Lt, 75.0);
        i.tighten(Operator::GtEq, 50.0);
        assert_eq!(i.index_range(&lat), 1..4);
        i.tighten(Operator::Gt, 100.0);
        assert_eq!(i.index_range(&lat), 0..0);
    }

    #[test]
    fn only_simple_coordinate_comparisons_are_exact() {
        assert_eq!(
            support(&col(LATITUDE).gt(lit(1.0))),
            TableProviderFilterPushDown::Exact
        );
        assert_eq!(
            support(&col("t2m").gt(lit(1.0))),
            TableProviderFilterPushDown::Unsupported
        );
        assert_eq!(
            support(&(col(LATITUDE) % lit(1.0)).eq(lit(0.0))),
            TableProviderFilterPushDown::Unsupported
        );
        assert_eq!(
            support(&col(LATITUDE).not_eq(lit(1.0))),
            TableProviderFilterPushDown::Unsupported
        );
        // Not a bound (not a time), but on valid_time alone: evaluated on
        // each step's time (`crate::step_filters`).
        assert!(!read_as_bounds(&col(VALID_TIME).gt(lit(1.0))));
    }
}
