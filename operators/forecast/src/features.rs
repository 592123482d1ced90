//! What the network sees and predicts, in its own units.
//!
//! Input channels (the condition y), per cell:
//! 0. t2m at the initial time, normalised with the fixed range
//!    [210, 313] K → [−1, 1] (the paper's normalisation);
//! 1. latitude / 90;
//! 2. longitude as a signed angle / 180 (so the map position is known to a
//!    convolutional network that otherwise only sees neighbourhoods);
//! 3–4. sine and cosine of the local solar hour at the valid (target) time,
//!    UTC hour + longitude / 15: the diurnal cycle is the largest part of a
//!    6-hour change and is a function of it.
//!
//! Target x₀: the 6-hour change, normalised like t2m and multiplied by
//! `residual_gain`, so its spread is of order one (a 3 K change is 0.06 in
//! normalised units). Mean, AU and EU map back to kelvin with
//! [`Normalisation::kelvin_per_unit`].

use serde::{Deserialize, Serialize};

use crate::grid::ModelGrid;

/// Condition channels, in the order documented above.
pub const COND_CHANNELS: usize = 5;

/// The fixed kelvin range and the gain of the change target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub kelvin_min: f64,
    pub kelvin_max: f64,
    pub residual_gain: f64,
}

impl Default for Normalisation {
    fn default() -> Self {
        Self {
            kelvin_min: 210.0,
            kelvin_max: 313.0,
            residual_gain: 10.0,
        }
    }
}

impl Normalisation {
    /// Kelvin → [−1, 1] over the fixed range.
    pub fn to_unit(&self, kelvin: f32) -> f32 {
        (2.0 * (f64::from(kelvin) - self.kelvin_min) / (self.kelvin_max - self.kelvin_min) - 1.0)
            as f32
    }

    /// Kelvin per unit of the diffusion target (for the mean; square it for
    /// variances).
    pub fn kelvin_per_unit(&self) -> f64 {
        (self.kelvin_max - self.kelvin_min) / 2.0 / self.residual_gain
    }
}

/// The condition tensor's values `[COND_CHANNELS, rows, cols]` for one step:
/// `field` in kelvin (row-major over `grid`), valid at `target_micros`.
pub fn conditioning(
    norm: &Normalisation,
    grid: &ModelGrid,
    field: &[f32],
    target_micros: i64,
) -> Vec<f32> {
    let cells = grid.cells();
    let utc_hours = target_micros.rem_euclid(86_400_000_000) as f64 / 3.6e9;
    let mut out = Vec::with_capacity(COND_CHANNELS * cells);
    out.extend(field.iter().map(|&k| norm.to_unit(k)));
    for &lat in &grid.latitude {
        out.extend(std::iter::repeat_n((lat / 90.0) as f32, grid.cols()));
    }
    let signed = |lon: f64| ((lon + 180.0).rem_euclid(360.0) - 180.0) / 180.0;
    for _ in 0..grid.rows() {
        out.extend(grid.longitude.iter().map(|&lon| signed(lon) as f32));
    }
    let hour_angle = |lon: f64| std::f64::consts::TAU * (utc_hours + lon / 15.0) / 24.0;
    for trig in [f64::sin, f64::cos] {
        for _ in 0..grid.rows() {
            out.extend(
                grid.longitude
                    .iter()
                    .map(|&lon| trig(hour_angle(lon)) as f32),
            );
        }
    }
    out
}

/// The diffusion target for one pair: the change from `now` to `next` (K).
pub fn change_target(norm: &Normalisation, now: &[f32], next: &[f32]) -> Vec<f32> {
    let scale = 1.0 / norm.kelvin_per_unit();
    now.iter()
        .zip(next)
        .map(|(a, b)| ((f64::from(*b) - f64::from(*a)) * scale) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_maps_the_fixed_range_to_unit_interval() {
        let n = Normalisation::default();
        assert_eq!(n.to_unit(210.0), -1.0);
        assert_eq!(n.to_unit(313.0), 1.0);
        assert!((n.to_unit(261.5)).abs() < 1e-6);
        // A 5.15 K change is one target unit at gain 10.
        let t = change_target(&n, &[280.0], &[285.15]);
        assert!((t[0] - 1.0).abs() < 1e-5, "{t:?}");
    }

    #[test]
    fn channels_carry_position_and_local_solar_time() {
        let grid = ModelGrid::new(vec![45.0, 0.0], vec![0.0, 90.0, 270.0]);
        // 06:00 UTC: local solar time 06:00 at 0°E, 12:00 at 90°E, 24:00 at 270°E.
        let c = conditioning(&Normalisation::default(), &grid, &[261.5; 6], 6 * 3_600_000_000);
        assert_eq!(c.len(), COND_CHANNELS * 6);
        let channel = |k: usize| &c[k * 6..(k + 1) * 6];
        assert_eq!(channel(1), &[0.5, 0.5, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(channel(2), &[0.0, 0.5, -0.5, 0.0, 0.5, -0.5]);
        let (sin, cos) = (channel(3), channel(4));
        assert!((sin[0] - 1.0).abs() < 1e-6, "06 h: sin = 1");
        assert!((cos[1] + 1.0).abs() < 1e-6, "12 h: cos = −1");
        assert!((cos[2] - 1.0).abs() < 1e-6, "24 h: cos = 1");
    }
}
