//! The model's grid: rows of latitude (north to south, as ERA5 stores them)
//! by columns of longitude (west to east). Source rows are matched to cells
//! by coordinate, so the operator does not depend on row order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Coordinates match when equal to a micro-degree (0.25° and 1° grids are
/// exact in binary; reprojections may leave rounding).
pub(crate) fn key(degrees: f64) -> i64 {
    (degrees * 1e6).round() as i64
}

/// A regular or irregular latitude × longitude grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelGrid {
    pub latitude: Vec<f64>,
    pub longitude: Vec<f64>,
    #[serde(skip)]
    index: Option<GridIndex>,
}

#[derive(Debug, Clone, PartialEq)]
struct GridIndex {
    row: HashMap<i64, usize>,
    col: HashMap<i64, usize>,
}

impl ModelGrid {
    /// A grid from the coordinates seen (any order, repeats allowed):
    /// latitudes sorted north to south, longitudes west to east.
    pub fn from_coordinates(
        latitudes: impl IntoIterator<Item = f64>,
        longitudes: impl IntoIterator<Item = f64>,
    ) -> Self {
        let unique = |values: &mut dyn Iterator<Item = f64>, descending: bool| {
            let mut by_key: Vec<(i64, f64)> = values.map(|v| (key(v), v)).collect();
            by_key.sort_by_key(|(k, _)| *k);
            by_key.dedup_by_key(|(k, _)| *k);
            if descending {
                by_key.reverse();
            }
            by_key.into_iter().map(|(_, v)| v).collect()
        };
        Self::new(
            unique(&mut latitudes.into_iter(), true),
            unique(&mut longitudes.into_iter(), false),
        )
    }

    pub fn new(latitude: Vec<f64>, longitude: Vec<f64>) -> Self {
        let mut grid = Self {
            latitude,
            longitude,
            index: None,
        };
        grid.build_index();
        grid
    }

    /// Rebuilds the lookup after deserialising.
    pub fn build_index(&mut self) {
        let map = |v: &[f64]| v.iter().enumerate().map(|(i, &x)| (key(x), i)).collect();
        self.index = Some(GridIndex {
            row: map(&self.latitude),
            col: map(&self.longitude),
        });
    }

    pub fn rows(&self) -> usize {
        self.latitude.len()
    }

    pub fn cols(&self) -> usize {
        self.longitude.len()
    }

    pub fn cells(&self) -> usize {
        self.rows() * self.cols()
    }

    /// The row-major cell of a coordinate pair, if it is on the grid.
    pub fn cell(&self, latitude: f64, longitude: f64) -> Option<usize> {
        let index = self.index.as_ref()?;
        let r = index.row.get(&key(latitude))?;
        let c = index.col.get(&key(longitude))?;
        Some(r * self.cols() + c)
    }

    /// "77×135 (latitude 83…7, longitude 191…325)".
    pub fn describe(&self) -> String {
        let ends = |v: &[f64]| match (v.first(), v.last()) {
            (Some(a), Some(b)) => format!("{a}…{b}"),
            _ => "none".into(),
        };
        format!(
            "{}×{} (latitude {}, longitude {})",
            self.rows(),
            self.cols(),
            ends(&self.latitude),
            ends(&self.longitude)
        )
    }

    /// Whether two grids have the same cells in the same order.
    pub fn same_cells(&self, other: &Self) -> bool {
        let keys = |v: &[f64]| v.iter().map(|&x| key(x)).collect::<Vec<_>>();
        keys(&self.latitude) == keys(&other.latitude)
            && keys(&self.longitude) == keys(&other.longitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_found_by_coordinate_in_era5_order() {
        let g = ModelGrid::from_coordinates([7.0, 8.0, 7.0, 9.0], [191.0, 190.0, 191.0]);
        assert_eq!(g.latitude, vec![9.0, 8.0, 7.0]);
        assert_eq!(g.longitude, vec![190.0, 191.0]);
        assert_eq!(g.cell(9.0, 190.0), Some(0));
        assert_eq!(g.cell(7.0, 191.0), Some(5));
        assert_eq!(g.cell(7.0000000001, 191.0), Some(5), "micro-degree match");
        assert_eq!(g.cell(7.5, 191.0), None);
        assert_eq!(g.describe(), "3×2 (latitude 9…7, longitude 190…191)");
    }
}
