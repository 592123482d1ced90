//! `date_trunc` as DataFusion's, with a fast path for UTC timestamps.
//!
//! `valid_time` and `init_time` are UTC timestamps. DataFusion 55 truncates a
//! zoned timestamp to a day, week, month, quarter or year one value at a
//! time through chrono-tz, and formats an "out of range" error message for
//! every value whether or not it is used (`ok_or(exec_datafusion_err!(…))`
//! in `date_trunc_coarse`), so `GROUP BY date_trunc('day', valid_time)` was
//! five times slower than `date_bin` over the same rows. UTC has no daylight
//! saving and no offset, so truncating its instants is truncating the same
//! numbers without a zone, which DataFusion does with integer arithmetic:
//! this function hands UTC arrays to DataFusion's own `date_trunc` without
//! their zone and puts the zone back on the result. Everything else (other
//! zones, no zone, times of day, scalars) is DataFusion's path unchanged,
//! and so are its name, signature, types, ordering and documentation.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{ExprSchema, Result, ScalarValue};
use datafusion::functions::datetime::date_trunc::DateTruncFunc;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};

/// DataFusion's `date_trunc`, truncating UTC arrays without their zone.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct UtcDateTrunc {
    inner: DateTruncFunc,
}

impl UtcDateTrunc {
    /// The function to register in place of DataFusion's `date_trunc`.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::default())
    }
}

/// Zone names that mean an offset of zero at every instant, as Arrow reads
/// them. Other spellings of UTC take DataFusion's path, which is as correct
/// and slower.
fn is_utc(zone: &str) -> bool {
    matches!(zone, "UTC" | "Etc/UTC" | "+00:00" | "+0000" | "+00")
}

/// `array` (a timestamp array of `unit`) with the zone `zone`; the values,
/// instants counted from the epoch in UTC, are shared, not converted.
fn with_zone(array: &ArrayRef, unit: TimeUnit, zone: Option<Arc<str>>) -> ArrayRef {
    match unit {
        TimeUnit::Second => Arc::new(
            array
                .as_primitive::<TimestampSecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        TimeUnit::Millisecond => Arc::new(
            array
                .as_primitive::<TimestampMillisecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        TimeUnit::Microsecond => Arc::new(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        TimeUnit::Nanosecond => Arc::new(
            array
                .as_primitive::<TimestampNanosecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
    }
}

/// `field` with the type `data_type`.
fn retyped(field: &FieldRef, data_type: DataType) -> FieldRef {
    Arc::new(field.as_ref().clone().with_data_type(data_type))
}

// Every method is DataFusion's but `invoke_with_args`; the lint fails the
// build when a DataFusion release adds a method this would otherwise
// answer with the trait's default instead of `date_trunc`'s own.
#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for UtcDateTrunc {
    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Scalars (a literal's single value) stay on DataFusion's path: one
        // value costs nothing worth a second path.
        let zoned = match args.args.get(1) {
            Some(ColumnarValue::Array(array)) => match array.data_type() {
                DataType::Timestamp(unit, Some(zone)) if is_utc(zone) => {
                    Some((Arc::clone(array), *unit, Arc::clone(zone)))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((array, unit, zone)) = zoned else {
            return self.inner.invoke_with_args(args);
        };
        let naive = DataType::Timestamp(unit, None);
        args.args[1] = ColumnarValue::Array(with_zone(&array, unit, None));
        if let Some(field) = args.arg_fields.get_mut(1) {
            *field = retyped(field, naive.clone());
        }
        args.return_field = retyped(&args.return_field, naive.clone());
        match self.inner.invoke_with_args(args)? {
            ColumnarValue::Array(out) if out.data_type() == &naive => {
                Ok(ColumnarValue::Array(with_zone(&out, unit, Some(zone))))
            }
            // DataFusion answered with another type than its input's: pass
            // it on as it is rather than guess how to zone it.
            other => Ok(other),
        }
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        // `date_trunc` reads no setting in DataFusion 55 (`None`); were a
        // release to, its configured function would replace this one:
        // slower for UTC, never wrong.
        self.inner.with_updated_config(config)
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner.struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }
}

#[cfg(test)]
mod tests;
