//! `date_trunc(unit, valid_time)` compared with a time bounds `valid_time`
//! itself: the truncation of `t` is the start of `t`'s period, so a
//! truncation within `lo..=hi` holds times from the first period starting
//! at or after `lo` to the end of `hi`'s period.

use chrono::{DateTime, Datelike, Months, NaiveDate};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A unit `date_trunc` truncates to, as DataFusion names them (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Unit {
    /// The unit `date_trunc`'s first argument names, if it is a literal
    /// naming one.
    pub(super) fn named_by(expr: &Expr) -> Option<Self> {
        let Expr::Literal(value, _) = expr else {
            return None;
        };
        let name = match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)) => s.to_lowercase(),
            _ => return None,
        };
        Some(match name.as_str() {
            "microsecond" => Self::Microsecond,
            "millisecond" => Self::Millisecond,
            "second" => Self::Second,
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "quarter" => Self::Quarter,
            "year" => Self::Year,
            _ => return None,
        })
    }

    /// The last microsecond of the UTC period of this unit holding `t`
    /// (microseconds since the epoch); weeks start on Monday, as
    /// DataFusion's `date_trunc` has them. `None` past chrono's range.
    pub(super) fn last_instant(self, t: i64) -> Option<i64> {
        let fixed = |len: i64| t.div_euclid(len).checked_mul(len)?.checked_add(len - 1);
        match self {
            Self::Microsecond => Some(t),
            Self::Millisecond => fixed(1_000),
            Self::Second => fixed(1_000_000),
            Self::Minute => fixed(60_000_000),
            Self::Hour => fixed(3_600_000_000),
            Self::Day => fixed(MICROS_PER_DAY),
            // The epoch was a Thursday: Mondays fall 4 days after a
            // multiple of 7.
            Self::Week => {
                let offset = 4 * MICROS_PER_DAY;
                let week = 7 * MICROS_PER_DAY;
                t.checked_sub(offset)?
                    .div_euclid(week)
                    .checked_mul(week)?
                    .checked_add(offset + week - 1)
            }
            Self::Month | Self::Quarter | Self::Year => {
                let months = match self {
                    Self::Month => 1,
                    Self::Quarter => 3,
                    _ => 12,
                };
                let date = DateTime::from_timestamp_micros(t)?.date_naive();
                let first_month = date.month0() / months * months + 1;
                let start = NaiveDate::from_ymd_opt(date.year(), first_month, 1)?;
                let next = start.checked_add_months(Months::new(months))?;
                next.and_hms_opt(0, 0, 0)?
                    .and_utc()
                    .timestamp_micros()
                    .checked_sub(1)
            }
        }
    }
}

/// The `valid_time`s (microseconds, inclusive; `None`: unbounded) whose
/// truncation to `unit` (`None`: not truncated) lies within `lo..=hi`.
pub(super) fn untruncated(
    unit: Option<Unit>,
    lo: Option<i64>,
    hi: Option<i64>,
) -> (Option<i64>, Option<i64>) {
    let Some(unit) = unit else {
        return (lo, hi);
    };
    // The first period starting at or after `lo`: the one after the
    // period holding the microsecond before it.
    let lo = lo.and_then(|lo| unit.last_instant(lo.checked_sub(1)?)?.checked_add(1));
    (lo, hi.and_then(|hi| unit.last_instant(hi)))
}
