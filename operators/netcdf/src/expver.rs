//! ERA5 and ERA5T in one variable. The CDS answered a request that mixed
//! final ERA5 steps (expver 1) with steps of ERA5T, their preliminary
//! near-real-time extension (expver 5), with variables of dimensions
//! (time, expver, latitude, longitude): each step's field in one slice, the
//! other slices filled. Such a variable is read as the (time, latitude,
//! longitude) column it stands for: per cell, the first slice that has a
//! value, taking them in ascending expver, so final data win over
//! preliminary ones wherever a file holds both.

use datafusion::arrow::array::{Array, Float32Array};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer};

/// The dimension's name in CDS files.
pub const DIMENSION: &str = "expver";
/// The most slices read: the CDS wrote two (1 and 5); more is a damaged or
/// foreign file, whose variable stays out of the table, explained.
pub const MAX_SLICES: usize = 8;

/// How to merge a variable's expver slices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expver {
    /// Slice indices in the order they are tried: ascending expver, or file
    /// order where the file has no numeric `expver` coordinate.
    pub order: Vec<usize>,
}

impl Expver {
    /// The order for `slices` slices whose expver numbers are `numbers`
    /// (none: file order).
    pub fn new(slices: usize, numbers: Option<&[f64]>) -> Self {
        let mut order: Vec<usize> = (0..slices).collect();
        if let Some(numbers) = numbers.filter(|n| n.len() == slices) {
            order.sort_by(|&a, &b| numbers[a].total_cmp(&numbers[b]));
        }
        Self { order }
    }

    pub fn slices(&self) -> usize {
        self.order.len()
    }

    /// One field of `cells` from `stacked`, the decoded slices one after the
    /// other (`slices × cells` values; NULL where a slice has no value).
    pub fn merge(&self, stacked: &Float32Array, cells: usize) -> Float32Array {
        debug_assert_eq!(stacked.len(), self.slices() * cells);
        let mut values = vec![0f32; cells];
        let valid = BooleanBuffer::collect_bool(cells, |cell| {
            self.order
                .iter()
                .map(|&slice| slice * cells + cell)
                .find(|&i| stacked.is_valid(i))
                .map(|i| values[cell] = stacked.value(i))
                .is_some()
        });
        let nulls = NullBuffer::new(valid);
        Float32Array::new(values.into(), (nulls.null_count() > 0).then_some(nulls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cell_takes_the_lowest_expver_that_has_a_value() {
        // Slices in file order expver 5, then 1; three cells.
        let expver = Expver::new(2, Some(&[5.0, 1.0]));
        assert_eq!(expver.order, vec![1, 0]);
        let stacked = Float32Array::from(vec![
            Some(10.0), // expver 5
            None,
            Some(30.0),
            Some(11.0), // expver 1
            Some(21.0),
            None,
        ]);
        let merged = expver.merge(&stacked, 3);
        assert_eq!(
            merged.iter().collect::<Vec<_>>(),
            vec![Some(11.0), Some(21.0), Some(30.0)]
        );
        assert_eq!(merged.null_count(), 0);
        assert!(merged.nulls().is_none());
    }

    #[test]
    fn a_cell_no_slice_has_is_null_and_file_order_is_the_fallback() {
        let expver = Expver::new(2, None);
        assert_eq!(expver.order, vec![0, 1]);
        let stacked = Float32Array::from(vec![Some(1.0), None, Some(2.0), None]);
        let merged = expver.merge(&stacked, 2);
        assert_eq!(merged.iter().collect::<Vec<_>>(), vec![Some(1.0), None]);
        // Numbers that do not match the slices are not used.
        assert_eq!(Expver::new(2, Some(&[5.0])).order, vec![0, 1]);
    }
}
