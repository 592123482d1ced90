//! The ERA5-like 2 m temperature model.
//!
//! ```text
//! T_k = C(lat, land) + D(t_k, lon, land) + A_k                (K)
//! A_{k+1} = ρ · advect(A_k) + σ(lat, lon) · ξ_k,  ξ_k smooth, Var ξ = 1 per cell
//! ```
//! - C: latitude climatology (warm south, cold north) with cooler land;
//! - D: diurnal cycle peaking at 15:00 local solar time, stronger over land;
//! - A: weather anomalies drifting east by 1° per 6 h, damped by ρ;
//! - σ²: the innovation variance, a fixed map (stronger over land and in the
//!   mid-latitude storm track) — the conditional variance of T_{k+1} given
//!   T_k, i.e. the true aleatoric uncertainty of a 6-hour forecast.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::grid::LatLonGrid;
use crate::noise::SmoothNoise;

/// Persistence of anomalies over one 6-hour step.
pub const RHO: f64 = 0.85;
/// Eastward drift of anomalies per step, degrees.
pub const DRIFT_DEGREES: f64 = 1.0;
/// Correlation length of innovations, degrees.
pub const NOISE_RADIUS_DEGREES: f64 = 3.0;
/// Steps simulated before the first written one, so anomalies are stationary.
const SPIN_UP_STEPS: usize = 24;
const SIX_HOURS_MICROS: i64 = 6 * 3_600_000_000;

/// The fixed maps of the model and its random state.
#[derive(Debug)]
pub struct FieldModel {
    grid: LatLonGrid,
    climatology: Vec<f64>,
    land: Vec<f64>,
    innovation_std: Vec<f64>,
    anomaly: Vec<f64>,
    noise: SmoothNoise,
    shift: usize,
    rng: ChaCha8Rng,
}

/// A land fraction in [0, 1] from a fixed pattern of waves (no seed: the
/// "continents" are the same in every data set).
pub fn land_fraction(lat: f64, lon: f64) -> f64 {
    let (phi, lambda) = (lat.to_radians(), lon.to_radians());
    let s = (3.0 * lambda + 0.5).sin() * (4.0 * phi).cos()
        + 0.6 * (7.0 * lambda - 1.3).sin() * (5.0 * phi + 0.7).sin();
    1.0 / (1.0 + (-4.0 * s).exp())
}

/// The innovation standard deviation (K) at a cell.
pub fn innovation_std(lat: f64, land: f64) -> f64 {
    let storm_track = (-((lat.abs() - 45.0) / 12.0).powi(2)).exp();
    0.35 + 0.9 * land * (0.4 + 0.6 * lat.to_radians().sin().powi(2)) + 0.6 * storm_track
}

impl FieldModel {
    pub fn new(grid: LatLonGrid, seed: u64) -> Self {
        let (rows, cols) = (grid.latitude.len(), grid.longitude.len());
        let mut land = Vec::with_capacity(rows * cols);
        let mut climatology = Vec::with_capacity(rows * cols);
        let mut innovation = Vec::with_capacity(rows * cols);
        for &lat in &grid.latitude {
            for &lon in &grid.longitude {
                let l = land_fraction(lat, lon);
                land.push(l);
                climatology.push(302.0 - 50.0 * lat.to_radians().sin().powi(2) - 4.0 * l);
                innovation.push(innovation_std(lat, l));
            }
        }
        let spacing = grid.lon_spacing().abs().max(1e-9);
        let shift = ((DRIFT_DEGREES / spacing).round() as usize).max(1);
        let radius = ((NOISE_RADIUS_DEGREES / spacing).round() as usize).clamp(1, 64);
        let mut model = Self {
            noise: SmoothNoise::new(rows, cols, radius),
            anomaly: vec![0.0; rows * cols],
            rng: ChaCha8Rng::seed_from_u64(seed),
            innovation_std: innovation,
            climatology,
            land,
            shift,
            grid,
        };
        for _ in 0..SPIN_UP_STEPS {
            model.advance();
        }
        model
    }

    pub fn grid(&self) -> &LatLonGrid {
        &self.grid
    }

    /// σ² per cell (K²), row-major: the conditional variance of the next step.
    pub fn innovation_variance(&self) -> Vec<f64> {
        self.innovation_std.iter().map(|s| s * s).collect()
    }

    pub fn land(&self) -> &[f64] {
        &self.land
    }

    /// Moves the anomalies one 6-hour step forward.
    pub fn advance(&mut self) {
        let cols = self.grid.longitude.len();
        let xi = self.noise.sample(&mut self.rng);
        let previous = std::mem::take(&mut self.anomaly);
        self.anomaly = (0..previous.len())
            .map(|c| {
                let j = c % cols;
                // Anomalies drift east; the western edge keeps its own value.
                let upstream = if j >= self.shift { c - self.shift } else { c };
                RHO * previous[upstream] + self.innovation_std[c] * xi[c]
            })
            .collect();
    }

    /// The deterministic part C + D at `time` (UTC microseconds).
    pub fn expected(&self, time: i64) -> Vec<f64> {
        let utc_hours = time.rem_euclid(86_400_000_000) as f64 / 3.6e9;
        let cols = self.grid.longitude.len();
        self.climatology
            .iter()
            .enumerate()
            .map(|(c, clim)| {
                let local = utc_hours + self.grid.longitude[c % cols] / 15.0;
                let amplitude = 0.8 + 4.2 * self.land[c];
                clim + amplitude * (std::f64::consts::TAU * (local - 15.0) / 24.0).cos()
            })
            .collect()
    }

    /// The field at `time` given the current anomalies.
    pub fn field(&self, time: i64) -> Vec<f64> {
        self.expected(time)
            .iter()
            .zip(&self.anomaly)
            .map(|(e, a)| e + a)
            .collect()
    }

    /// The best 6-hour forecast of the next step from the current one
    /// (E[T_{k+1} | T_k]); its error variance is exactly σ².
    pub fn oracle_forecast(&self, time: i64) -> Vec<f64> {
        let cols = self.grid.longitude.len();
        self.expected(time + SIX_HOURS_MICROS)
            .iter()
            .enumerate()
            .map(|(c, e)| {
                let j = c % cols;
                let upstream = if j >= self.shift { c - self.shift } else { c };
                e + RHO * self.anomaly[upstream]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::BoundingBox;

    fn model(seed: u64) -> FieldModel {
        FieldModel::new(
            LatLonGrid::with_resolution(BoundingBox::NORTH_AMERICA, 2.0).unwrap(),
            seed,
        )
    }

    #[test]
    fn temperatures_are_plausible() {
        let m = model(1);
        let f = m.field(0);
        let (lo, hi) = f
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(
            lo > 215.0 && hi < 313.0,
            "range {lo}..{hi} must stay in the paper's [210, 313] K"
        );
    }

    /// The oracle's one-step errors have exactly the innovation variance:
    /// the truth that aleatoric uncertainty is later checked against.
    #[test]
    fn one_step_error_variance_is_the_innovation_map() {
        let mut m = model(3);
        let cells = m.grid().cells();
        let mut sum2 = vec![0.0; cells];
        let steps = 1500;
        for k in 0..steps {
            let t = k as i64 * SIX_HOURS_MICROS;
            let forecast = m.oracle_forecast(t);
            m.advance();
            for (c, (f, x)) in forecast
                .iter()
                .zip(m.field(t + SIX_HOURS_MICROS))
                .enumerate()
            {
                sum2[c] += (x - f).powi(2);
            }
        }
        let truth = m.innovation_variance();
        // Relative standard error of a variance from 1500 draws ≈ sqrt(2/1500) ≈ 3.7%; allow 15%.
        for c in 0..cells {
            let est = sum2[c] / steps as f64;
            assert!(
                (est / truth[c] - 1.0).abs() < 0.15,
                "cell {c}: {est} vs {}",
                truth[c]
            );
        }
    }

    #[test]
    fn same_seed_same_field_other_seed_other_field() {
        assert_eq!(model(5).field(0), model(5).field(0));
        assert_ne!(model(5).field(0), model(6).field(0));
    }
}
