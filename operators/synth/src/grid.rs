//! Regular latitude/longitude grids in ERA5's layout: latitude descending
//! (north first), longitude ascending in the file's own convention.

use crate::error::SynthError;

/// A regular grid over a bounding box.
#[derive(Debug, Clone, PartialEq)]
pub struct LatLonGrid {
    pub latitude: Vec<f64>,
    pub longitude: Vec<f64>,
}

/// South, north, west, east in degrees (east may exceed 180: ERA5 uses 0..360).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    pub south: f64,
    pub north: f64,
    pub west: f64,
    pub east: f64,
}

impl BoundingBox {
    /// The HyperDM paper's North America box in ERA5's 0..360 longitudes.
    pub const NORTH_AMERICA: Self = Self {
        south: 7.0,
        north: 83.0,
        west: 191.0,
        east: 325.0,
    };

    /// Parses `S,N,W,E`.
    pub fn parse(s: &str) -> Result<Self, SynthError> {
        let v: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| SynthError::Config {
                field: "bbox",
                problem: format!("'{s}' is not S,N,W,E in degrees"),
            })?;
        match v[..] {
            [south, north, west, east]
                if south < north && west < east && south >= -90.0 && north <= 90.0 =>
            {
                Ok(Self {
                    south,
                    north,
                    west,
                    east,
                })
            }
            _ => Err(SynthError::Config {
                field: "bbox",
                problem: format!("'{s}' needs S < N within ±90 and W < E"),
            }),
        }
    }
}

impl LatLonGrid {
    /// A grid at `res` degrees covering the box, edges included.
    pub fn with_resolution(bbox: BoundingBox, res: f64) -> Result<Self, SynthError> {
        if !(res > 0.0 && res.is_finite()) {
            return Err(SynthError::Config {
                field: "res",
                problem: format!("{res} is not a positive resolution"),
            });
        }
        let rows = ((bbox.north - bbox.south) / res).round() as usize + 1;
        let cols = ((bbox.east - bbox.west) / res).round() as usize + 1;
        Self::with_shape(bbox, rows, cols)
    }

    /// A grid of `rows` × `cols` points spanning the box, edges included.
    pub fn with_shape(bbox: BoundingBox, rows: usize, cols: usize) -> Result<Self, SynthError> {
        if rows < 2 || cols < 2 || rows * cols > 50_000_000 {
            return Err(SynthError::Config {
                field: "grid",
                problem: format!("{rows}x{cols}: need at least 2x2 and at most 50 M cells"),
            });
        }
        let step = |a: f64, b: f64, n: usize, i: usize| a + (b - a) * i as f64 / (n - 1) as f64;
        // Rounding to 1e-6° keeps 0.25° grids exact and comparisons in SQL simple.
        let round = |x: f64| (x * 1e6).round() / 1e6;
        Ok(Self {
            latitude: (0..rows)
                .map(|i| round(step(bbox.north, bbox.south, rows, i)))
                .collect(),
            longitude: (0..cols)
                .map(|j| round(step(bbox.west, bbox.east, cols, j)))
                .collect(),
        })
    }

    /// Parses `RxC`.
    pub fn parse_shape(s: &str) -> Result<(usize, usize), SynthError> {
        let err = || SynthError::Config {
            field: "grid",
            problem: format!("'{s}' is not ROWSxCOLS, e.g. 77x135"),
        };
        let (r, c) = s.split_once(['x', 'X']).ok_or_else(err)?;
        Ok((
            r.trim().parse().map_err(|_| err())?,
            c.trim().parse().map_err(|_| err())?,
        ))
    }

    pub fn cells(&self) -> usize {
        self.latitude.len() * self.longitude.len()
    }

    /// Mean spacing in degrees along longitude.
    pub fn lon_spacing(&self) -> f64 {
        let n = self.longitude.len();
        (self.longitude[n - 1] - self.longitude[0]) / (n - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_box_at_one_degree() {
        let g = LatLonGrid::with_resolution(BoundingBox::NORTH_AMERICA, 1.0).unwrap();
        assert_eq!((g.latitude.len(), g.longitude.len()), (77, 135));
        assert_eq!((g.latitude[0], *g.latitude.last().unwrap()), (83.0, 7.0));
        assert_eq!(
            (g.longitude[0], *g.longitude.last().unwrap()),
            (191.0, 325.0)
        );
    }

    #[test]
    fn quarter_degree_global() {
        let g = LatLonGrid::with_resolution(
            BoundingBox {
                south: -90.0,
                north: 90.0,
                west: 0.0,
                east: 359.75,
            },
            0.25,
        )
        .unwrap();
        assert_eq!((g.latitude.len(), g.longitude.len()), (721, 1440));
        assert_eq!(g.latitude[1], 89.75);
    }

    #[test]
    fn bad_specs() {
        assert!(BoundingBox::parse("1,2,3").is_err());
        assert!(BoundingBox::parse("10,5,0,1").is_err());
        assert!(LatLonGrid::parse_shape("12by4").is_err());
        assert_eq!(LatLonGrid::parse_shape("12x4").unwrap(), (12, 4));
    }
}
