//! Training pairs (field at t, field at t + lead) from whole steps.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use uqcast_hyperdm::TrainingData;
use uqcast_hyperdm::error::CandleContext;

use crate::features::{COND_CHANNELS, Normalisation, change_target, conditioning};
use crate::grid::ModelGrid;

/// One complete step: kelvin values, row-major over the model grid.
#[derive(Debug, Clone, PartialEq)]
pub struct StepField {
    /// Valid time, UTC microseconds.
    pub time: i64,
    pub values: Vec<f32>,
}

/// The (condition, change) pairs of a set of steps, ready for minibatches.
#[derive(Debug)]
pub struct PairData {
    rows: usize,
    cols: usize,
    cond: Vec<f32>,
    target: Vec<f32>,
    /// Steps that had no step exactly one lead later (gaps, the last step).
    pub unpaired: usize,
    pub pairs: usize,
}

impl PairData {
    /// Pairs every step with the step exactly `lead_micros` later, if any.
    pub fn build(
        steps: &[StepField],
        grid: &ModelGrid,
        norm: &Normalisation,
        lead_micros: i64,
    ) -> Self {
        let by_time: HashMap<i64, &StepField> = steps.iter().map(|s| (s.time, s)).collect();
        let mut ordered: Vec<&StepField> = steps.iter().collect();
        ordered.sort_by_key(|s| s.time);
        let (mut cond, mut target) = (Vec::new(), Vec::new());
        let (mut pairs, mut unpaired) = (0, 0);
        for now in ordered {
            let target_time = now.time + lead_micros;
            match by_time.get(&target_time) {
                Some(next) => {
                    cond.extend(conditioning(norm, grid, &now.values, target_time));
                    target.extend(change_target(norm, &now.values, &next.values));
                    pairs += 1;
                }
                None => unpaired += 1,
            }
        }
        Self {
            rows: grid.rows(),
            cols: grid.cols(),
            cond,
            target,
            unpaired,
            pairs,
        }
    }
}

impl TrainingData for PairData {
    fn len(&self) -> usize {
        self.pairs
    }

    fn batch(
        &self,
        rows: &[usize],
        device: &Device,
    ) -> uqcast_hyperdm::Result<(Tensor, Tensor)> {
        let cells = self.rows * self.cols;
        let mut x0 = Vec::with_capacity(rows.len() * cells);
        let mut y = Vec::with_capacity(rows.len() * COND_CHANNELS * cells);
        for &r in rows {
            x0.extend_from_slice(&self.target[r * cells..(r + 1) * cells]);
            y.extend_from_slice(&self.cond[r * COND_CHANNELS * cells..(r + 1) * COND_CHANNELS * cells]);
        }
        let n = rows.len();
        Ok((
            Tensor::from_vec(x0, (n, 1, self.rows, self.cols), device).ctx("training batch")?,
            Tensor::from_vec(y, (n, COND_CHANNELS, self.rows, self.cols), device)
                .ctx("training batch")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_exactly_one_lead_apart_and_gaps_are_counted() {
        let grid = ModelGrid::new(vec![10.0], vec![0.0, 1.0]);
        let h = 3_600_000_000;
        let step = |hours: i64, k: f32| StepField {
            time: hours * h,
            values: vec![k, k + 1.0],
        };
        // 0→6 pairs, 6→12 missing (gap), 18→24 pairs, 24 has no successor.
        let steps = [step(18, 280.0), step(0, 270.0), step(6, 275.15), step(24, 290.3)];
        let data = PairData::build(&steps, &grid, &Normalisation::default(), 6 * h);
        assert_eq!((data.pairs, data.unpaired), (2, 2));
        let (x0, y) = data.batch(&[0, 1], &Device::Cpu).unwrap();
        assert_eq!(x0.dims(), &[2, 1, 1, 2]);
        assert_eq!(y.dims(), &[2, COND_CHANNELS, 1, 2]);
        let x0: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        // 270 → 275.15 is +1 unit; 280 → 290.3 is +2 units (5.15 K each).
        for (got, want) in x0.iter().zip([1.0, 1.0, 2.0, 2.0]) {
            assert!((got - want).abs() < 1e-4, "{x0:?}");
        }
    }
}
