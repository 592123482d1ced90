//! Training pairs (field at t, field at t + lead) from whole steps; a
//! minibatch row is one cell of one pair.
//!
//! The pairs point into the steps read, packed ([`PackedStep`]): a row's
//! condition and target are made from the kelvin values when its minibatch
//! is drawn, so training holds 2 bytes a cell per step rather than a
//! normalised copy and a target per pair as well (a minibatch of 2,048 rows
//! costs microseconds of that arithmetic).

use std::collections::{BTreeSet, HashMap};

use candle_core::{Device, Tensor};
use uqcast_hyperdm::TrainingData;
use uqcast_hyperdm::error::CandleContext;

use crate::features::{Normalisation, Patch, change, condition, solar_hours};
use crate::grid::ModelGrid;
use crate::packed::PackedStep;

/// One complete step: kelvin values, row-major over the model grid.
#[derive(Debug, Clone, PartialEq)]
pub struct StepField {
    /// Valid time, UTC microseconds.
    pub time: i64,
    pub values: Vec<f32>,
}

/// The (condition, change) pairs of a set of steps.
#[derive(Debug)]
pub struct PairData<'a> {
    grid: ModelGrid,
    patch: Patch,
    norm: Normalisation,
    pairs: Vec<Pair<'a>>,
    /// Steps that had no step exactly one lead later (gaps, the last step).
    pub unpaired: usize,
}

#[derive(Debug)]
struct Pair<'a> {
    now: &'a PackedStep,
    next: &'a PackedStep,
    /// The local solar hour of each column at the target time.
    solar: Vec<(f32, f32)>,
}

impl<'a> PairData<'a> {
    /// Pairs every step with the step exactly `lead_micros` later, if any;
    /// with `only`, just the steps starting at those times (a sample drawn
    /// from a longer span, whose steps may also pair among themselves).
    pub fn build(
        steps: &'a [PackedStep],
        grid: &ModelGrid,
        norm: &Normalisation,
        patch: Patch,
        lead_micros: i64,
        only: Option<&BTreeSet<i64>>,
    ) -> Self {
        let by_time: HashMap<i64, &PackedStep> = steps.iter().map(|s| (s.time, s)).collect();
        let mut ordered: Vec<&PackedStep> = steps.iter().collect();
        ordered.sort_by_key(|s| s.time);
        let (mut pairs, mut unpaired) = (Vec::new(), 0);
        for now in ordered {
            if only.is_some_and(|starts| !starts.contains(&now.time)) {
                continue;
            }
            let target_time = now.time + lead_micros;
            match by_time.get(&target_time) {
                Some(next) => pairs.push(Pair {
                    now,
                    next,
                    solar: solar_hours(grid, target_time),
                }),
                None => unpaired += 1,
            }
        }
        Self {
            grid: grid.clone(),
            patch,
            norm: *norm,
            pairs,
            unpaired,
        }
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }
}

impl TrainingData for PairData<'_> {
    /// Rows: every cell of every pair.
    fn len(&self) -> usize {
        self.pairs() * self.grid.cells()
    }

    fn batch(&self, rows: &[usize], device: &Device) -> uqcast_hyperdm::Result<(Tensor, Tensor)> {
        let cells = self.grid.cells();
        let norm = &self.norm;
        let mut x0 = Vec::with_capacity(rows.len());
        let mut y = Vec::with_capacity(rows.len() * self.patch.cond_dim());
        for &row in rows {
            let pair = &self.pairs[row / cells];
            let cell = row % cells;
            x0.push(change(norm, pair.now.kelvin(cell), pair.next.kelvin(cell)));
            let unit = |i: usize| norm.to_unit(pair.now.kelvin(i));
            condition(&self.grid, self.patch, cell, unit, &pair.solar, &mut y);
        }
        let n = rows.len();
        Ok((
            Tensor::from_vec(x0, (n, 1), device).ctx("training batch")?,
            Tensor::from_vec(y, (n, self.patch.cond_dim()), device).ctx("training batch")?,
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
        let step = |hours: i64, k: f32| {
            PackedStep::pack(&StepField {
                time: hours * h,
                values: vec![k, k + 1.0],
            })
        };
        // 0→6 pairs, 6→12 missing (gap), 18→24 pairs, 24 has no successor.
        let steps = [
            step(18, 280.0),
            step(0, 270.0),
            step(6, 275.15),
            step(24, 290.3),
        ];
        let build = |only| {
            PairData::build(
                &steps,
                &grid,
                &Normalisation::default(),
                Patch(1),
                6 * h,
                only,
            )
        };
        let data = build(None);
        assert_eq!((data.pairs(), data.unpaired, data.len()), (2, 2, 4));
        // Only the pair drawn from 18 h, though 0 → 6 h is there as well.
        let drawn = build(Some(&BTreeSet::from([18 * h])));
        assert_eq!((drawn.pairs(), drawn.len()), (1, 2));
        let (x0, _) = drawn.batch(&[0, 1], &Device::Cpu).unwrap();
        let x0: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        assert!(x0.iter().all(|v| (v - 2.0).abs() < 1e-4), "{x0:?}");
        let (x0, y) = data.batch(&[0, 1, 2, 3], &Device::Cpu).unwrap();
        assert_eq!(x0.dims(), &[4, 1]);
        assert_eq!(y.dims(), &[4, Patch(1).cond_dim()]);
        let x0: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        // 270 → 275.15 is +1 unit; 280 → 290.3 is +2 units (5.15 K each).
        for (got, want) in x0.iter().zip([1.0, 1.0, 2.0, 2.0]) {
            assert!((got - want).abs() < 1e-4, "{x0:?}");
        }
    }
}
