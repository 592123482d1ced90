//! `spread_skill(obs, mean, variance, k [, weight])`: the spread–skill ratio
//! of a forecast table as an SQL aggregate, with the small-ensemble
//! correction of [`crate::spread_skill`] applied row by row.
//!
//! `variance` is the forecast's variance over its `k` samples with divisor
//! k (as `t2m_au + t2m_eu` over the run's M × N samples is), so each row's
//! unbiased spread, corrected for a finite ensemble, is
//! variance · k/(k − 1) · (k + 1)/k = variance · (k + 1)/(k − 1). The ratio
//! is √(Σ w·variance·(k + 1)/(k − 1) / Σ w·(mean − obs)²): 1 for a reliable
//! forecast, below 1 when it is too sure of itself. The weights cancel
//! from the two means, so only the two weighted sums are kept.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};

use super::TwoSums;
use crate::ensemble::spread_correction;

const NAME: &str = "spread_skill";

pub(super) fn spread_skill_udaf() -> AggregateUDF {
    AggregateUDF::from(SpreadSkill {
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Float64; 4]),
                TypeSignature::Exact(vec![DataType::Float64; 5]),
            ],
            Volatility::Immutable,
        ),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SpreadSkill {
    signature: Signature,
}

impl AggregateUDFImpl for SpreadSkill {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(TwoSums::new(terms, ratio)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(["spread", "squared_error"]
            .iter()
            .map(|part| {
                Arc::new(Field::new(
                    format_state_name(args.name, part),
                    DataType::Float64,
                    true,
                ))
            })
            .collect())
    }
}

/// A row's Σ terms: w·variance·(k + 1)/(k − 1) and w·(mean − obs)². Bad
/// rows end the query: a ratio over them would mean nothing.
fn terms(row: &[f64]) -> Result<[f64; 2]> {
    let (obs, mean, variance, k) = (row[0], row[1], row[2], row[3]);
    let weight = row.get(4).copied().unwrap_or(1.0);
    if k.is_nan() || k < 2.0 {
        return exec_err!("{NAME}: the ensemble size k must be at least 2, got {k}");
    }
    if !(variance.is_finite() && variance >= 0.0) {
        return exec_err!("{NAME}: variance must be finite and non-negative, got {variance}");
    }
    if !(weight.is_finite() && weight >= 0.0) {
        return exec_err!("{NAME}: weight must be finite and non-negative, got {weight}");
    }
    Ok([
        weight * variance * spread_correction(k),
        weight * (mean - obs) * (mean - obs),
    ])
}

/// NULL without rows, or with a perfect mean (no error to compare with).
fn ratio([spread, squared_error]: [f64; 2]) -> Option<f64> {
    (squared_error > 0.0).then(|| (spread / squared_error).sqrt())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::prelude::SessionContext;

    use super::super::register;
    use super::*;
    use crate::spread_skill;

    /// Column `column` of the query's result, or its error as text.
    async fn values(sql: &str, column: usize) -> Result<Vec<Option<f64>>, String> {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = uqcast_boxed::collect(&ctx, sql)
            .await
            .map_err(|e| e.to_string())?;
        Ok(batches
            .iter()
            .flat_map(|b| b.column(column).as_primitive::<Float64Type>().iter())
            .collect())
    }

    const CELLS: &str = "(VALUES (1.0, 0.0, 0.5, 3, 1.0), (-1.0, 0.0, 1.0, 3, 3.0), \
                         (NULL, 0.0, 9.0, 3, 1.0)) AS c(obs, mean, var, k, w)";

    /// Two cells that miss by ±1 with variances 0.5 and 1 from k = 3
    /// samples: corrected spreads 0.5·4/2 = 1 and 2, squared errors 1 and
    /// 1, ratio √(3/2); weighted 1 : 3, √((1 + 6)/(1 + 3)). The library's
    /// `spread_skill` agrees, and the row without an observation drops out.
    /// Tolerance 1e-12 (a handful of float operations).
    #[tokio::test]
    async fn spread_skill_in_sql_is_the_hand_worked_ratio() {
        let plain = values(
            &format!("SELECT spread_skill(obs, mean, var, k) FROM {CELLS}"),
            0,
        )
        .await
        .unwrap();
        let plain = plain[0].unwrap();
        assert!((plain - 1.5f64.sqrt()).abs() < 1e-12, "{plain}");
        let library = spread_skill(&[0.0, 0.0], &[0.5, 1.0], &[1.0, -1.0], 3).unwrap();
        assert!((plain - library).abs() < 1e-12, "{plain} vs {library}");

        let weighted = values(
            &format!("SELECT spread_skill(obs, mean, var, k, w) FROM {CELLS}"),
            0,
        )
        .await
        .unwrap();
        assert!(
            (weighted[0].unwrap() - 1.75f64.sqrt()).abs() < 1e-12,
            "{weighted:?}"
        );

        // One ratio per group: w = 1 holds the first cell (1/1), w = 3 the
        // second (2/1).
        let grouped = values(
            &format!(
                "SELECT w, spread_skill(obs, mean, var, k) FROM {CELLS} GROUP BY w ORDER BY w"
            ),
            1,
        )
        .await
        .unwrap();
        assert_eq!(grouped.len(), 2);
        assert!((grouped[0].unwrap() - 1.0).abs() < 1e-12, "{grouped:?}");
        assert!(
            (grouped[1].unwrap() - 2f64.sqrt()).abs() < 1e-12,
            "{grouped:?}"
        );

        // A perfect mean has no error to compare the spread with.
        assert_eq!(
            values("SELECT spread_skill(1.0, 1.0, 0.5, 4)", 0).await,
            Ok(vec![None])
        );
    }

    /// Bad rows end the query with the function and the value named.
    #[tokio::test]
    async fn bad_rows_fail_the_query() {
        for (args, needle) in [
            (
                "0.0, 1.0, 0.5, 1",
                "the ensemble size k must be at least 2, got 1",
            ),
            (
                "0.0, 1.0, -0.5, 8",
                "variance must be finite and non-negative, got -0.5",
            ),
            (
                "0.0, 1.0, 0.5, 8, -1.0",
                "weight must be finite and non-negative, got -1",
            ),
            (
                "0.0, 1.0, 1.0 / 0.0, 8",
                "variance must be finite and non-negative, got inf",
            ),
        ] {
            let err = values(&format!("SELECT spread_skill({args})"), 0)
                .await
                .unwrap_err();
            assert!(
                err.contains("spread_skill: ") && err.contains(needle),
                "{err}"
            );
        }
    }
}
