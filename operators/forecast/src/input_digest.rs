//! A step's input summarised in a few bytes, to tell whether it changed:
//! its cell count and the sum of its cells' hashes, which does not depend
//! on the order rows come in (a source in its file's order, a forecast
//! file in the model grid's). The job compares the input of forecast steps
//! with the input their files store (`src/job/revisions.rs`); here, in an
//! optimised crate, because it hashes every cell of every rechecked step.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;

/// One step's input: how many cells, and the sum of their hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    rows: u64,
    sum: u64,
}

impl Digest {
    pub fn add(&mut self, latitude: f64, longitude: f64, t2m: Option<f32>) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(cell_hash(latitude, longitude, t2m));
    }
}

/// A cell's hash: its position to 1e-4 degrees (the model grid's
/// coordinates and the file's may differ in the last bits), its value
/// exactly (the forecast stores the value it was given, as f32).
fn cell_hash(latitude: f64, longitude: f64, t2m: Option<f32>) -> u64 {
    // Saturating float-to-int casts: any coordinate hashes to something.
    let at = |degrees: f64| (degrees * 1e4).round() as i64 as u64;
    let value = t2m.map_or(u64::MAX, |v| u64::from(v.to_bits()));
    mix(mix(mix(at(latitude)) ^ at(longitude)) ^ value)
}

/// SplitMix64's finaliser: every input bit reaches every output bit, so
/// summing the hashes of distinct cells does not cancel.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The digests of the steps in batches of `step` (a timestamp),
/// `latitude`, `longitude` and `t2m`, by the step's UTC microseconds.
#[derive(Debug, Default)]
pub struct StepDigests {
    steps: HashMap<i64, Digest>,
}

impl StepDigests {
    /// Adds a batch's rows; rows without a step are left out. The error is
    /// Arrow's, for a column that does not cast: the caller says which
    /// side (the source, or the forecast files) it read.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let column = |i: usize, to: &DataType| cast(batch.column(i), to);
        let step = column(0, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let (latitude, longitude) = (
            column(1, &DataType::Float64)?,
            column(2, &DataType::Float64)?,
        );
        let t2m = column(3, &DataType::Float32)?;
        let step = step.as_primitive::<TimestampMicrosecondType>();
        let (latitude, longitude) = (
            latitude.as_primitive::<Float64Type>(),
            longitude.as_primitive::<Float64Type>(),
        );
        let t2m = t2m.as_primitive::<Float32Type>();
        // Rows come in runs of one step: one map lookup a run.
        let mut run: Option<(i64, Digest)> = None;
        for row in 0..batch.num_rows() {
            if step.is_null(row) {
                continue;
            }
            let time = step.value(row);
            if run.is_some_and(|(t, _)| t != time) {
                self.merge(run.take());
            }
            let (_, digest) = run.get_or_insert((time, Digest::default()));
            let value = (!t2m.is_null(row)).then(|| t2m.value(row));
            digest.add(latitude.value(row), longitude.value(row), value);
        }
        self.merge(run);
        Ok(())
    }

    fn merge(&mut self, run: Option<(i64, Digest)>) {
        if let Some((time, part)) = run {
            let digest = self.steps.entry(time).or_default();
            digest.rows += part.rows;
            digest.sum = digest.sum.wrapping_add(part.sum);
        }
    }

    pub fn into_map(self) -> HashMap<i64, Digest> {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(cells: &[(f64, f64, Option<f32>)]) -> Digest {
        let mut d = Digest::default();
        for &(lat, lon, t) in cells {
            d.add(lat, lon, t);
        }
        d
    }

    #[test]
    fn a_digest_does_not_depend_on_row_order() {
        let cells = [(45.0, 260.0, Some(280.5)), (46.0, 260.0, Some(281.0))];
        let reversed = [cells[1], cells[0]];
        assert_eq!(digest(&cells), digest(&reversed));
    }

    #[test]
    fn a_digest_sees_one_value_one_bit_apart_a_moved_cell_a_missing_one_and_a_null() {
        let base = [(45.0, 260.0, Some(280.5)), (46.0, 260.0, Some(281.0))];
        let d = digest(&base);
        let nudged = f32::from_bits(280.5f32.to_bits() + 1);
        assert_ne!(d, digest(&[(45.0, 260.0, Some(nudged)), base[1]]));
        assert_ne!(d, digest(&[(45.0, 261.0, Some(280.5)), base[1]]));
        assert_ne!(d, digest(&base[..1]));
        assert_ne!(d, digest(&[(45.0, 260.0, None), base[1]]));
        // Two cells' values swapped: the same multiset of values, other cells.
        assert_ne!(
            d,
            digest(&[(45.0, 260.0, Some(281.0)), (46.0, 260.0, Some(280.5))])
        );
    }

    #[test]
    fn coordinates_agree_to_a_ten_thousandth_of_a_degree() {
        let a = digest(&[(45.0, 260.0, Some(280.5))]);
        let b = digest(&[(45.0 + 1e-9, 260.0 - 1e-9, Some(280.5))]);
        assert_eq!(a, b);
    }

    /// Batches holding runs of several steps, a step split across two
    /// batches, and a row without a step: each step's digest is its cells'.
    #[test]
    fn steps_split_across_batches_sum_to_their_cells_digest() {
        use datafusion::arrow::array::TimestampMicrosecondArray;
        use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array};
        use std::sync::Arc;
        let rows = |r: &[(Option<i64>, f64, f32)]| {
            RecordBatch::try_from_iter([
                (
                    "step",
                    Arc::new(TimestampMicrosecondArray::from(
                        r.iter().map(|x| x.0).collect::<Vec<_>>(),
                    )) as ArrayRef,
                ),
                (
                    "latitude",
                    Arc::new(Float64Array::from_iter_values(r.iter().map(|x| x.1))) as ArrayRef,
                ),
                (
                    "longitude",
                    Arc::new(Float64Array::from(vec![260.0; r.len()])) as ArrayRef,
                ),
                (
                    "t2m",
                    Arc::new(Float32Array::from_iter_values(r.iter().map(|x| x.2))) as ArrayRef,
                ),
            ])
            .unwrap()
        };
        let mut d = StepDigests::default();
        d.add(&rows(&[
            (Some(1), 45.0, 280.0),
            (Some(2), 45.0, 281.0),
            (None, 9.0, 9.0),
        ]))
        .unwrap();
        d.add(&rows(&[(Some(2), 46.0, 282.0), (Some(1), 46.0, 283.0)]))
            .unwrap();
        let d = d.into_map();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[&1],
            digest(&[(45.0, 260.0, Some(280.0)), (46.0, 260.0, Some(283.0))])
        );
        assert_eq!(
            d[&2],
            digest(&[(45.0, 260.0, Some(281.0)), (46.0, 260.0, Some(282.0))])
        );
    }
}
