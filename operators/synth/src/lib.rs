//! ERA5-like synthetic 2 m temperature (`uqcast synth`) with ground truth for
//! uncertainty: the innovation-variance map (true aleatoric uncertainty of a
//! 6-hour forecast) and injectable out-of-distribution inputs.
//!
//! Output layout:
//! ```text
//! DIR/era5_t2m_<first>_<last>.nc        (or one era5_t2m_YYYYMMDD.nc per day)
//! DIR/truth/innovation_variance.nc      innovation_variance (K²), land_fraction
//! DIR/truth/ood.json                    injected events and the cells they touched
//! ```
//! Same configuration and seed → byte-identical files.

pub mod error;
pub mod field;
pub mod grid;
pub mod noise;
pub mod ood;

use std::path::{Path, PathBuf};

use chrono::DateTime;
use serde::Serialize;
use uqcast_netcdf::{Encoding, Grid, GridVariable, write_era5};

pub use error::SynthError;
pub use field::FieldModel;
pub use grid::{BoundingBox, LatLonGrid};
pub use ood::OodEvent;

const SIX_HOURS_MICROS: i64 = 6 * 3_600_000_000;
/// The most steps one data set takes (about 685 years of 6-hour steps):
/// the step times are listed up front.
pub const MAX_STEPS: usize = 1_000_000;
/// The most values one file holds: a file's field is built in memory before
/// it is written (2 GB of float32).
pub const MAX_FILE_VALUES: usize = 500_000_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// First step, UTC microseconds since 1970-01-01 (a multiple of 6 h).
    pub start: i64,
    pub steps: usize,
    pub grid: LatLonGrid,
    pub encoding: Encoding,
    pub files_per_day: bool,
    pub seed: u64,
    pub ood: Vec<OodEvent>,
    /// Steps from this time on (UTC microseconds) are ERA5T: a file holding
    /// steps from before and after it is written as the CDS wrote such a
    /// request, with an expver dimension (`uqcast_netcdf::expver`).
    pub era5t_from: Option<i64>,
}

impl SynthConfig {
    /// The step times, UTC microseconds.
    pub fn times(&self) -> Vec<i64> {
        (0..self.steps as i64)
            .map(|k| self.start + k * SIX_HOURS_MICROS)
            .collect()
    }

    /// Refuses what cannot be written: no steps, a start off the 6-hour
    /// grid, more than [`MAX_STEPS`] steps, or a file above
    /// [`MAX_FILE_VALUES`] values (one file holds every step unless
    /// `files_per_day`). Checked before anything is allocated or written.
    pub fn check(&self) -> Result<(), SynthError> {
        let config = |field, problem| Err(SynthError::Config { field, problem });
        if self.steps == 0 {
            return config("steps", "must be at least 1".into());
        }
        if self.steps > MAX_STEPS {
            return config(
                "steps",
                format!("{} is above the {MAX_STEPS} a data set takes", self.steps),
            );
        }
        if self.start.rem_euclid(SIX_HOURS_MICROS) != 0 {
            return config("start", "must fall on 00, 06, 12 or 18 UTC".into());
        }
        let per_file = if self.files_per_day { 4 } else { self.steps };
        let values = per_file.saturating_mul(self.grid.cells());
        if values > MAX_FILE_VALUES {
            return config(
                "steps",
                format!(
                    "{per_file} steps × {} cells = {values} values in one file, above {MAX_FILE_VALUES}; \
                     write one file per day (--files-per-day) or fewer steps",
                    self.grid.cells()
                ),
            );
        }
        Ok(())
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub files: Vec<PathBuf>,
    pub truth: PathBuf,
    pub ood: PathBuf,
    /// Cells touched by OOD events, over all steps.
    pub ood_cells: usize,
}

#[derive(Serialize)]
struct OodTruth<'a> {
    events: &'a [OodEvent],
    /// Per affected step: ISO time and the number of cells changed.
    steps: Vec<(String, usize)>,
}

/// The OOD events recorded in a data set's `truth/ood.json`.
pub fn read_ood_events(path: &Path) -> Result<Vec<OodEvent>, SynthError> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        events: Vec<OodEvent>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| SynthError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let recorded: Recorded = serde_json::from_str(&text).map_err(|e| SynthError::Config {
        field: "ood.json",
        problem: format!("{}: {e}", path.display()),
    })?;
    Ok(recorded.events)
}

/// Writes the data set under `out` (created if needed).
pub fn write_dataset(config: &SynthConfig, out: &Path) -> Result<SynthReport, SynthError> {
    config.check()?;
    let truth_dir = out.join("truth");
    std::fs::create_dir_all(&truth_dir).map_err(|source| SynthError::Io {
        path: truth_dir.display().to_string(),
        source,
    })?;

    let mut model = FieldModel::new(config.grid.clone(), config.seed);
    let times = config.times();
    let mut files = Vec::new();
    let mut ood_steps = Vec::new();
    for group in file_groups(&times, config.files_per_day) {
        let mut values = Vec::with_capacity(group.len() * config.grid.cells());
        for &t in group {
            let mut field = model.field(t);
            let mut touched = 0;
            for event in &config.ood {
                touched += event
                    .apply(&config.grid, t, &mut field)
                    .iter()
                    .filter(|m| **m)
                    .count();
            }
            if touched > 0 {
                ood_steps.push((iso(t), touched));
            }
            values.extend(field.iter().map(|&v| v as f32));
            model.advance();
        }
        let path = out.join(file_name(group, config.files_per_day));
        let t2m = GridVariable::new("t2m", "K", "2 metre temperature", values);
        // Only a file that mixes the two has the dimension, as at the CDS.
        let era5t_from = config
            .era5t_from
            .and_then(|from| group.iter().position(|&t| t >= from))
            .filter(|&first| first > 0);
        let grid = Grid {
            era5t_from,
            ..grid_at(&config.grid, group)
        };
        write_era5(&path, config.encoding, grid, vec![t2m])?;
        files.push(path);
    }

    let truth = truth_dir.join("innovation_variance.nc");
    let variance: Vec<f32> = model
        .innovation_variance()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let land: Vec<f32> = model.land().iter().map(|&v| v as f32).collect();
    write_era5(
        &truth,
        Encoding::Nc4,
        grid_at(&config.grid, &times[..1]),
        vec![
            GridVariable::new(
                "innovation_variance",
                "K**2",
                "variance of the 6-hour innovation (true aleatoric uncertainty)",
                variance,
            ),
            GridVariable::new("land_fraction", "1", "land fraction", land),
        ],
    )?;
    let ood = truth_dir.join("ood.json");
    let ood_cells = ood_steps.iter().map(|(_, n)| n).sum();
    let text = serde_json::to_string_pretty(&OodTruth {
        events: &config.ood,
        steps: ood_steps,
    })
    .map_err(|e| SynthError::Config {
        field: "ood",
        problem: e.to_string(),
    })?;
    std::fs::write(&ood, text).map_err(|source| SynthError::Io {
        path: ood.display().to_string(),
        source,
    })?;
    Ok(SynthReport {
        files,
        truth,
        ood,
        ood_cells,
    })
}

fn grid_at(grid: &LatLonGrid, times: &[i64]) -> Grid {
    Grid {
        latitude: grid.latitude.clone(),
        longitude: grid.longitude.clone(),
        times: times.to_vec(),
        era5t_from: None,
    }
}

fn file_groups(times: &[i64], per_day: bool) -> Vec<&[i64]> {
    if !per_day {
        return vec![times];
    }
    times
        .chunk_by(|a, b| a.div_euclid(86_400_000_000) == b.div_euclid(86_400_000_000))
        .collect()
}

fn file_name(group: &[i64], per_day: bool) -> String {
    let fmt = |t: i64, f: &str| {
        DateTime::from_timestamp_micros(t)
            .map(|d| d.format(f).to_string())
            .unwrap_or_default()
    };
    match (per_day, group.first(), group.last()) {
        (true, Some(&t), _) => format!("era5_t2m_{}.nc", fmt(t, "%Y%m%d")),
        (false, Some(&a), Some(&b)) => {
            format!("era5_t2m_{}_{}.nc", fmt(a, "%Y%m%d%H"), fmt(b, "%Y%m%d%H"))
        }
        _ => "era5_t2m.nc".to_string(),
    }
}

fn iso(t: i64) -> String {
    DateTime::from_timestamp_micros(t)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(encoding: Encoding, per_day: bool) -> SynthConfig {
        SynthConfig {
            start: 1_577_836_800_000_000,
            steps: 6,
            grid: LatLonGrid::with_resolution(BoundingBox::NORTH_AMERICA, 4.0).unwrap(),
            encoding,
            files_per_day: per_day,
            seed: 42,
            ood: vec![OodEvent::Disk {
                time: 1_577_836_800_000_000 + SIX_HOURS_MICROS,
                latitude: 45.0,
                longitude: 260.0,
                radius_degrees: 9.0,
                delta_kelvin: 30.0,
            }],
            era5t_from: None,
        }
    }

    #[test]
    fn same_seed_same_bytes_in_both_encodings() {
        for encoding in [Encoding::Nc3, Encoding::Nc4] {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let ra = write_dataset(&config(encoding, true), a.path()).unwrap();
            let rb = write_dataset(&config(encoding, true), b.path()).unwrap();
            assert_eq!(ra.files.len(), 2, "6 steps from 00 UTC span two days");
            for (x, y) in ra
                .files
                .iter()
                .zip(&rb.files)
                .chain([(&ra.truth, &rb.truth), (&ra.ood, &rb.ood)])
            {
                assert_eq!(
                    std::fs::read(x).unwrap(),
                    std::fs::read(y).unwrap(),
                    "{encoding:?}: {}",
                    x.display()
                );
            }
            assert!(
                ra.ood_cells > 5,
                "the disk must touch cells, got {}",
                ra.ood_cells
            );
        }
    }

    #[test]
    fn rejects_bad_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(Encoding::Nc4, false);
        c.start += 3_600_000_000;
        assert!(
            write_dataset(&c, dir.path())
                .unwrap_err()
                .to_string()
                .contains("'start'")
        );
        // Sizes are refused before anything is allocated or written.
        let mut c = config(Encoding::Nc4, false);
        c.steps = MAX_STEPS + 1;
        assert!(c.check().unwrap_err().to_string().contains("'steps'"));
        c.steps = MAX_FILE_VALUES / c.grid.cells() + 1;
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("values in one file"), "{err}");
        c.files_per_day = true;
        c.check().unwrap();
        let out = dir.path().join("never");
        c.steps = MAX_STEPS + 1;
        assert!(write_dataset(&c, &out).is_err());
        assert!(!out.exists(), "nothing is written for a refused size");
    }

    /// What `--ood` accepts, and whether an event lands on the data:
    /// a disk only at its own time and inside the box, a regime from its
    /// start on.
    #[test]
    fn ood_events_parse_checked_and_land_where_they_say() {
        let c = config(Encoding::Nc4, true);
        let times = c.times();
        let parse = |s: &str| {
            OodEvent::parse(s, |t| match t {
                "T0" => Some(times[0]),
                "T1" => Some(times[1]),
                "LATE" => Some(times[5] + SIX_HOURS_MICROS),
                _ => None,
            })
        };
        for (bad, says) in [
            ("disk:T1,45,260,9,nan", "DELTA_K"),
            ("disk:T1,45,260,0,30", "RADIUS_DEG"),
            ("disk:T1,91,260,9,30", "LAT"),
            ("disk:T1,45,inf,9,30", "LON"),
            ("regime:T1,-inf", "DELTA_K"),
            ("disk:never,45,260,9,30", "not a time"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("'ood'"), "{bad}: {err}");
        }
        let disk = parse("disk:T1,45,260,9,30").unwrap();
        assert!(disk.touches(&c.grid, &times));
        assert!(
            !disk.touches(&c.grid, &times[..1]),
            "its time is not written"
        );
        assert!(
            !parse("disk:T1,45,60,9,30")
                .unwrap()
                .touches(&c.grid, &times),
            "outside the box"
        );
        assert!(parse("regime:T0,5").unwrap().touches(&c.grid, &times));
        assert!(!parse("regime:LATE,5").unwrap().touches(&c.grid, &times));
    }
}
