//! Walking a hyperslab one run at a time: a run is the cells along the
//! last dimension, contiguous in row-major storage, so both direct reads
//! (NetCDF3 spans, NetCDF4 chunks) copy a slab run by run.

use std::ops::Range;

/// Calls `f` with the first index of every run of `ranges` (one range per
/// dimension, none empty), in row-major order: every index of the leading
/// dimensions, with the last dimension at its range's start.
pub fn for_each_run_start(ranges: &[Range<usize>], mut f: impl FnMut(&[usize])) {
    let mut index: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    let leading = ranges.len().saturating_sub(1);
    loop {
        f(&index);
        // The next index, the last of the leading dimensions fastest.
        let mut d = leading;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < ranges[d].end {
                break;
            }
            index[d] = ranges[d].start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(ranges: &[Range<usize>]) -> Vec<Vec<usize>> {
        let mut seen = Vec::new();
        for_each_run_start(ranges, |i| seen.push(i.to_vec()));
        seen
    }

    #[test]
    fn run_starts_in_row_major_order() {
        assert_eq!(
            starts(&[1..3, 4..6, 7..9]),
            vec![vec![1, 4, 7], vec![1, 5, 7], vec![2, 4, 7], vec![2, 5, 7]]
        );
        // One dimension: one run (a one-element array of ranges, meant).
        #[allow(clippy::single_range_in_vec_init)]
        let one_dimension = [2..5];
        assert_eq!(starts(&one_dimension), vec![vec![2]]);
        assert_eq!(starts(&[]), vec![Vec::<usize>::new()]);
    }
}
