//! Writes ERA5-convention files in either encoding the CDS serves:
//!
//! | encoding | time axis                                   | t2m                                   |
//! |----------|---------------------------------------------|---------------------------------------|
//! | `Nc3`    | `time`, int32, hours since 1900-01-01 (unlimited) | int16, scale_factor/add_offset, fill −32767 |
//! | `Nc4`    | `valid_time`, int64, seconds since 1970-01-01 | float32, NaN fill, zlib + shuffle, (1, lat, lon) chunks |
//!
//! With [`Grid::era5t_from`] the variables are written as the CDS wrote a
//! request that mixed ERA5 and ERA5T steps: (time, expver, latitude,
//! longitude), expver 1 and 5, each step in its own slice and filled in the
//! other ([`crate::expver`]).
//!
//! Files are written to `<name>.tmp` and renamed, so a reader never sees a
//! half-written file and an existing file is replaced only when complete.

use std::path::{Path, PathBuf};

use netcdf::Options;

use crate::cf::Packing;
use crate::error::{NetcdfError, Result};

/// Hours between 1900-01-01 and 1970-01-01.
const HOURS_1900_TO_1970: i64 = 613_608;
/// The packed value that marks missing data in CDS NetCDF3 files.
pub const NC3_FILL: i16 = -32767;

/// Which CDS encoding to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Legacy NetCDF3 (64-bit offset) with packed int16.
    Nc3,
    /// NetCDF4/HDF5 with zlib-compressed float32 chunks.
    Nc4,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nc3" | "netcdf3" => Ok(Self::Nc3),
            "nc4" | "netcdf4" => Ok(Self::Nc4),
            other => Err(format!("unknown encoding '{other}' (expected nc3 or nc4)")),
        }
    }
}

/// One gridded variable to write: `values` is (time, latitude, longitude)
/// row-major; NaN marks missing cells.
#[derive(Debug, Clone)]
pub struct GridVariable {
    pub name: String,
    pub units: String,
    pub long_name: String,
    pub values: Vec<f32>,
}

impl GridVariable {
    pub fn new(name: &str, units: &str, long_name: &str, values: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            units: units.into(),
            long_name: long_name.into(),
            values,
        }
    }
}

/// The coordinates of a file to write.
#[derive(Debug, Clone)]
pub struct Grid {
    pub latitude: Vec<f64>,
    pub longitude: Vec<f64>,
    /// UTC microseconds since 1970-01-01.
    pub times: Vec<i64>,
    /// Steps from this index on are ERA5T (expver 5), those before ERA5
    /// (expver 1), written with an expver dimension; `None`: no such
    /// dimension.
    pub era5t_from: Option<usize>,
}

/// The expver numbers the CDS gave ERA5 and ERA5T.
const EXPVERS: [i32; 2] = [1, 5];

impl Grid {
    /// The dimensions of a data variable, the time dimension named `time`.
    fn data_dimensions<'a>(&self, time: &'a str) -> Vec<&'a str> {
        match self.era5t_from {
            Some(_) => vec![time, crate::expver::DIMENSION, "latitude", "longitude"],
            None => vec![time, "latitude", "longitude"],
        }
    }

    /// `values` (time, latitude, longitude) laid out for writing: with an
    /// expver dimension, each step in its slice and `fill` in the other.
    fn data_values<T: Copy>(&self, values: Vec<T>, fill: T) -> Vec<T> {
        let Some(from) = self.era5t_from else {
            return values;
        };
        let cells = self.latitude.len() * self.longitude.len();
        let mut out = Vec::with_capacity(values.len() * EXPVERS.len());
        for (step, field) in values.chunks(cells.max(1)).enumerate() {
            let era5t = step >= from;
            for slice_is_era5t in [false, true] {
                if slice_is_era5t == era5t {
                    out.extend_from_slice(field);
                } else {
                    out.extend(std::iter::repeat_n(fill, field.len()));
                }
            }
        }
        out
    }
}

/// Writes one ERA5-like file atomically (on the NetCDF I/O thread).
pub fn write_era5(
    path: &Path,
    encoding: Encoding,
    grid: Grid,
    variables: Vec<GridVariable>,
) -> Result<()> {
    let owned = path.to_path_buf();
    crate::io_thread::run_on(path, move || {
        write_here(&owned, encoding, &grid, &variables)
    })
}

fn write_here(
    path: &Path,
    encoding: Encoding,
    grid: &Grid,
    variables: &[GridVariable],
) -> Result<()> {
    let cells = grid.times.len() * grid.latitude.len() * grid.longitude.len();
    for v in variables {
        if v.values.len() != cells {
            return Err(NetcdfError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "variable '{}' has {} values, grid needs {cells}",
                        v.name,
                        v.values.len()
                    ),
                ),
            });
        }
    }
    if grid.era5t_from.is_some_and(|from| from > grid.times.len()) {
        return Err(NetcdfError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("era5t_from is past the {} steps", grid.times.len()),
            ),
        });
    }
    let tmp = temporary_path(path);
    let written = match encoding {
        Encoding::Nc3 => write_nc3(&tmp, grid, variables),
        Encoding::Nc4 => write_nc4(&tmp, grid, variables),
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|source| NetcdfError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The CDS packing for a field: the data range mapped onto ±32766.
pub fn packing_for(values: &[f32]) -> Packing {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v as f64), hi.max(v as f64))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let scale = if hi > lo { (hi - lo) / 65532.0 } else { 1.0 };
    Packing::new(scale, (hi + lo) / 2.0, &[f64::from(NC3_FILL)])
}

fn write_nc3(path: &Path, grid: &Grid, variables: &[GridVariable]) -> Result<()> {
    let werr = |variable: &str| write_error(path, variable);
    let mut hours = Vec::with_capacity(grid.times.len());
    for &t in &grid.times {
        if t % 3_600_000_000 != 0 {
            return Err(NetcdfError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "NetCDF3 CDS time axis needs whole hours",
                ),
            });
        }
        let h = t / 3_600_000_000 + HOURS_1900_TO_1970;
        hours.push(i32::try_from(h).map_err(|_| NetcdfError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "time out of int32 hours range",
            ),
        })?);
    }
    let mut file = netcdf::create_with(path, Options::_64BIT_OFFSET).map_err(werr("file"))?;
    file.add_dimension("longitude", grid.longitude.len())
        .map_err(werr("longitude"))?;
    file.add_dimension("latitude", grid.latitude.len())
        .map_err(werr("latitude"))?;
    if grid.era5t_from.is_some() {
        file.add_dimension(crate::expver::DIMENSION, EXPVERS.len())
            .map_err(werr(crate::expver::DIMENSION))?;
    }
    file.add_unlimited_dimension("time").map_err(werr("time"))?;
    file.add_attribute("Conventions", "CF-1.6")
        .map_err(werr("Conventions"))?;
    file.add_attribute("history", "written by uqcast")
        .map_err(werr("history"))?;
    {
        let mut v = file
            .add_variable::<f32>("longitude", &["longitude"])
            .map_err(werr("longitude"))?;
        v.put_attribute("units", "degrees_east")
            .map_err(werr("longitude"))?;
        v.put_attribute("long_name", "longitude")
            .map_err(werr("longitude"))?;
    }
    {
        let mut v = file
            .add_variable::<f32>("latitude", &["latitude"])
            .map_err(werr("latitude"))?;
        v.put_attribute("units", "degrees_north")
            .map_err(werr("latitude"))?;
        v.put_attribute("long_name", "latitude")
            .map_err(werr("latitude"))?;
    }
    {
        let mut v = file
            .add_variable::<i32>("time", &["time"])
            .map_err(werr("time"))?;
        v.put_attribute("units", "hours since 1900-01-01 00:00:00.0")
            .map_err(werr("time"))?;
        v.put_attribute("long_name", "time").map_err(werr("time"))?;
        v.put_attribute("calendar", "gregorian")
            .map_err(werr("time"))?;
    }
    add_expver(&mut file, grid, path)?;
    let packings: Vec<Packing> = variables.iter().map(|v| packing_for(&v.values)).collect();
    for (var, packing) in variables.iter().zip(&packings) {
        let mut v = file
            .add_variable::<i16>(&var.name, &grid.data_dimensions("time"))
            .map_err(werr(&var.name))?;
        v.put_attribute("scale_factor", packing.scale())
            .map_err(werr(&var.name))?;
        v.put_attribute("add_offset", packing.offset())
            .map_err(werr(&var.name))?;
        v.put_attribute("_FillValue", NC3_FILL)
            .map_err(werr(&var.name))?;
        v.put_attribute("missing_value", NC3_FILL)
            .map_err(werr(&var.name))?;
        v.put_attribute("units", var.units.as_str())
            .map_err(werr(&var.name))?;
        v.put_attribute("long_name", var.long_name.as_str())
            .map_err(werr(&var.name))?;
    }
    file.enddef().map_err(werr("file"))?;
    let lon: Vec<f32> = grid.longitude.iter().map(|&x| x as f32).collect();
    let lat: Vec<f32> = grid.latitude.iter().map(|&x| x as f32).collect();
    put(&mut file, "longitude", &lon, path)?;
    put(&mut file, "latitude", &lat, path)?;
    put(&mut file, "time", &hours, path)?;
    put_expver(&mut file, grid, path)?;
    for (var, packing) in variables.iter().zip(&packings) {
        let packed: Vec<i16> = var
            .values
            .iter()
            .map(|&x| {
                if x.is_nan() {
                    NC3_FILL
                } else {
                    packing.pack_i16(f64::from(x))
                }
            })
            .collect();
        put(
            &mut file,
            &var.name,
            &grid.data_values(packed, NC3_FILL),
            path,
        )?;
    }
    file.close().map_err(werr("file"))
}

fn write_nc4(path: &Path, grid: &Grid, variables: &[GridVariable]) -> Result<()> {
    let werr = |variable: &str| write_error(path, variable);
    let (ny, nx) = (grid.latitude.len(), grid.longitude.len());
    let mut file = netcdf::create_with(path, Options::NETCDF4).map_err(werr("file"))?;
    file.add_dimension("valid_time", grid.times.len())
        .map_err(werr("valid_time"))?;
    if grid.era5t_from.is_some() {
        file.add_dimension(crate::expver::DIMENSION, EXPVERS.len())
            .map_err(werr(crate::expver::DIMENSION))?;
    }
    file.add_dimension("latitude", ny)
        .map_err(werr("latitude"))?;
    file.add_dimension("longitude", nx)
        .map_err(werr("longitude"))?;
    file.add_attribute("Conventions", "CF-1.7")
        .map_err(werr("Conventions"))?;
    file.add_attribute("history", "written by uqcast")
        .map_err(werr("history"))?;
    file.add_variable::<i64>("number", &[])
        .map_err(werr("number"))?;
    {
        let mut v = file
            .add_variable::<i64>("valid_time", &["valid_time"])
            .map_err(werr("valid_time"))?;
        v.put_attribute("units", "seconds since 1970-01-01")
            .map_err(werr("valid_time"))?;
        v.put_attribute("calendar", "proleptic_gregorian")
            .map_err(werr("valid_time"))?;
        v.put_attribute("standard_name", "time")
            .map_err(werr("valid_time"))?;
    }
    for (name, units) in [("latitude", "degrees_north"), ("longitude", "degrees_east")] {
        let mut v = file
            .add_variable::<f64>(name, &[name])
            .map_err(werr(name))?;
        v.put_attribute("units", units).map_err(werr(name))?;
        v.put_attribute("standard_name", name).map_err(werr(name))?;
    }
    add_expver(&mut file, grid, path)?;
    let dimensions = grid.data_dimensions("valid_time");
    // One chunk per step (and expver slice): a step is read whole or not at all.
    let mut chunk = vec![1; dimensions.len() - 2];
    chunk.extend([ny.max(1), nx.max(1)]);
    for var in variables {
        let mut v = file
            .add_variable::<f32>(&var.name, &dimensions)
            .map_err(werr(&var.name))?;
        v.set_chunking(&chunk).map_err(werr(&var.name))?;
        v.set_compression(1, true).map_err(werr(&var.name))?;
        v.set_fill_value(f32::NAN).map_err(werr(&var.name))?;
        v.put_attribute("units", var.units.as_str())
            .map_err(werr(&var.name))?;
        v.put_attribute("long_name", var.long_name.as_str())
            .map_err(werr(&var.name))?;
    }
    let seconds: Vec<i64> = grid.times.iter().map(|t| t.div_euclid(1_000_000)).collect();
    put(&mut file, "number", &[0i64], path)?;
    put(&mut file, "valid_time", &seconds, path)?;
    put(&mut file, "latitude", &grid.latitude, path)?;
    put(&mut file, "longitude", &grid.longitude, path)?;
    put_expver(&mut file, grid, path)?;
    for var in variables {
        let values = grid.data_values(var.values.clone(), f32::NAN);
        put(&mut file, &var.name, &values, path)?;
    }
    file.close().map_err(werr("file"))
}

/// The `expver` coordinate, where the grid has the dimension.
fn add_expver(file: &mut netcdf::FileMut, grid: &Grid, path: &Path) -> Result<()> {
    if grid.era5t_from.is_none() {
        return Ok(());
    }
    let name = crate::expver::DIMENSION;
    file.add_variable::<i32>(name, &[name])
        .and_then(|mut v| v.put_attribute("long_name", name).map(|_| ()))
        .map_err(write_error(path, name))
}

fn put_expver(file: &mut netcdf::FileMut, grid: &Grid, path: &Path) -> Result<()> {
    match grid.era5t_from {
        Some(_) => put(file, crate::expver::DIMENSION, &EXPVERS, path),
        None => Ok(()),
    }
}

/// Maps a libnetcdf failure on `variable` to an error naming the file.
fn write_error(path: &Path, variable: &str) -> impl Fn(netcdf::Error) -> NetcdfError + use<> {
    let (path, variable) = (path.to_path_buf(), variable.to_string());
    move |source| NetcdfError::Write {
        path: path.clone(),
        variable: variable.clone(),
        source,
    }
}

fn put<T: netcdf::NcTypeDescriptor>(
    file: &mut netcdf::FileMut,
    name: &str,
    values: &[T],
    path: &Path,
) -> Result<()> {
    let mut var = file
        .variable_mut(name)
        .ok_or_else(|| NetcdfError::MissingVariable {
            path: path.to_path_buf(),
            variable: name.to_string(),
            available: vec![],
        })?;
    var.put_values(values, ..).map_err(write_error(path, name))
}
