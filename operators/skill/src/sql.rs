//! The scores as SQL functions, registered in every uqcast session so a
//! forecast table joined with an `era5` table can be scored in one query:
//!
//! - `crps_gaussian(obs, mean, variance)` — CRPS of N(mean, variance) (NULL
//!   where the variance is negative or an input is NULL or NaN);
//! - `lat_weight(latitude)` — cos(latitude), the usual area weight (a
//!   latitude beyond ±90° ends the query);
//! - `weighted_rmse(prediction, truth, weight)` — aggregate
//!   √(Σ w·(p − t)² / Σ w), NULL rows skipped, a negative weight an error;
//! - `spread_skill(obs, mean, variance, k [, weight])` — aggregate
//!   spread–skill ratio of k-sample forecasts (`sql/spread_skill.rs`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Volatility, create_udaf, create_udf,
};
use datafusion::prelude::SessionContext;

mod spread_skill;

use crate::ensemble::crps_gaussian;
use crate::field::AreaWeight;

/// Registers every skill function in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(crps_gaussian_udf());
    ctx.register_udf(lat_weight_udf());
    ctx.register_udaf(weighted_rmse_udaf());
    ctx.register_udaf(spread_skill::spread_skill_udaf());
}

/// One argument column as `Float64`.
fn to_f64(array: &ArrayRef) -> Result<Float64Array> {
    Ok(cast(array, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

/// The arguments as `Float64` arrays of one length (scalars broadcast).
fn float_args(args: &[ColumnarValue]) -> Result<Vec<Float64Array>> {
    ColumnarValue::values_to_arrays(args)?
        .iter()
        .map(to_f64)
        .collect()
}

fn crps_gaussian_udf() -> ScalarUDF {
    create_udf(
        "crps_gaussian",
        vec![DataType::Float64; 3],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = float_args(args)?;
            let out: Float64Array = (0..a[0].len())
                .map(|i| {
                    if a.iter().any(|c| c.is_null(i)) {
                        return None;
                    }
                    crps_gaussian(a[0].value(i), a[1].value(i), a[2].value(i))
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

fn lat_weight_udf() -> ScalarUDF {
    create_udf(
        "lat_weight",
        vec![DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = float_args(args)?;
            let out: Float64Array = a[0]
                .iter()
                .map(|lat| match lat {
                    // A latitude off the globe is a unit or column mix-up
                    // (radians, a longitude): a weight for it would mislead.
                    Some(l) if !(-90.0..=90.0).contains(&l) => {
                        exec_err!("lat_weight: latitude must be within -90..90 degrees, got {l}")
                    }
                    _ => Ok(lat.map(|l| AreaWeight::CosLatitude.weight(l))),
                })
                .collect::<Result<_>>()?;
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

fn weighted_rmse_udaf() -> AggregateUDF {
    create_udaf(
        "weighted_rmse",
        vec![DataType::Float64; 3],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(weighted_rmse_sums()))),
        Arc::new(vec![DataType::Float64, DataType::Float64]),
    )
}

/// An aggregate kept as two running sums of per-row terms: a row with a
/// NULL argument drops out, the partial state is the two sums, and `finish`
/// turns the totals into the result (NULL where it has none).
#[derive(Debug)]
struct TwoSums {
    sums: [f64; 2],
    /// A row's two terms from its arguments (in call order); an error ends
    /// the query.
    terms: fn(&[f64]) -> Result<[f64; 2]>,
    finish: fn([f64; 2]) -> Option<f64>,
}

impl TwoSums {
    fn new(terms: fn(&[f64]) -> Result<[f64; 2]>, finish: fn([f64; 2]) -> Option<f64>) -> Self {
        Self {
            sums: [0.0; 2],
            terms,
            finish,
        }
    }
}

impl Accumulator for TwoSums {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let cols: Vec<Float64Array> = values.iter().map(to_f64).collect::<Result<_>>()?;
        let mut row = vec![0.0; cols.len()];
        for i in 0..cols.first().map_or(0, |c| c.len()) {
            if cols.iter().any(|c| c.is_null(i)) {
                continue;
            }
            for (x, c) in row.iter_mut().zip(&cols) {
                *x = c.value(i);
            }
            let [a, b] = (self.terms)(&row)?;
            self.sums[0] += a;
            self.sums[1] += b;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64((self.finish)(self.sums)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(self
            .sums
            .iter()
            .map(|&x| ScalarValue::Float64(Some(x)))
            .collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for (sum, state) in self.sums.iter_mut().zip(states) {
            *sum += state
                .as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .sum::<f64>();
        }
        Ok(())
    }
}

/// `weighted_rmse`'s accumulator: Σ w·(p − t)² and Σ w. A negative or
/// infinite weight ends the query: among finite positive ones it would bend
/// the mean unseen.
fn weighted_rmse_sums() -> TwoSums {
    TwoSums::new(
        |r| {
            let (prediction, truth, weight) = (r[0], r[1], r[2]);
            // An infinite weight would turn the ratio into NaN.
            if !(weight.is_finite() && weight >= 0.0) {
                return exec_err!(
                    "weighted_rmse: weight must be finite and non-negative, got {weight}"
                );
            }
            Ok([weight * (prediction - truth) * (prediction - truth), weight])
        },
        |[squares, weights]| (weights > 0.0).then(|| (squares / weights).sqrt()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Float32Array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    async fn query(sql: &str) -> Vec<Option<f64>> {
        let ctx = SessionContext::new();
        register(&ctx);
        // Float32 columns, as the forecast table has: the functions coerce.
        let schema = Arc::new(Schema::new(vec![
            Field::new("lat", DataType::Float32, false),
            Field::new("p", DataType::Float32, true),
            Field::new("t", DataType::Float32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float32Array::from(vec![0.0, 60.0, 30.0])),
                Arc::new(Float32Array::from(vec![Some(2.0), Some(0.0), None])),
                Arc::new(Float32Array::from(vec![0.0, 0.0, 5.0])),
            ],
        )
        .unwrap();
        ctx.register_batch("cells", batch).unwrap();
        let out = uqcast_boxed::collect(&ctx, sql).await.unwrap();
        out.iter()
            .flat_map(|b| {
                cast(b.column(0), &DataType::Float64)
                    .unwrap()
                    .as_primitive::<Float64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn weighted_rmse_skips_nulls_and_weights_by_latitude() {
        // The NULL row drops out; the rest is the hand case of field.rs.
        let v = query("SELECT weighted_rmse(p, t, lat_weight(lat)) FROM cells").await;
        assert!(
            (v[0].unwrap() - (4.0f64 / 1.5).sqrt()).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn crps_gaussian_in_sql_matches_the_library() {
        let v = query("SELECT crps_gaussian(t, p, 0.25) FROM cells ORDER BY lat").await;
        let expected = [
            crps_gaussian(0.0, 2.0, 0.25),
            None,
            crps_gaussian(0.0, 0.0, 0.25),
        ];
        assert_eq!(v.len(), 3);
        for (got, want) in v.iter().zip(expected) {
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12),
                (None, None) => {}
                other => panic!("{other:?}"),
            }
        }
        let negative = query("SELECT crps_gaussian(1.0, 0.0, -1.0)").await;
        assert_eq!(negative, vec![None]);
    }

    /// Inputs no weight or score can be made of end the query, naming the
    /// function and the value.
    #[tokio::test]
    async fn impossible_latitudes_and_weights_fail_the_query() {
        let ctx = SessionContext::new();
        register(&ctx);
        for (sql, needle) in [
            (
                "SELECT lat_weight(95.0)",
                "lat_weight: latitude must be within -90..90 degrees, got 95",
            ),
            (
                "SELECT weighted_rmse(p, 0.0, w) FROM (VALUES (1.0, 1.0), (2.0, -0.5)) t(p, w)",
                "weighted_rmse: weight must be finite and non-negative, got -0.5",
            ),
            (
                "SELECT weighted_rmse(p, 0.0, w) FROM (VALUES (1.0, 1.0), (2.0, 1.0 / 0.0)) t(p, w)",
                "weighted_rmse: weight must be finite and non-negative, got inf",
            ),
        ] {
            let result = uqcast_boxed::collect(&ctx, sql).await;
            let err = result.expect_err(sql).to_string();
            assert!(err.contains(needle), "{sql}: {err}");
        }
        // The poles and a zero weight are in range.
        let v = query("SELECT lat_weight(-90.0) + lat_weight(90.0)").await;
        assert!(v[0].unwrap().abs() < 1e-12, "{v:?}");
        let v = query("SELECT weighted_rmse(p, t, 0.0 * lat) FROM cells").await;
        assert_eq!(v, vec![None], "no weight at all: no score");
    }
}
