//! A query by `valid_time` over a forecast table reads only its months'
//! folders.
//!
//! `uqcast run` writes a step valid at `t` to `year=YYYY/month=MM/` of
//! `t`'s UTC month, named by `t` (`src/job/store.rs`, `step_name`). So a
//! filter `valid_time >= a AND valid_time < b` implies a filter on the
//! partition columns, `year * 12 + month` between `a`'s month and `b`'s,
//! which DataFusion evaluates on folder names before it opens a file. A
//! query naming only `valid_time` would otherwise read every file's footer
//! over the table's years (a month of ten years' steps: 10–16 s in the
//! `dev` build; with the partition filter 1.1–1.3 s). The same holds of
//! `date_trunc(unit, valid_time)` compared with a time ([`truncation`]),
//! and a filter on `date_part('year' | 'quarter' | 'month', valid_time)`
//! reads the same on the folder's names ([`parts`]). Bounds within one
//! year or month also name its folder by equality ([`folder_equalities`]),
//! which DataFusion reads as the prefix to list, as does a folder compared
//! with a number (`year = 2015`, [`numbered`]).
//! [`MonthsFromValidTime`] adds those filters to the scans of
//! the tables [`StepTables`] holds: those whose every file is named as a
//! step and sits in its step's folder, as found when the table was
//! registered (`session::register_parquet_here`). Any other table is left
//! as it is: there a folder need not say what its rows hold. A step file's
//! rows are taken to be at the valid time its name gives, as a run that
//! finds its existing steps by their names takes them
//! (`session::forecast_step_times`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::DefaultTableSource;
use datafusion::datasource::listing::{ListingTable, ListingTableUrl};
use datafusion::error::Result;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, LogicalPlan, Operator, TableScan, lit};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::prelude::SessionContext;

use truncation::Unit;

mod numbered;
mod parts;
mod truncation;

/// Makes `ctx`'s scans of step tables read only the months their
/// `valid_time` filters name: an empty [`StepTables`] for the tables
/// registered later, and the rule that reads it.
pub fn enable(ctx: &SessionContext) {
    let tables = Arc::new(StepTables::default());
    ctx.state_ref()
        .write()
        .config_mut()
        .set_extension(Arc::clone(&tables));
    ctx.add_optimizer_rule(Arc::new(MonthsFromValidTime::new(tables)));
}

/// Records in `ctx` whether the table registered at `url` is laid out as
/// steps (a table registered again at the same location is judged
/// again); nothing in a session [`enable`] was not called on.
pub fn mark(ctx: &SessionContext, url: &ListingTableUrl, laid_out_as_steps: bool) {
    let state = ctx.state_ref();
    let state = state.read();
    if let Some(tables) = state.config().get_extension::<StepTables>() {
        tables.mark(url, laid_out_as_steps);
    }
}

/// The locations of the tables registered in a session whose files are
/// laid out as `uqcast run` writes steps; shared by the registration,
/// which fills it ([`mark`]), and [`MonthsFromValidTime`], which reads it.
/// Held as URLs: a registered table's [`ListingTableUrl`] also carries its
/// name.
#[derive(Debug, Default)]
struct StepTables(Mutex<HashSet<String>>);

impl StepTables {
    fn mark(&self, url: &ListingTableUrl, laid_out_as_steps: bool) {
        let mut tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if laid_out_as_steps {
            tables.insert(url.as_str().to_string());
        } else {
            tables.remove(url.as_str());
        }
    }

    fn contains(&self, url: &ListingTableUrl) -> bool {
        let tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tables.contains(url.as_str())
    }
}

/// Whether a file at `segments` below a table's root (its folders, then
/// its name) is a step file in its valid time's month folder.
pub fn in_its_month_folder<'a>(mut segments: impl Iterator<Item = &'a str>) -> bool {
    let (Some(year), Some(month), Some(name), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    // A step's name starts with its time's digits (`t2m_YYYYMM…`, as
    // `job::store::step_name` writes both): compared as text, as every
    // file of a table is at its registration.
    crate::job::store::valid_time_of(name).is_some()
        && year.strip_prefix("year=") == name.get(4..8)
        && month.strip_prefix("month=") == name.get(8..10)
}

/// The optimizer rule: see the module's documentation.
#[derive(Debug)]
pub struct MonthsFromValidTime {
    tables: Arc<StepTables>,
}

impl MonthsFromValidTime {
    fn new(tables: Arc<StepTables>) -> Self {
        Self { tables }
    }

    /// Whether `scan` reads a table laid out as steps, partitioned by
    /// `year` and `month` alone.
    fn reads_steps(&self, scan: &TableScan) -> bool {
        let Some(source) = scan.source.downcast_ref::<DefaultTableSource>() else {
            return false;
        };
        let Some(table) = source.table_provider.downcast_ref::<ListingTable>() else {
            return false;
        };
        // As `session::register_parquet_here` registers a table of steps,
        // whose folders' text the equalities of [`folder_equalities`] are.
        let folder = crate::session::partition_type();
        let partitions: Vec<(&str, &DataType)> = table
            .options()
            .table_partition_cols
            .iter()
            .map(|(name, kind)| (name.as_str(), kind))
            .collect();
        match table.table_paths().as_slice() {
            [url] => {
                partitions == [("year", &folder), ("month", &folder)] && self.tables.contains(url)
            }
            _ => false,
        }
    }
}

impl OptimizerRule for MonthsFromValidTime {
    fn name(&self) -> &str {
        "months_from_valid_time"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::TableScan(mut scan) = plan else {
            return Ok(Transformed::no(plan));
        };
        if !self.reads_steps(&scan) {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        let implied: Vec<Expr> = folder_filters(&scan.filters)
            .into_iter()
            .filter(|f| !scan.filters.contains(f))
            .collect();
        if implied.is_empty() {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        scan.filters.extend(implied);
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    }
}

/// The partition filters `filters` (a scan's, all of which hold) imply:
/// the months their bounds on `valid_time` span ([`month_filters`]), the
/// one year or month they lie in ([`folder_equalities`]), each filter
/// on the year, quarter or month of `valid_time` read on folder names
/// ([`parts::on_folders`]), and each folder compared with a number, the
/// scan's or one those give, read as the folder's text
/// ([`numbered::folder_text`]).
fn folder_filters(filters: &[Expr]) -> Vec<Expr> {
    let mut implied = month_filters(filters);
    implied.extend(folder_equalities(filters));
    let conjuncts: Vec<&Expr> = filters.iter().flat_map(split_conjunction).collect();
    let on_folders: Vec<Expr> = conjuncts
        .iter()
        .filter_map(|c| parts::on_folders(c))
        .collect();
    let compared = conjuncts.into_iter().chain(&on_folders);
    let texts: Vec<Expr> = compared.filter_map(numbered::folder_text).collect();
    implied.extend(on_folders);
    implied.extend(texts);
    implied
}

/// `CAST(year AS INT) * 12 + CAST(month AS INT)` at least the month of
/// their earliest `valid_time` and at most that of their latest, each
/// where they bound it.
fn month_filters(filters: &[Expr]) -> Vec<Expr> {
    let bounds = Bounds::of(filters.iter().flat_map(split_conjunction));
    let Some(qualifier) = bounds.qualifier.clone() else {
        return Vec::new();
    };
    let key = folder_number(&qualifier, "year") * lit(12i32) + folder_number(&qualifier, "month");
    let mut implied = Vec::new();
    if let Some(lo) = bounds.lo.and_then(month_key) {
        implied.push(key.clone().gt_eq(lit(lo)));
    }
    if let Some(hi) = bounds.hi.and_then(month_key) {
        implied.push(key.lt_eq(lit(hi)));
    }
    implied
}

/// `year = 'YYYY'` where the bounds of `filters` on `valid_time` lie in
/// one year, and `month = 'MM'` too where they lie in one month: the
/// spelling DataFusion lists as a prefix (`year=2015/month=03/`), so that
/// a query of a month lists that folder alone (`session::new_context`
/// keeps no list cache), rather than listing, typing and filtering the
/// folder values of every file of the table (ten years of steps: 14,612
/// files, or 15 requests to an S3 store). The folders' text is the step's, as
/// `job::store::step_name` writes it and a table of steps was checked to
/// hold at its registration.
fn folder_equalities(filters: &[Expr]) -> Vec<Expr> {
    let bounds = Bounds::of(filters.iter().flat_map(split_conjunction));
    let (Some(qualifier), Some(lo), Some(hi)) = (&bounds.qualifier, bounds.lo, bounds.hi) else {
        return Vec::new();
    };
    let (Some(lo), Some(hi)) = (month_key(lo), month_key(hi)) else {
        return Vec::new();
    };
    // Month keys count months from year 0: January is 12·year + 1.
    let year_month = |key: i32| ((key - 1).div_euclid(12), (key - 1).rem_euclid(12) + 1);
    let ((lo_year, lo_month), (hi_year, hi_month)) = (year_month(lo), year_month(hi));
    let folder = |name: &str, text: String| {
        ScalarValue::try_from_string(text, &crate::session::partition_type())
            .ok()
            .map(|value| Expr::Column(Column::new(qualifier.clone(), name)).eq(lit(value)))
    };
    let mut equalities = Vec::new();
    if lo_year == hi_year && (0..=9999).contains(&lo_year) {
        equalities.extend(folder("year", format!("{lo_year:04}")));
        if lo_month == hi_month {
            equalities.extend(folder("month", format!("{lo_month:02}")));
        }
    }
    equalities
}

/// The number a scan's `year=` or `month=` folder (`name`) holds, as an
/// `Int32` (`date_part`'s type); `qualifier` names the scan's table.
fn folder_number(qualifier: &Option<datafusion::common::TableReference>, name: &str) -> Expr {
    let column = Expr::Column(Column::new(qualifier.clone(), name));
    Expr::Cast(datafusion::logical_expr::Cast::new(
        Box::new(column),
        DataType::Int32,
    ))
}

/// `year * 12 + month` of the UTC month holding `micros`.
fn month_key(micros: i64) -> Option<i32> {
    let t = DateTime::from_timestamp_micros(micros)?;
    Some(t.year() * 12 + t.month() as i32)
}

/// The earliest and latest `valid_time` the filters seen so far allow
/// (microseconds; `None`: unbounded), and the qualifier of the column
/// they name.
#[derive(Debug, Default)]
struct Bounds {
    lo: Option<i64>,
    hi: Option<i64>,
    qualifier: Option<Option<datafusion::common::TableReference>>,
}

impl Bounds {
    /// The bounds `conjuncts`, all of which hold, set.
    fn of<'a>(conjuncts: impl Iterator<Item = &'a Expr>) -> Self {
        let mut bounds = Self::default();
        for conjunct in conjuncts {
            bounds.narrow(conjunct);
        }
        bounds
    }

    /// Narrows the bounds by one conjunct, where it compares `valid_time`
    /// with timestamps; anything else bounds nothing.
    fn narrow(&mut self, conjunct: &Expr) {
        match conjunct {
            // Either side's rows: within the span from the earlier side's
            // lower bound to the later side's upper bound (this March or
            // last March: the thirteen months between), where both bound
            // it that way.
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => {
                let [a, b] =
                    [left, right].map(|side| Self::of(split_conjunction(side).into_iter()));
                if let (Some(qualifier), Some(_)) = (&a.qualifier, &b.qualifier) {
                    let lo = a.lo.zip(b.lo).map(|(x, y)| x.min(y));
                    let hi = a.hi.zip(b.hi).map(|(x, y)| x.max(y));
                    self.within_times(qualifier, lo, hi);
                }
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let ((column, unit), op, value) = match (time_of(left), time_of(right)) {
                    (Some(c), None) => (c, *op, right),
                    (None, Some(c)) => match op.swap() {
                        Some(op) => (c, op, left),
                        None => return,
                    },
                    _ => return,
                };
                let Some(t) = micros(value) else { return };
                // `< t` where `t` is a whole microsecond allows `t - 1` at
                // most: a range up to midnight of the 1st stops the month
                // before. A finer `t` was rounded down, and is allowed.
                let rounded = matches!(
                    value.as_ref(),
                    Expr::Literal(ScalarValue::TimestampNanosecond(Some(ns), _), _) if ns % 1_000 != 0
                );
                let step = i64::from(!rounded);
                let (lo, hi) = match op {
                    Operator::Eq => (Some(t), Some(t)),
                    Operator::GtEq => (Some(t), None),
                    Operator::Gt => (t.checked_add(step), None),
                    Operator::LtEq => (None, Some(t)),
                    Operator::Lt => (None, t.checked_sub(step)),
                    _ => return,
                };
                self.within(column, unit, lo, hi);
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                if let Some((column, unit)) = time_of(expr) {
                    self.within(column, unit, micros(low), micros(high));
                }
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) => {
                let Some((column, unit)) = time_of(expr) else {
                    return;
                };
                // Null members match no row.
                let times: Option<Vec<Option<i64>>> = list
                    .iter()
                    .map(|e| match e {
                        Expr::Literal(v, _) if v.is_null() => Some(None),
                        e => micros(e).map(Some),
                    })
                    .collect();
                let Some(times) = times else { return };
                let times = times.into_iter().flatten();
                let (lo, hi) = (times.clone().min(), times.max());
                if lo.is_some() {
                    self.within(column, unit, lo, hi);
                }
            }
            _ => {}
        }
    }

    /// Narrows the bounds to the `valid_time`s where `column`, truncated
    /// to `unit` if one is given, lies within `lo..=hi`.
    fn within(&mut self, column: &Column, unit: Option<Unit>, lo: Option<i64>, hi: Option<i64>) {
        let (lo, hi) = truncation::untruncated(unit, lo, hi);
        self.within_times(&column.relation, lo, hi);
    }

    fn within_times(
        &mut self,
        qualifier: &Option<datafusion::common::TableReference>,
        lo: Option<i64>,
        hi: Option<i64>,
    ) {
        self.qualifier.get_or_insert_with(|| qualifier.clone());
        if let Some(lo) = lo {
            self.lo = Some(self.lo.map_or(lo, |l| l.max(lo)));
        }
        if let Some(hi) = hi {
            self.hi = Some(self.hi.map_or(hi, |h| h.min(hi)));
        }
    }
}

/// `expr` as the `valid_time` column, if it is that.
fn valid_time(expr: &Expr) -> Option<&Column> {
    match expr {
        Expr::Column(c) if c.name == uqcast_forecast::schema::VALID_TIME => Some(c),
        _ => None,
    }
}

/// `expr` as `valid_time` or `date_trunc(unit, valid_time)`: the column
/// and the unit it is truncated to (`None`: not truncated).
fn time_of(expr: &Expr) -> Option<(&Column, Option<Unit>)> {
    if let Some(column) = valid_time(expr) {
        return Some((column, None));
    }
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    match f.args.as_slice() {
        [unit, time] if f.func.name() == "date_trunc" => {
            Some((valid_time(time)?, Some(Unit::named_by(unit)?)))
        }
        _ => None,
    }
}

/// A timestamp literal in microseconds since the epoch (UTC whatever its
/// zone: Arrow keeps the instant); rounded down, which keeps its month.
fn micros(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1_000_000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => ms.checked_mul(1_000),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(*us),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
