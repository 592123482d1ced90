//! Out-of-distribution inputs, as in the HyperDM paper: an implausible hot
//! disk pasted into one step, or a warm regime never seen before a time.
//!
//! Syntax (repeatable `--ood`):
//! - `disk:TIME,LAT,LON,RADIUS_DEG,DELTA_K` — add DELTA_K inside the disk at TIME;
//! - `regime:FROM_TIME,DELTA_K` — add DELTA_K everywhere from FROM_TIME on.

use serde::{Deserialize, Serialize};

use crate::error::SynthError;
use crate::grid::LatLonGrid;

/// One injected anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OodEvent {
    Disk {
        time: i64,
        latitude: f64,
        longitude: f64,
        radius_degrees: f64,
        delta_kelvin: f64,
    },
    Regime {
        from: i64,
        delta_kelvin: f64,
    },
}

impl OodEvent {
    /// Parses one `--ood` value; `parse_time` turns text into UTC microseconds.
    pub fn parse(s: &str, parse_time: impl Fn(&str) -> Option<i64>) -> Result<Self, SynthError> {
        let err = |problem: String| SynthError::Config {
            field: "ood",
            problem,
        };
        let (kind, args) = s
            .split_once(':')
            .ok_or_else(|| err(format!("'{s}' is not KIND:ARGS")))?;
        let parts: Vec<&str> = args.split(',').map(str::trim).collect();
        let time = |t: &str| parse_time(t).ok_or_else(|| err(format!("'{t}' is not a time")));
        let num = |x: &str| {
            x.parse::<f64>()
                .map_err(|_| err(format!("'{x}' is not a number")))
        };
        // A NaN or infinite shift would be written into the data as is.
        let num = |x: &str, what: &str| {
            num(x).and_then(|v| {
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(err(format!("'{s}': {what} {x} is not a finite number")))
                }
            })
        };
        match (kind, parts.as_slice()) {
            ("disk", [t, lat, lon, r, d]) => {
                let latitude = num(lat, "LAT")?;
                let radius_degrees = num(r, "RADIUS_DEG")?;
                if latitude.abs() > 90.0 {
                    return Err(err(format!("'{s}': LAT {lat} is beyond ±90°")));
                }
                if radius_degrees <= 0.0 {
                    return Err(err(format!("'{s}': RADIUS_DEG {r} must be positive")));
                }
                Ok(Self::Disk {
                    time: time(t)?,
                    latitude,
                    longitude: num(lon, "LON")?,
                    radius_degrees,
                    delta_kelvin: num(d, "DELTA_K")?,
                })
            }
            ("regime", [t, d]) => Ok(Self::Regime {
                from: time(t)?,
                delta_kelvin: num(d, "DELTA_K")?,
            }),
            _ => Err(err(format!(
                "'{s}': expected disk:TIME,LAT,LON,RADIUS_DEG,DELTA_K or regime:FROM_TIME,DELTA_K"
            ))),
        }
    }

    /// Whether the event changes any cell of `grid` at any of `times`: a
    /// disk at a time that is not written, or outside the box, changes
    /// nothing, and data said to hold an OOD event must hold it.
    pub fn touches(&self, grid: &LatLonGrid, times: &[i64]) -> bool {
        match *self {
            Self::Disk { time, .. } => {
                times.contains(&time) && self.mask(grid, time).into_iter().any(|m| m)
            }
            Self::Regime { from, .. } => times.iter().any(|&t| t >= from),
        }
    }

    /// The cells any of `events` changes at `time` (row-major over `grid`).
    pub fn union_mask(events: &[Self], grid: &LatLonGrid, time: i64) -> Vec<bool> {
        let mut mask = vec![false; grid.cells()];
        for e in events {
            for (a, b) in mask.iter_mut().zip(e.mask(grid, time)) {
                *a |= b;
            }
        }
        mask
    }

    /// The cells the event changes at `time` (row-major over `grid`).
    pub fn mask(&self, grid: &LatLonGrid, time: i64) -> Vec<bool> {
        let mut scratch = vec![0.0; grid.cells()];
        self.apply(grid, time, &mut scratch)
    }

    /// Adds the event to `field` (row-major over `grid`) at `time`; returns
    /// the mask of cells it touched.
    pub fn apply(&self, grid: &LatLonGrid, time: i64, field: &mut [f64]) -> Vec<bool> {
        let cols = grid.longitude.len();
        let mut mask = vec![false; field.len()];
        match *self {
            Self::Disk {
                time: t,
                latitude,
                longitude,
                radius_degrees,
                delta_kelvin,
            } if t == time => {
                for (c, v) in field.iter_mut().enumerate() {
                    let (lat, lon) = (grid.latitude[c / cols], grid.longitude[c % cols]);
                    let dlon = (lon - longitude) * latitude.to_radians().cos();
                    if (lat - latitude).hypot(dlon) <= radius_degrees {
                        *v += delta_kelvin;
                        mask[c] = true;
                    }
                }
            }
            Self::Regime { from, delta_kelvin } if time >= from => {
                field.iter_mut().for_each(|v| *v += delta_kelvin);
                mask.iter_mut().for_each(|m| *m = true);
            }
            _ => {}
        }
        mask
    }
}
