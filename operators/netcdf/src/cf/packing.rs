//! CF packing and missing data: `unpacked = packed × scale_factor + add_offset`,
//! with `_FillValue`, `missing_value` and NaN becoming NULL.
//!
//! The netcdf crate returns raw stored values; it does not apply any of this.
//! Fill values are compared in the packed domain, as CF specifies.

use datafusion::arrow::array::Float32Array;
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer};

/// A stored element type that can be decoded to f32.
pub trait RawSample: Copy + Default + Send + Sync + netcdf::NcTypeDescriptor + 'static {
    fn to_f64(self) -> f64;
    /// The value stored little-endian in `bytes` (exactly its size).
    fn from_le(bytes: &[u8]) -> Self;
    /// The value stored big-endian in `bytes` (exactly its size), as
    /// classic NetCDF stores every value.
    fn from_be(bytes: &[u8]) -> Self;
    /// The values themselves when they are already f32, so decoding an
    /// unpacked float variable moves them into the column instead of
    /// copying every value.
    fn into_f32(values: Vec<Self>) -> Result<Vec<f32>, Vec<Self>> {
        Err(values)
    }
}

macro_rules! raw_sample {
    ($($t:ty),*) => {$(
        impl RawSample for $t {
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_le(bytes: &[u8]) -> Self {
                let mut le = [0u8; size_of::<$t>()];
                le.copy_from_slice(bytes);
                <$t>::from_le_bytes(le)
            }
            #[inline(always)]
            fn from_be(bytes: &[u8]) -> Self {
                let mut be = [0u8; size_of::<$t>()];
                be.copy_from_slice(bytes);
                <$t>::from_be_bytes(be)
            }
        }
    )*};
}
raw_sample!(i8, u8, i16, u16, i32, u32, f64);

impl RawSample for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_le(bytes: &[u8]) -> Self {
        let mut le = [0u8; 4];
        le.copy_from_slice(bytes);
        f32::from_le_bytes(le)
    }
    #[inline(always)]
    fn from_be(bytes: &[u8]) -> Self {
        let mut be = [0u8; 4];
        be.copy_from_slice(bytes);
        f32::from_be_bytes(be)
    }
    fn into_f32(values: Vec<Self>) -> Result<Vec<f32>, Vec<Self>> {
        Ok(values)
    }
}

/// How to turn one variable's stored values into physical values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Packing {
    scale: f64,
    offset: f64,
    /// Up to two fill/missing values checked branch-free; NaN when unused.
    fills: [f64; 2],
    /// Rare: `missing_value` given as a longer vector.
    extra_fills: Vec<f64>,
}

impl Default for Packing {
    fn default() -> Self {
        Self::new(1.0, 0.0, &[])
    }
}

impl Packing {
    /// `scale`/`offset` from `scale_factor`/`add_offset` (1 and 0 when absent);
    /// `fills` from `_FillValue` and `missing_value`, in the packed domain.
    pub fn new(scale: f64, offset: f64, fills: &[f64]) -> Self {
        let mut distinct: Vec<f64> = Vec::new();
        for &f in fills {
            if !f.is_nan() && !distinct.contains(&f) {
                distinct.push(f);
            }
        }
        let first = distinct.first().copied().unwrap_or(f64::NAN);
        let second = distinct.get(1).copied().unwrap_or(first);
        let extra_fills = distinct.iter().skip(2).copied().collect();
        Self {
            scale,
            offset,
            fills: [first, second],
            extra_fills,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn offset(&self) -> f64 {
        self.offset
    }

    fn is_identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }

    /// Decodes stored values into a Float32 column (NULL where missing).
    pub fn decode<T: RawSample>(&self, raw: Vec<T>) -> Float32Array {
        let nulls = self.nulls(&raw);
        let values: Vec<f32> = if self.is_identity() {
            T::into_f32(raw).unwrap_or_else(|raw| raw.iter().map(|&r| r.to_f64() as f32).collect())
        } else {
            let (scale, offset) = (self.scale, self.offset);
            raw.iter()
                .map(|&r| (r.to_f64() * scale + offset) as f32)
                .collect()
        };
        Float32Array::new(values.into(), nulls)
    }

    /// The NULL mask of `raw`, or `None` when every value is valid. Most
    /// steps have no missing value: a branch-free count over them
    /// vectorises, where building the mask value by value took half of a
    /// NetCDF3 scan's time, so only a count above zero builds it.
    fn nulls<T: RawSample>(&self, raw: &[T]) -> Option<NullBuffer> {
        let [first, second] = self.fills;
        // `|`, not `||`: no branches. An unused fill slot is NaN, which equals nothing.
        let missing = |v: f64| v.is_nan() | (v == first) | (v == second);
        if self.extra_fills.is_empty() {
            let count: usize = raw.iter().map(|&r| usize::from(missing(r.to_f64()))).sum();
            if count == 0 {
                return None;
            }
        }
        let valid = BooleanBuffer::collect_bool(raw.len(), |i| {
            let v = raw[i].to_f64();
            !missing(v) && !self.extra_fills.contains(&v)
        });
        let nulls = NullBuffer::new(valid);
        (nulls.null_count() > 0).then_some(nulls)
    }

    /// Packs a physical value for writing (inverse of [`Packing::decode`]),
    /// rounding to the nearest representable packed integer.
    pub fn pack_i16(&self, value: f64) -> i16 {
        ((value - self.offset) / self.scale)
            .round()
            .clamp(i16::MIN as f64, i16::MAX as f64) as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;
    use proptest::prelude::*;

    /// The obviously-correct scalar decoder the fast path must agree with.
    fn reference(raw: &[i16], scale: f64, offset: f64, fills: &[f64]) -> Vec<Option<f32>> {
        raw.iter()
            .map(|&r| {
                if fills.contains(&(r as f64)) {
                    None
                } else {
                    Some((r as f64 * scale + offset) as f32)
                }
            })
            .collect()
    }

    fn as_options(a: &Float32Array) -> Vec<Option<f32>> {
        (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i)))
            .collect()
    }

    proptest! {
        #[test]
        fn int16_decoding_matches_reference(
            raw in proptest::collection::vec(any::<i16>(), 0..300),
            scale in 1e-4f64..1.0,
            offset in -500f64..500.0,
            fill in prop::sample::select(vec![-32767i16, -32768, 0, 32767]),
            also_missing in any::<bool>(),
        ) {
            let fills: Vec<f64> = if also_missing { vec![fill as f64, -1.0] } else { vec![fill as f64] };
            let packing = Packing::new(scale, offset, &fills);
            let decoded = packing.decode(raw.clone());
            prop_assert_eq!(as_options(&decoded), reference(&raw, scale, offset, &fills));
        }

        #[test]
        fn pack_then_decode_is_within_half_a_step(v in 210f64..315.0) {
            let packing = Packing::new(0.0017, 262.0, &[-32767.0]);
            let back = packing.decode(vec![packing.pack_i16(v)]).value(0) as f64;
            prop_assert!((back - v).abs() <= 0.0017 / 2.0 + 1e-4);
        }

        #[test]
        fn float_nan_and_fill_become_null(raw in proptest::collection::vec(prop_oneof![
            Just(f32::NAN), Just(9.96921e36f32), -100f32..400.0], 0..200)) {
            let packing = Packing::new(1.0, 0.0, &[9.96921e36f32 as f64]);
            let decoded = packing.decode(raw.clone());
            for (i, r) in raw.iter().enumerate() {
                let expect_null = r.is_nan() || *r == 9.96921e36f32;
                prop_assert_eq!(decoded.is_null(i), expect_null);
                if !expect_null { prop_assert_eq!(decoded.value(i), *r); }
            }
        }
    }

    #[test]
    fn no_nulls_means_no_null_buffer() {
        let decoded = Packing::new(0.5, 1.0, &[-32767.0]).decode(vec![0i16, 2, 4]);
        assert!(decoded.nulls().is_none());
        assert_eq!(decoded.values().to_vec(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn more_than_two_missing_values() {
        let decoded = Packing::new(1.0, 0.0, &[1.0, 2.0, 3.0]).decode(vec![1i16, 2, 3, 4]);
        assert_eq!(as_options(&decoded), vec![None, None, None, Some(4.0)]);
    }
}
