//! What the network sees and predicts, per grid cell, in its own units.
//!
//! The denoiser is a cell model: an MLP applied to every cell, conditioned
//! on the cell's neighbourhood. Condition y of a cell (`cond_dim` values):
//! - the k × k patch of t2m around it at the initial time (edges repeat),
//!   normalised with the fixed range [210, 313] K → [−1, 1] (the paper's
//!   normalisation); the patch carries advection and spatial gradients;
//! - latitude / 90 and longitude as a signed angle / 180, so the map
//!   position (and with it the noise regime) is known;
//! - sine and cosine of the local solar hour at the valid (target) time,
//!   UTC hour + longitude / 15: the diurnal cycle is the largest part of a
//!   6-hour change and is a function of it.
//!
//! Target x₀: the 6-hour change, normalised like t2m and multiplied by
//! `residual_gain`, so its spread is of order one (a 3 K change is 0.06 in
//! normalised units). Mean, AU and EU map back to kelvin with
//! [`Normalisation::kelvin_per_unit`].
//!
//! Why per cell rather than a U-Net over the field: on a 2-core CPU the
//! U-Net's training step at 77 × 135 takes seconds (candle's CPU
//! convolution backward), the cell MLP's milliseconds. Per-cell mean, AU
//! and EU are what the product reports; samples of neighbouring cells are
//! drawn independently, so spatial statistics of single samples are not.

use serde::{Deserialize, Serialize};

use crate::grid::ModelGrid;

/// Values of y besides the patch: latitude, longitude, sin and cos of local solar time.
pub const POSITION_FEATURES: usize = 4;

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

/// The neighbourhood size k (odd) of the cell model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch(pub usize);

impl Patch {
    pub fn cond_dim(self) -> usize {
        self.0 * self.0 + POSITION_FEATURES
    }
}

/// One step, normalised, ready to give any cell's condition.
#[derive(Debug, Clone)]
pub struct StepFeatures {
    unit: Vec<f32>,
    /// sin, cos of the local solar hour per column at the target time.
    solar: Vec<(f32, f32)>,
}

/// sin and cos of the local solar hour of each grid column at `target_micros`.
pub fn solar_hours(grid: &ModelGrid, target_micros: i64) -> Vec<(f32, f32)> {
    let utc_hours = target_micros.rem_euclid(86_400_000_000) as f64 / 3.6e9;
    grid.longitude
        .iter()
        .map(|&lon| {
            let angle = std::f64::consts::TAU * (utc_hours + lon / 15.0) / 24.0;
            (angle.sin() as f32, angle.cos() as f32)
        })
        .collect()
}

/// Appends the condition of `cell` to `out`: the patch of `unit` (the
/// step's normalised value at a cell index) around it, its position and
/// the `solar` hour of its column ([`solar_hours`]).
pub fn condition(
    grid: &ModelGrid,
    patch: Patch,
    cell: usize,
    unit: impl Fn(usize) -> f32,
    solar: &[(f32, f32)],
    out: &mut Vec<f32>,
) {
    let (rows, cols) = (grid.rows() as isize, grid.cols() as isize);
    let (r, c) = ((cell / grid.cols()) as isize, (cell % grid.cols()) as isize);
    let h = (patch.0 / 2) as isize;
    for dr in -h..=h {
        let rr = (r + dr).clamp(0, rows - 1);
        for dc in -h..=h {
            let cc = (c + dc).clamp(0, cols - 1);
            out.push(unit((rr * cols + cc) as usize));
        }
    }
    let lon = grid.longitude[c as usize];
    out.push((grid.latitude[r as usize] / 90.0) as f32);
    out.push((((lon + 180.0).rem_euclid(360.0) - 180.0) / 180.0) as f32);
    let (s, co) = solar[c as usize];
    out.push(s);
    out.push(co);
}

impl StepFeatures {
    /// `field` in kelvin (row-major over `grid`), valid at `target_micros`.
    pub fn new(norm: &Normalisation, grid: &ModelGrid, field: &[f32], target_micros: i64) -> Self {
        Self {
            unit: field.iter().map(|&k| norm.to_unit(k)).collect(),
            solar: solar_hours(grid, target_micros),
        }
    }

    /// Appends the condition of `cell` to `out`.
    pub fn condition(&self, grid: &ModelGrid, patch: Patch, cell: usize, out: &mut Vec<f32>) {
        condition(grid, patch, cell, |i| self.unit[i], &self.solar, out);
    }

    /// The conditions of every cell, `[cells × cond_dim]`.
    pub fn all(&self, grid: &ModelGrid, patch: Patch) -> Vec<f32> {
        let mut out = Vec::with_capacity(grid.cells() * patch.cond_dim());
        for cell in 0..grid.cells() {
            self.condition(grid, patch, cell, &mut out);
        }
        out
    }
}

/// One cell's diffusion target: its change from `now` to `next` (K) in
/// the target's units.
pub fn change(norm: &Normalisation, now: f32, next: f32) -> f32 {
    // Times the reciprocal, as the models shipped were trained with.
    ((f64::from(next) - f64::from(now)) * (1.0 / norm.kelvin_per_unit())) as f32
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
        let t = change(&n, 280.0, 285.15);
        assert!((t - 1.0).abs() < 1e-5, "{t}");
    }

    #[test]
    fn conditions_carry_the_patch_position_and_local_solar_time() {
        let grid = ModelGrid::new(vec![45.0, 0.0], vec![0.0, 90.0, 270.0]);
        let n = Normalisation::default();
        // Field values 210 + 103·k/5 → unit −1 + 0.4·k for cells k = 0..5.
        let field: Vec<f32> = (0..6).map(|k| 210.0 + 103.0 * k as f32 / 5.0).collect();
        // 06:00 UTC: local solar time 06:00 at 0°E, 12:00 at 90°E, 24:00 at 270°E.
        let f = StepFeatures::new(&n, &grid, &field, 6 * 3_600_000_000);
        let all = f.all(&grid, Patch(3));
        assert_eq!(all.len(), 6 * Patch(3).cond_dim());
        let cell = |k: usize| &all[k * 13..(k + 1) * 13];
        // Cell 0 (row 0, col 0): the edge repeats: rows (0,0,1), cols (0,0,1).
        let unit = |k: usize| -1.0 + 0.4 * k as f32;
        let want = [0, 0, 1, 0, 0, 1, 3, 3, 4].map(unit);
        for (got, want) in cell(0)[..9].iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{:?}", cell(0));
        }
        assert_eq!(&cell(0)[9..11], &[0.5, 0.0]);
        assert!((cell(0)[11] - 1.0).abs() < 1e-6, "06 h: sin = 1");
        assert_eq!(cell(4)[9..11], [0.0, 0.5]);
        assert!((cell(4)[12] + 1.0).abs() < 1e-6, "12 h: cos = −1");
        assert_eq!(cell(5)[10], -0.5);
        assert!((cell(5)[12] - 1.0).abs() < 1e-6, "24 h: cos = 1");
    }
}
