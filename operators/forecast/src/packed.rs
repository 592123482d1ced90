//! A step as training holds it: each cell's kelvin value as a 16-bit code
//! over the step's own range, as CF packing (`scale_factor`, `add_offset`)
//! stores ERA5 in the CDS's NetCDF3 files.
//!
//! Training reads every cell of every step it pairs, and holds them for
//! all its updates, so their size bounds the span it can train on. Two
//! bytes a cell instead of four doubles that span. The cost is a rounding
//! of at most half a code, (max − min) / 131,070 of the step's range:
//! 0.0006 K for a North American field spanning 80 K, 0.0015 K for the
//! widest a plausible t2m can span (150–350 K). That is no coarser than
//! the CDS's own int16 packing of the same data (a file's range holds its
//! steps'), and its variance, at most 8 × 10⁻⁷ K², is far below any noise
//! a 6-hour t2m change has.

use crate::pairs::StepField;

/// The codes' count less one: a step's minimum is code 0, its maximum
/// this.
const TOP_CODE: f64 = u16::MAX as f64;

/// One complete step, packed: kelvin = `offset + scale · code`.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedStep {
    /// Valid time, UTC microseconds.
    pub time: i64,
    offset: f32,
    scale: f32,
    codes: Vec<u16>,
}

/// What training holds a cell of a step in.
pub const BYTES_PER_CELL: u64 = size_of::<u16>() as u64;

impl PackedStep {
    /// Packs a whole step. Its values are finite: the assembler refuses a
    /// step with a NULL or NaN cell before it is whole.
    pub fn pack(step: &StepField) -> Self {
        if step.values.is_empty() {
            return Self {
                time: step.time,
                offset: 0.0,
                scale: 0.0,
                codes: Vec::new(),
            };
        }
        let (low, high) = step
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        // In f64, so the codes round to the nearest of the step's levels;
        // a step of one value has scale 0 and every code 0.
        let scale = (f64::from(high) - f64::from(low)) / TOP_CODE;
        let code = |v: f32| {
            if scale == 0.0 {
                0
            } else {
                ((f64::from(v) - f64::from(low)) / scale).round() as u16
            }
        };
        Self {
            time: step.time,
            offset: low,
            scale: scale as f32,
            codes: step.values.iter().map(|&v| code(v)).collect(),
        }
    }

    /// The kelvin value of `cell`, within half a code of the value packed.
    pub fn kelvin(&self, cell: usize) -> f32 {
        self.offset + self.scale * f32::from(self.codes[cell])
    }

    /// Every byte that decides the values, for a fingerprint of the data.
    pub fn feed(&self, eat: &mut impl FnMut(&[u8])) {
        eat(&self.time.to_le_bytes());
        eat(&self.offset.to_bits().to_le_bytes());
        eat(&self.scale.to_bits().to_le_bytes());
        for code in &self.codes {
            eat(&code.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What only the tests need of a packed step.
    impl PackedStep {
        /// The cells held.
        fn cells(&self) -> usize {
            self.codes.len()
        }

        /// The most a cell's value can be from the value packed: half a code,
        /// and the rounding of the decoding's float arithmetic.
        fn resolution(&self) -> f32 {
            self.scale / 2.0 + (self.offset.abs() + self.scale * TOP_CODE as f32) * f32::EPSILON
        }
    }

    fn step(values: Vec<f32>) -> StepField {
        StepField { time: 7, values }
    }

    #[test]
    fn every_value_comes_back_within_half_a_code_of_its_steps_range() {
        // A field spanning the plausible range's width, with values placed
        // between codes, and its extremes.
        let values: Vec<f32> = (0..10_000)
            .map(|i| 150.0 + 200.0 * ((i as f32 * 0.618_034).fract()))
            .chain([150.0, 350.0])
            .collect();
        let packed = PackedStep::pack(&step(values.clone()));
        let half_code = 200.0 / 131_070.0;
        assert!(
            packed.resolution() < 1.1 * half_code,
            "{}",
            packed.resolution()
        );
        let worst = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (packed.kelvin(i) - v).abs())
            .fold(0.0, f32::max);
        assert!(worst <= packed.resolution(), "{worst} K");
        // The rounding is used: a value's error is usually well above the
        // float arithmetic's, so codes are not simply truncated.
        assert!(worst > 0.9 * half_code, "{worst} K");
        assert_eq!(
            (packed.kelvin(10_000), packed.kelvin(10_001)),
            (150.0, 350.0)
        );
        assert_eq!((packed.time, packed.cells()), (7, 10_002));
    }

    #[test]
    fn a_narrow_field_keeps_finer_steps_and_a_constant_one_is_exact() {
        // 80 K of North America: 0.6 mK at most.
        let values: Vec<f32> = (0..1_000)
            .map(|i| 230.0 + 0.08 * i as f32 + 0.0003)
            .collect();
        let packed = PackedStep::pack(&step(values.clone()));
        assert!(packed.resolution() < 0.00066, "{}", packed.resolution());
        for (i, v) in values.iter().enumerate() {
            assert!(
                (packed.kelvin(i) - v).abs() <= packed.resolution(),
                "cell {i}"
            );
        }
        let flat = PackedStep::pack(&step(vec![273.15; 5]));
        assert!((0..5).all(|i| flat.kelvin(i) == 273.15));
        assert_eq!(PackedStep::pack(&step(vec![])).cells(), 0);
    }

    #[test]
    fn the_fingerprint_bytes_change_with_any_value() {
        let bytes = |values: Vec<f32>| {
            let mut all = Vec::new();
            PackedStep::pack(&step(values)).feed(&mut |b: &[u8]| all.extend_from_slice(b));
            all
        };
        let base = bytes(vec![250.0, 260.0, 270.0]);
        assert_ne!(base, bytes(vec![250.0, 261.0, 270.0]));
        assert_ne!(base, bytes(vec![250.0, 260.0, 271.0]));
        assert_eq!(base, bytes(vec![250.0, 260.0, 270.0]));
    }
}
