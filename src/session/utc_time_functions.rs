//! `date_trunc` and `date_part` as DataFusion's, with a fast path for UTC
//! timestamps.
//!
//! `valid_time` and `init_time` are UTC timestamps. DataFusion 55 and Arrow
//! take a zoned timestamp apart one value at a time through chrono-tz, and
//! DataFusion's `date_trunc` also formats an "out of range" error message
//! for every value whether or not it is used (`ok_or(exec_datafusion_err!(…))`
//! in `date_trunc_coarse`): `GROUP BY date_trunc('day', valid_time)` was
//! five times slower than `date_bin` over the same rows, and `date_part`
//! (`EXTRACT`) twice as slow as on the same instants without a zone. UTC
//! has no daylight saving and no offset, so its instants are the same
//! numbers as their zoneless readings, which both functions take apart
//! with integer arithmetic: these functions hand UTC arrays to
//! DataFusion's own without their zone, and put the zone back on an answer
//! that is a timestamp of the input's type. Everything else (other zones,
//! no zone, times of day, scalars) is DataFusion's path unchanged, and so
//! are the functions' names, signatures, types, ordering, simplifications
//! and documentation.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue};
use datafusion::functions::datetime::date_part::DatePartFunc;
use datafusion::functions::datetime::date_trunc::DateTruncFunc;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};

/// The argument both functions take the timestamp in (after the unit).
const TIME_ARGUMENT: usize = 1;

/// A DataFusion function of a timestamp, given UTC arrays without their
/// zone.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UtcTimeFunction {
    inner: Arc<ScalarUDF>,
}

impl UtcTimeFunction {
    /// `inner` (`date_trunc` or `date_part`, which take their timestamp
    /// second) with the fast path for UTC.
    pub fn new(inner: Arc<ScalarUDF>) -> Self {
        Self { inner }
    }

    /// The functions to register in place of DataFusion's.
    pub fn udfs() -> [ScalarUDF; 2] {
        use datafusion::functions::datetime::{date_part, date_trunc};
        [date_trunc(), date_part()].map(|f| ScalarUDF::new_from_impl(Self::new(f)))
    }

    fn datafusions(&self) -> &dyn ScalarUDFImpl {
        self.inner.inner().as_ref()
    }
}

/// Puts these functions in place of DataFusion's where a plan names
/// DataFusion's own rather than the registered ones: `EXTRACT(… FROM …)`,
/// which DataFusion's SQL planner turns into its `date_part` without
/// asking the registry, and expressions built in Rust
/// (`datafusion::functions::expr_fn::date_trunc`).
#[derive(Debug)]
pub struct UseUtcTimeFunctions {
    date_trunc: Arc<ScalarUDF>,
    date_part: Arc<ScalarUDF>,
}

impl Default for UseUtcTimeFunctions {
    fn default() -> Self {
        let [date_trunc, date_part] = UtcTimeFunction::udfs().map(Arc::new);
        Self {
            date_trunc,
            date_part,
        }
    }
}

impl FunctionRewrite for UseUtcTimeFunctions {
    fn name(&self) -> &str {
        "use_utc_time_functions"
    }

    fn rewrite(
        &self,
        expr: Expr,
        _schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> Result<Transformed<Expr>> {
        let Expr::ScalarFunction(call) = expr else {
            return Ok(Transformed::no(expr));
        };
        let ours = if call.func.inner().is::<DateTruncFunc>() {
            &self.date_trunc
        } else if call.func.inner().is::<DatePartFunc>() {
            &self.date_part
        } else {
            return Ok(Transformed::no(Expr::ScalarFunction(call)));
        };
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::clone(ours), call.args),
        )))
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
    fn zoned<T: ArrowTimestampType>(array: &ArrayRef, zone: Option<Arc<str>>) -> ArrayRef {
        Arc::new(array.as_primitive::<T>().clone().with_timezone_opt(zone))
    }
    match unit {
        TimeUnit::Second => zoned::<TimestampSecondType>(array, zone),
        TimeUnit::Millisecond => zoned::<TimestampMillisecondType>(array, zone),
        TimeUnit::Microsecond => zoned::<TimestampMicrosecondType>(array, zone),
        TimeUnit::Nanosecond => zoned::<TimestampNanosecondType>(array, zone),
    }
}

/// `field` with the type `data_type`.
fn retyped(field: &FieldRef, data_type: DataType) -> FieldRef {
    Arc::new(field.as_ref().clone().with_data_type(data_type))
}

// Every method is DataFusion's but `invoke_with_args`; the lint fails the
// build when a DataFusion release adds a method this would otherwise
// answer with the trait's default instead of the function's own.
#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for UtcTimeFunction {
    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Scalars (a literal's single value) stay on DataFusion's path: one
        // value costs nothing worth a second path.
        let zoned = match args.args.get(TIME_ARGUMENT) {
            Some(ColumnarValue::Array(array)) => match array.data_type() {
                DataType::Timestamp(unit, Some(zone)) if is_utc(zone) => {
                    Some((Arc::clone(array), *unit, Arc::clone(zone)))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((array, unit, zone)) = zoned else {
            return self.datafusions().invoke_with_args(args);
        };
        let naive = DataType::Timestamp(unit, None);
        args.args[TIME_ARGUMENT] = ColumnarValue::Array(with_zone(&array, unit, None));
        if let Some(field) = args.arg_fields.get_mut(TIME_ARGUMENT) {
            *field = retyped(field, naive.clone());
        }
        let zoned_answer = args.return_field.data_type() == array.data_type();
        if zoned_answer {
            args.return_field = retyped(&args.return_field, naive.clone());
        }
        match self.datafusions().invoke_with_args(args)? {
            ColumnarValue::Array(out) if zoned_answer && out.data_type() == &naive => {
                Ok(ColumnarValue::Array(with_zone(&out, unit, Some(zone))))
            }
            // An answer of another type (`date_part`'s numbers) has no zone
            // to put back.
            other => Ok(other),
        }
    }

    fn name(&self) -> &str {
        self.datafusions().name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.datafusions().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.datafusions().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.datafusions().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.datafusions().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.datafusions().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.datafusions().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.datafusions().is_strict()
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        // Neither function reads a setting in DataFusion 55 (`None`); were
        // a release to, its configured function would replace this one:
        // slower for UTC, never wrong.
        self.datafusions().with_updated_config(config)
    }

    fn aliases(&self) -> &[String] {
        self.datafusions().aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.datafusions().simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.datafusions().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.datafusions().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.datafusions().short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.datafusions().evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.datafusions().propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.datafusions().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.datafusions().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.datafusions().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.datafusions().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.datafusions().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.datafusions().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.datafusions().placement(args)
    }
}

#[cfg(test)]
mod tests;
