//! A `t2m` labelled kelvin must hold kelvin. The `units` attribute is
//! checked when a file is inspected; this checks the values of each step
//! read, because a file whose values are in °C (or °F) under `units = "K"`
//! otherwise reads fine and turns into forecasts of 70 K with "ok".

use std::ops::RangeInclusive;

use datafusion::arrow::array::Float32Array;

/// What a 2 m temperature can be, with room to spare: the coldest and
/// hottest air temperatures measured are 184 K and 330 K. Every °C and °F
/// value of the Earth's air lies below 150.
pub const T2M_KELVIN: RangeInclusive<f32> = 150.0..=350.0;

/// The first valid (non-NULL) value outside `range`, with its index.
pub fn first_outside(values: &Float32Array, range: &RangeInclusive<f32>) -> Option<(usize, f32)> {
    let (low, high) = (*range.start(), *range.end());
    // NaN counts as outside (decoding makes stored NaN NULL, so none is valid).
    let outside = |v: f32| !((v >= low) & (v <= high));
    // The common case is no value outside: a branch-free count over every
    // slot (NULL ones included) vectorises, where a search with an early
    // exit does not and cost a fifth of a scan. Only a count above zero
    // pays for the search, which skips NULL slots.
    let count: u32 = values.values().iter().map(|&v| u32::from(outside(v))).sum();
    if count == 0 {
        return None;
    }
    values
        .iter()
        .enumerate()
        .find_map(|(i, v)| v.filter(|&v| outside(v)).map(|v| (i, v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn finds_the_first_value_outside_skipping_nulls() {
        let kelvin = Float32Array::from(vec![Some(250.0), None, Some(300.5)]);
        assert_eq!(first_outside(&kelvin, &T2M_KELVIN), None);
        let celsius = Float32Array::from(vec![None, Some(151.0), Some(-31.5), Some(20.0)]);
        assert_eq!(first_outside(&celsius, &T2M_KELVIN), Some((2, -31.5)));
        let edges = Float32Array::from(vec![150.0, 350.0]);
        assert_eq!(first_outside(&edges, &T2M_KELVIN), None);
        let above = Float32Array::from(vec![300.0, 350.1]);
        assert_eq!(first_outside(&above, &T2M_KELVIN), Some((1, 350.1)));
        // A NULL slot holds whatever its fill decoded to: not a value.
        let fill_only = Float32Array::from(vec![Some(250.0), None]);
        let mut slots = fill_only.values().to_vec();
        slots[1] = -1e9;
        let filled = Float32Array::new(slots.into(), fill_only.nulls().cloned());
        assert_eq!(first_outside(&filled, &T2M_KELVIN), None);
        let nan = Float32Array::from(vec![250.0, f32::NAN]);
        assert_eq!(first_outside(&nan, &T2M_KELVIN).map(|(i, _)| i), Some(1));
    }
}
