use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use super::UtcTimeFunction;
use crate::session::new_context;

/// What `date_part` (and `EXTRACT`) take from a timestamp.
const PARTS: [&str; 16] = [
    "year",
    "isoyear",
    "quarter",
    "month",
    "week",
    "day",
    "doy",
    "dow",
    "isodow",
    "hour",
    "minute",
    "second",
    "millisecond",
    "microsecond",
    "nanosecond",
    "epoch",
];

const GRANULARITIES: [&str; 10] = [
    "microsecond",
    "millisecond",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "quarter",
    "year",
];

/// Instants in nanoseconds: period boundaries (the epoch, the Monday
/// before it, a leap day's last nanosecond, the turns of centuries) and
/// 20,000 drawn over all of the nanosecond range (seeded xorshift).
fn instants() -> Vec<i64> {
    const S: i64 = 1_000_000_000;
    let mut out = vec![
        0,
        -1,
        1,
        -3 * 86_400 * S,
        -3 * 86_400 * S - 1,
        1_583_020_799_999_999_999,
        1_583_020_800 * S,
        -2_203_891_200 * S,
        946_684_800 * S - 1,
        946_684_800 * S,
        4_102_444_800 * S,
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Away from the range's ends, where truncating to a week or a year
        // leaves it (both paths then fail, with messages of their own).
        out.push((state as i64) / 2);
    }
    out
}

/// A table `t` of `instants` as timestamps of every unit in `zone`, with
/// every seventh value null.
fn table(zone: &str) -> RecordBatch {
    let values = instants();
    let kept = |d: i64| -> Vec<Option<i64>> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i % 7 != 3).then(|| v.div_euclid(d)))
            .collect()
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampSecondArray::from(kept(1_000_000_000)).with_timezone(zone)),
        Arc::new(TimestampMillisecondArray::from(kept(1_000_000)).with_timezone(zone)),
        Arc::new(TimestampMicrosecondArray::from(kept(1_000)).with_timezone(zone)),
        Arc::new(TimestampNanosecondArray::from(kept(1)).with_timezone(zone)),
    ];
    let fields: Vec<Field> = ["s", "ms", "us", "ns"]
        .iter()
        .zip(&columns)
        .map(|(name, c)| Field::new(*name, c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match")
}

fn with_table(ctx: SessionContext, batch: &RecordBatch) -> SessionContext {
    let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).expect("table");
    ctx.register_table("t", Arc::new(table)).expect("register");
    ctx
}

/// The one column of `query`'s answer in `ctx`, or its error's text.
async fn answer(ctx: &SessionContext, query: &str) -> Result<ArrayRef, String> {
    let frame = ctx.sql(query).await.map_err(|e| e.to_string())?;
    let batches = frame.collect().await.map_err(|e| e.to_string())?;
    let columns: Vec<&dyn Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
    concat(&columns).map_err(|e| e.to_string())
}

#[test]
fn every_uqcast_session_has_these_functions() {
    let ctx = new_context();
    for name in ["date_trunc", "datetrunc", "date_part", "datepart"] {
        let udf = ctx.udf(name).expect("registered");
        assert!(udf.inner().is::<UtcTimeFunction>(), "{name}");
    }
}

#[tokio::test]
async fn utc_timestamps_truncate_and_part_as_datafusion_does_it() {
    let queries = || {
        let truncations = GRANULARITIES.map(|g| format!("date_trunc('{g}', COLUMN)"));
        let parts = PARTS.map(|p| format!("date_part('{p}', COLUMN)"));
        truncations.into_iter().chain(parts)
    };
    for zone in ["UTC", "+00:00"] {
        let batch = table(zone);
        let ours = with_table(new_context(), &batch);
        let datafusions = with_table(SessionContext::new(), &batch);
        for column in ["s", "ms", "us", "ns"] {
            for function in queries() {
                let query = format!("SELECT {} FROM t", function.replace("COLUMN", column));
                let expected = answer(&datafusions, &query).await.expect("DataFusion's");
                let got = answer(&ours, &query).await.expect("ours");
                assert_eq!(got.data_type(), expected.data_type(), "{zone} {query}");
                assert_eq!(&got, &expected, "{zone} {query}");
                assert_eq!(got.null_count(), batch.num_rows().div_ceil(7));
            }
        }
    }
}

/// A function of a unit and a timestamp that answers with the type its
/// timestamp argument reached it in.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TypeSeen {
    signature: Signature,
}

impl ScalarUDFImpl for TypeSeen {
    fn name(&self) -> &str {
        "type_seen"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let seen = args.args[1].data_type().to_string();
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(vec![
            seen;
            args.number_rows
        ]))))
    }
}

#[tokio::test]
async fn only_utc_arrays_reach_datafusion_without_their_zone() {
    let probe = ScalarUDF::new_from_impl(TypeSeen {
        signature: Signature::any(2, Volatility::Immutable),
    });
    let function = ScalarUDF::new_from_impl(UtcTimeFunction::new(Arc::new(probe)));
    let seen = |zone: &str, query: &str| {
        let ctx = with_table(SessionContext::new(), &table(zone));
        ctx.register_udf(function.clone());
        let query = query.to_string();
        async move {
            let column = answer(&ctx, &query).await.expect("answered");
            column.as_string::<i32>().value(0).to_string()
        }
    };
    let of_column = "SELECT type_seen('x', ns) FROM t";
    assert_eq!(seen("UTC", of_column).await, "Timestamp(ns)");
    assert_eq!(seen("+00:00", of_column).await, "Timestamp(ns)");
    assert_eq!(
        seen("Europe/Berlin", of_column).await,
        "Timestamp(ns, \"Europe/Berlin\")"
    );
    // A literal is a scalar, which keeps its zone.
    let of_literal = "SELECT type_seen('x', arrow_cast(0, 'Timestamp(Second, Some(\"UTC\"))'))";
    assert_eq!(seen("UTC", of_literal).await, "Timestamp(s, \"UTC\")");
}

#[tokio::test]
async fn other_zones_literals_times_and_errors_are_datafusions() {
    let batch = table("Europe/Berlin");
    let ours = with_table(new_context(), &batch);
    let datafusions = with_table(SessionContext::new(), &batch);
    let queries = [
        "SELECT date_trunc('day', ns) FROM t",
        "SELECT date_trunc('month', s) FROM t",
        "SELECT date_trunc('day', TIMESTAMP '2020-02-29T23:30:00Z') FROM t",
        "SELECT date_trunc('day', arrow_cast(us, 'Timestamp(Microsecond, None)')) FROM t",
        "SELECT date_trunc('hour', arrow_cast(ns, 'Time64(Nanosecond)')) FROM t",
        "SELECT date_part('hour', ns) FROM t",
        "SELECT EXTRACT(DAY FROM s) FROM t",
        "SELECT date_part('hour', TIMESTAMP '2020-02-29T23:30:00Z') FROM t",
    ];
    for query in queries {
        let expected = answer(&datafusions, query).await.expect("DataFusion's");
        let got = answer(&ours, query).await.expect("ours");
        assert_eq!(&got, &expected, "{query}");
    }
    // Berlin's days start an hour or two before UTC's, so a UTC
    // truncation of these instants would differ: the zone was kept.
    let berlin = answer(&ours, queries[0]).await.expect("ours");
    let utc = answer(
        &ours,
        "SELECT date_trunc('day', arrow_cast(ns, 'Timestamp(Nanosecond, Some(\"UTC\"))')) FROM t",
    )
    .await
    .expect("ours");
    assert_ne!(
        berlin.to_data().buffers()[0],
        utc.to_data().buffers()[0],
        "Berlin's days are UTC's"
    );
    for query in [
        "SELECT date_trunc('fortnight', ns) FROM t",
        "SELECT date_trunc(NULL, ns) FROM t",
        "SELECT date_part('century', ns) FROM t",
    ] {
        let expected = answer(&datafusions, query).await.expect_err("an error");
        assert_eq!(answer(&ours, query).await.expect_err("an error"), expected);
    }
}

#[tokio::test]
async fn utc_days_past_the_nanosecond_range_truncate_without_it() {
    // DataFusion's zoned path counts every instant in nanoseconds, which
    // end in 2262; the arithmetic on UTC instants keeps their own unit.
    // That DataFusion fails here where this function answers shows the
    // fast path is the one taken.
    let at = |h, m, s| {
        chrono::NaiveDate::from_ymd_opt(2500, 3, 1)
            .and_then(|d| d.and_hms_opt(h, m, s))
            .map(|t| t.and_utc().timestamp())
            .expect("a valid time")
    };
    let column = TimestampSecondArray::from(vec![at(12, 34, 56)]).with_timezone("UTC");
    let schema = Schema::new(vec![Field::new("s", column.data_type().clone(), true)]);
    let batch =
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(column)]).expect("columns match");
    let query = "SELECT date_trunc('day', s) FROM t";
    let datafusions = with_table(SessionContext::new(), &batch);
    let error = answer(&datafusions, query).await.expect_err("out of range");
    assert!(error.contains("out of range"), "{error}");
    let got = answer(&with_table(new_context(), &batch), query)
        .await
        .expect("ours");
    let expected: ArrayRef =
        Arc::new(TimestampSecondArray::from(vec![at(0, 0, 0)]).with_timezone("UTC"));
    assert_eq!(&got, &expected);
}

/// The functions named `name` in `plan`, by whether they are these.
fn calls_by_kind(plan: &LogicalPlan, name: &str) -> (usize, usize) {
    let (mut ours, mut others) = (0, 0);
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(call) = e
                    && call.func.name() == name
                {
                    if call.func.inner().is::<UtcTimeFunction>() {
                        ours += 1;
                    } else {
                        others += 1;
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })
    .expect("a plan to walk");
    (ours, others)
}

#[tokio::test]
async fn extract_and_functions_built_in_rust_are_these_too() {
    use datafusion::functions::expr_fn::{date_part, date_trunc};
    use datafusion::prelude::{col, lit};
    let ctx = with_table(new_context(), &table("UTC"));
    let extract = ctx
        .sql("SELECT EXTRACT(HOUR FROM ns) FROM t WHERE EXTRACT(DAY FROM ns) = 1")
        .await
        .expect("planned");
    let plan = extract.into_optimized_plan().expect("optimised");
    assert_eq!(calls_by_kind(&plan, "date_part"), (2, 0), "{plan}");
    let built = ctx
        .table("t")
        .await
        .expect("table")
        .select(vec![
            date_trunc(lit("day"), col("ns")),
            date_part(lit("hour"), col("us")),
        ])
        .expect("selected");
    let plan = built.into_optimized_plan().expect("optimised");
    assert_eq!(calls_by_kind(&plan, "date_trunc"), (1, 0), "{plan}");
    assert_eq!(calls_by_kind(&plan, "date_part"), (1, 0), "{plan}");
}
