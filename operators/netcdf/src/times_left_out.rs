//! A SQL function `name(valid_time)` that is true where a time is not one
//! of a set fixed when the function was made: `valid_time NOT IN (…)` whose
//! list never enters the plan.
//!
//! A forecast run leaves out every step already forecast; over ten years
//! that is 14,612 times, and as a `NOT IN` list of literals DataFusion types,
//! simplifies and checks each one in every optimizer pass (about two seconds
//! a run in a dev build, growing with the history). This function is one node however many
//! times it holds, and the NetCDF scan reads it as it reads `NOT IN`
//! ([`crate::pushdown`]): the steps it leaves out are not read.
//!
//! It lives only in the session that registered it; a plan holding it
//! carries its times to a Ballista cluster (uqcast's plan codec).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The function's state: its name and the times it leaves out.
#[derive(Debug, PartialEq, Eq)]
pub struct TimesLeftOut {
    name: String,
    /// Microseconds since 1970-01-01 UTC, sorted, no repeats.
    micros: Arc<[i64]>,
    signature: Signature,
}

impl TimesLeftOut {
    /// The function `name(t)`, true where `t` is none of `micros`
    /// (microseconds since 1970-01-01 UTC, in any order).
    pub fn udf(name: &str, micros: impl IntoIterator<Item = i64>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::new(name, micros))
    }

    fn new(name: &str, micros: impl IntoIterator<Item = i64>) -> Self {
        let mut times: Vec<i64> = micros.into_iter().collect();
        times.sort_unstable();
        times.dedup();
        Self {
            name: name.to_string(),
            micros: times.into(),
            // Immutable: DataFusion pushes it towards the scan as it would
            // `NOT IN`; a volatile function would stay where it was written.
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    /// The times left out, in microseconds, sorted.
    pub fn micros(&self) -> &[i64] {
        &self.micros
    }

    /// The times left out, in nanoseconds (the pushdown's unit), sorted.
    pub fn nanos(&self) -> impl Iterator<Item = i128> + '_ {
        self.micros.iter().map(|&t| i128::from(t) * 1_000)
    }

    fn left_out(&self, micros: i64) -> bool {
        self.micros.binary_search(&micros).is_ok()
    }
}

// Hashing the whole set in every optimizer pass would cost what the function
// saves; equal functions have equal names and sizes, so this agrees with `Eq`.
impl Hash for TimesLeftOut {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.micros.len().hash(state);
    }
}

impl ScalarUDFImpl for TimesLeftOut {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Timestamp(..)] => Ok(DataType::Boolean),
            [other] => plan_err!(
                "{}(valid_time): valid_time is {other}, not a timestamp",
                self.name
            ),
            _ => plan_err!("{} takes one argument, valid_time", self.name),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let times = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(self.evaluate(&times)?))
    }
}

impl TimesLeftOut {
    /// True where a time is kept, false where left out, null where null
    /// (as `NOT IN` gives).
    fn evaluate(&self, times: &ArrayRef) -> Result<ArrayRef> {
        let nanos_per_unit: i128 = match times.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => 1,
            other => return plan_err!("{}: {other} is not a timestamp", self.name),
        };
        // A timestamp's values are its count of units.
        let counts = cast(times, &DataType::Int64)?;
        // A time between microseconds, or past them, is none of the set's.
        let kept = |count: i64| {
            let nanos = i128::from(count) * nanos_per_unit;
            let micros = i64::try_from(nanos / 1_000).ok();
            nanos % 1_000 != 0 || micros.is_none_or(|t| !self.left_out(t))
        };
        // Rows arrive a step at a time, so most repeat the row before.
        let mut last: Option<(i64, bool)> = None;
        let flags = counts.as_primitive::<Int64Type>().iter().map(|count| {
            let count = count?;
            match last {
                Some((c, k)) if c == count => Some(k),
                _ => {
                    let k = kept(count);
                    last = Some((count, k));
                    Some(k)
                }
            }
        });
        Ok(Arc::new(flags.collect::<BooleanArray>()))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{
        TimestampMicrosecondArray, TimestampNanosecondArray, TimestampSecondArray,
    };

    use super::*;

    const HOUR_US: i64 = 3_600_000_000;

    fn left_out(times: &[i64]) -> TimesLeftOut {
        TimesLeftOut::new("left_out", times.iter().copied())
    }

    fn flags(array: ArrayRef, f: &TimesLeftOut) -> Vec<Option<bool>> {
        let out = f.evaluate(&array).unwrap();
        out.as_boolean().iter().collect()
    }

    #[test]
    fn false_exactly_at_the_times_left_out_in_every_unit() {
        let f = left_out(&[12 * HOUR_US, 0, 6 * HOUR_US, 6 * HOUR_US]);
        assert_eq!(
            f.micros.as_ref(),
            [0, 6 * HOUR_US, 12 * HOUR_US],
            "sorted, no repeats"
        );
        let micros = TimestampMicrosecondArray::from(vec![
            Some(0),
            Some(0),
            Some(1),
            None,
            Some(6 * HOUR_US),
            Some(18 * HOUR_US),
            Some(12 * HOUR_US),
        ])
        .with_timezone("UTC");
        let want = [
            Some(false),
            Some(false),
            Some(true),
            None,
            Some(false),
            Some(true),
            Some(false),
        ];
        assert_eq!(flags(Arc::new(micros), &f), want);

        let hour = 3_600;
        let seconds = TimestampSecondArray::from(vec![0, 3 * hour, 6 * hour]);
        assert_eq!(
            flags(Arc::new(seconds), &f),
            [Some(false), Some(true), Some(false)]
        );
        // A nanosecond off a time left out is kept; the time itself is not.
        let six = 6 * HOUR_US * 1_000;
        let nanos = TimestampNanosecondArray::from(vec![six, six + 1, six - 1]);
        assert_eq!(
            flags(Arc::new(nanos), &f),
            [Some(false), Some(true), Some(true)]
        );
        // Seconds too large for microseconds are none of the set's.
        let far = TimestampSecondArray::from(vec![i64::MAX]);
        assert_eq!(flags(Arc::new(far), &f), [Some(true)]);
    }

    #[test]
    fn only_a_timestamp_argument_plans() {
        let f = left_out(&[0]);
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(f.return_type(&[utc]).unwrap(), DataType::Boolean);
        let err = f.return_type(&[DataType::Utf8]).unwrap_err().to_string();
        assert!(
            err.contains("left_out(valid_time): valid_time is Utf8, not a timestamp"),
            "{err}"
        );
        let err = f.return_type(&[]).unwrap_err().to_string();
        assert!(err.contains("left_out takes one argument"), "{err}");
    }
}
