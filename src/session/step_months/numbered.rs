//! A partition column compared with a number, as analysts write it
//! (`WHERE year = 2015 AND month = 3`), reaches the scan as `CAST(year AS
//! Int64) = Int64(2015)`: the folders are text, so DataFusion casts every
//! folder's value and cannot list one folder by its name. In a step table
//! each folder is its step's digits (`year=2015`, `month=03`, checked when
//! the table was registered), so that filter holds exactly where the folder
//! reads `'2015'` or `'03'`, the equality DataFusion lists as a prefix. Over
//! ten years of steps a month by number took 1.2–1.6 s in the `dev` build
//! against 0.74–0.75 s by text, and 16–17 s against 10 s on a loopback S3
//! server (docs/forecast-table-reads.md).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Cast, Expr, Operator, TryCast, lit};

/// `year = 'YYYY'` or `month = 'MM'` where `conjunct` compares that folder,
/// cast to an integer, for equality with an integer literal; else `None`.
pub(super) fn folder_text(conjunct: &Expr) -> Option<Expr> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = conjunct
    else {
        return None;
    };
    let (column, number) = match (folder_as_integer(left), folder_as_integer(right)) {
        (Some(column), None) => (column, integer(right)?),
        (None, Some(column)) => (column, integer(left)?),
        _ => return None,
    };
    // The widths `job::store::step_name` writes; a number no folder can
    // spell (a negative year, a year past 9999) implies nothing.
    let text = match column.name.as_str() {
        "year" if (0..=9999).contains(&number) => format!("{number:04}"),
        "month" if (0..=99).contains(&number) => format!("{number:02}"),
        _ => return None,
    };
    let value = ScalarValue::try_from_string(text, &crate::session::partition_type()).ok()?;
    Some(Expr::Column(column.clone()).eq(lit(value)))
}

/// `expr` as `CAST(year | month AS <integer>)` (or `TRY_CAST`): the column.
fn folder_as_integer(expr: &Expr) -> Option<&Column> {
    let (inner, to) = match expr {
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
            (expr, field.data_type())
        }
        _ => return None,
    };
    let Expr::Column(column) = inner.as_ref() else {
        return None;
    };
    let folder = column.name == "year" || column.name == "month";
    (folder && to.is_integer()).then_some(column)
}

/// An integer literal's value, whatever its width.
fn integer(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    if !value.data_type().is_integer() {
        return None;
    }
    match value.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(n)) => Some(n),
        _ => None,
    }
}
