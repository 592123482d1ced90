//! `date_part('year' | 'month' | 'quarter', valid_time)` (and `EXTRACT`,
//! which DataFusion plans as it) is, in a step table, the same part of
//! the file's `year=`/`month=` folder, for every row. So a filter that
//! names `valid_time` only through those parts reads the same on folder
//! names: `EXTRACT(MONTH FROM valid_time) IN (12, 1, 2)`, every winter,
//! becomes `CAST(month AS INT) IN (12, 1, 2)`, which is not a range of
//! `valid_time` a bound could imply.

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, lit};

use super::{folder_number, valid_time};

/// The parts of a time a folder names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Year,
    Quarter,
    Month,
}

/// `conjunct` with each `date_part` of `valid_time` a folder names
/// replaced by the folder's, where that leaves it naming no other column
/// (and it is not volatile, so it picks the same rows either way); else
/// `None`.
pub(super) fn on_folders(conjunct: &Expr) -> Option<Expr> {
    if conjunct.is_volatile() {
        return None;
    }
    let rewritten = conjunct
        .clone()
        .transform_down(|e| match part_of_valid_time(&e) {
            Some((column, part)) => Ok(Transformed::new(
                of_folder(column, part),
                true,
                TreeNodeRecursion::Jump,
            )),
            None => Ok(Transformed::no(e)),
        })
        .ok()?;
    let only_folders = rewritten
        .data
        .column_refs()
        .iter()
        .all(|c| c.name == "year" || c.name == "month");
    (rewritten.transformed && only_folders).then_some(rewritten.data)
}

/// `expr` as `date_part(part, valid_time)` for a part a folder names.
fn part_of_valid_time(expr: &Expr) -> Option<(&Column, Part)> {
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    let [part, time] = f.args.as_slice() else {
        return None;
    };
    if f.func.name() != "date_part" {
        return None;
    }
    let Expr::Literal(part, _) = part else {
        return None;
    };
    let part = part.try_as_str().flatten()?;
    // DataFusion strips one pair of quotes and reads the rest as Arrow's
    // interval units (any case, plurals and abbreviations) or, failing
    // that, `quarter` and `qtr`.
    let part = part
        .strip_prefix(['\'', '"'])
        .and_then(|p| p.strip_suffix(['\'', '"']))
        .unwrap_or(part)
        .to_lowercase();
    let part = match part.as_str() {
        "y" | "yr" | "yrs" | "year" | "years" => Part::Year,
        "mon" | "mons" | "month" | "months" => Part::Month,
        "qtr" | "quarter" => Part::Quarter,
        _ => return None,
    };
    Some((valid_time(time)?, part))
}

/// `part` of the folder holding `column`'s table's file, typed as
/// `date_part` gives it (`Int32`).
fn of_folder(column: &Column, part: Part) -> Expr {
    let folder = |name: &str| folder_number(&column.relation, name);
    match part {
        Part::Year => folder("year"),
        Part::Month => folder("month"),
        Part::Quarter => (folder("month") + lit(2i32)) / lit(3i32),
    }
}
