//! Reading one file's structure: the time, latitude and longitude axes, and
//! the gridded data variables laid out as (time, latitude, longitude).

use std::path::{Path, PathBuf};

use netcdf::types::{FloatType, IntType, NcVariableType};
use netcdf::{AttributeValue, Variable};

use crate::cf::{Calendar, Packing, TimeAxis};
use crate::error::{NetcdfError, Result};
use crate::expver::{self, Expver};

const TIME_NAMES: &[&str] = &["valid_time", "time"];
const LATITUDE_NAMES: &[&str] = &["latitude", "lat"];
const LONGITUDE_NAMES: &[&str] = &["longitude", "lon"];

/// The element type a variable is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StoredType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl StoredType {
    fn from_nc(t: &NcVariableType) -> Option<Self> {
        Some(match t {
            NcVariableType::Int(IntType::I8) => Self::I8,
            NcVariableType::Int(IntType::U8) => Self::U8,
            NcVariableType::Int(IntType::I16) => Self::I16,
            NcVariableType::Int(IntType::U16) => Self::U16,
            NcVariableType::Int(IntType::I32) => Self::I32,
            NcVariableType::Int(IntType::U32) => Self::U32,
            NcVariableType::Float(FloatType::F32) => Self::F32,
            NcVariableType::Float(FloatType::F64) => Self::F64,
            _ => return None,
        })
    }
}

/// A gridded data variable and how to decode it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariableInfo {
    pub name: String,
    pub stored: StoredType,
    pub packing: Packing,
    pub units: Option<String>,
    pub long_name: Option<String>,
    /// Stored as (time, expver, latitude, longitude): ERA5 and ERA5T steps
    /// in one variable, merged on reading ([`crate::expver`]).
    pub expver: Option<Expver>,
}

/// One coordinate axis: the variable's name and its values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Axis {
    pub name: String,
    pub values: Vec<f64>,
}

/// What uqcast needs to know about one ERA5 file before reading data.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FileInfo {
    pub path: PathBuf,
    /// Name of the time dimension/variable (`valid_time` or `time`).
    pub time_name: String,
    /// Step times, UTC microseconds since 1970-01-01, in file order.
    pub times: Vec<i64>,
    pub latitude: Axis,
    pub longitude: Axis,
    /// Gridded variables with dimensions (time, latitude, longitude), or
    /// (time, expver, latitude, longitude), in file order.
    pub variables: Vec<VariableInfo>,
    /// Every other variable, with its dimensions (`time, level, latitude,
    /// longitude`), so an error can say why one is not a column.
    pub ungridded: Vec<(String, String)>,
}

impl FileInfo {
    /// Opens `path` and reads its axes and variable descriptions (no data).
    #[tracing::instrument(level = "debug")]
    pub fn inspect(path: &Path) -> Result<Self> {
        let owned = path.to_path_buf();
        crate::io_thread::run_on(path, move || Self::inspect_here(&owned))
    }

    fn inspect_here(path: &Path) -> Result<Self> {
        crate::classic::check_complete(path)?;
        let file = open(path)?;
        let dim_names: Vec<String> = file.dimensions().map(|d| d.name()).collect();
        let find = |names: &[&str], axis: &'static str, candidates: &'static str| {
            names
                .iter()
                .find(|n| dim_names.iter().any(|d| d == *n))
                .map(|n| n.to_string())
                .ok_or_else(|| NetcdfError::MissingAxis {
                    path: path.to_path_buf(),
                    axis,
                    candidates,
                })
        };
        let time_name = find(TIME_NAMES, "time", "valid_time, time")?;
        let lat_name = find(LATITUDE_NAMES, "latitude", "latitude, lat")?;
        let lon_name = find(LONGITUDE_NAMES, "longitude", "longitude, lon")?;

        let times = read_times(&file, path, &time_name)?;
        let latitude = read_axis(&file, path, &lat_name)?;
        let longitude = read_axis(&file, path, &lon_name)?;
        let grid = [time_name.as_str(), lat_name.as_str(), lon_name.as_str()];
        let with_expver = [grid[0], expver::DIMENSION, grid[1], grid[2]];
        let mut variables = Vec::new();
        let mut ungridded = Vec::new();
        for var in file.variables() {
            let dims: Vec<String> = var.dimensions().iter().map(|d| d.name()).collect();
            if dims == grid {
                variables.push(describe(&var, path, None)?);
            } else if dims == with_expver && var.dimensions()[1].len() <= expver::MAX_SLICES {
                let slices = var.dimensions()[1].len();
                variables.push(describe(&var, path, Some(expver_of(&file, slices)))?);
            } else {
                ungridded.push((var.name(), dims.join(", ")));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            time_name,
            times,
            latitude,
            longitude,
            variables,
            ungridded,
        })
    }

    /// The gridded variable `name`, or an error listing what the file has.
    pub fn variable(&self, name: &str) -> Result<&VariableInfo> {
        self.variables
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| NetcdfError::MissingVariable {
                path: self.path.clone(),
                variable: name.to_string(),
                available: self.variables.iter().map(|v| v.name.clone()).collect(),
            })
    }
}

/// Opens a NetCDF file, mapping failure to an error naming the file and,
/// where its first bytes tell, what it is instead.
pub fn open(path: &Path) -> Result<netcdf::File> {
    netcdf::open(path).map_err(|source| NetcdfError::Open {
        path: path.to_path_buf(),
        what: crate::sniff::not_netcdf(path)
            .unwrap_or("corrupt, truncated or not NetCDF?")
            .to_string(),
        source,
    })
}

/// Why `name` is not a usable (time, latitude, longitude) variable of `info`'s file.
pub fn explain_layout(name: &str, info: &FileInfo) -> NetcdfError {
    match info.ungridded.iter().find(|(n, _)| n == name) {
        Some((_, found)) => NetcdfError::Dimensions {
            path: info.path.clone(),
            variable: name.to_string(),
            expected: format!(
                "{}, {}, {}",
                info.time_name, info.latitude.name, info.longitude.name
            ),
            found: found.clone(),
        },
        None => NetcdfError::MissingVariable {
            path: info.path.clone(),
            variable: name.to_string(),
            available: info.variables.iter().map(|v| v.name.clone()).collect(),
        },
    }
}

fn coordinate<'f>(file: &'f netcdf::File, path: &Path, name: &str) -> Result<Variable<'f>> {
    let var = file
        .variable(name)
        .ok_or_else(|| NetcdfError::MissingVariable {
            path: path.to_path_buf(),
            variable: name.to_string(),
            available: vec![],
        })?;
    if var.dimensions().len() != 1 {
        return Err(NetcdfError::Dimensions {
            path: path.to_path_buf(),
            variable: name.to_string(),
            expected: name.to_string(),
            found: dimension_list(&var),
        });
    }
    Ok(var)
}

/// A variable's dimension names, for messages: `time, latitude, longitude`.
fn dimension_list(var: &Variable<'_>) -> String {
    var.dimensions()
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The most values a coordinate may have: 50 million hourly steps are
/// 5,700 years, and a 0.001° global grid has 360,000 longitudes. A damaged
/// NetCDF4 dataspace can claim trillions, which reading would try to
/// allocate (and abort on) before any check of the values could run.
const MAX_AXIS: usize = 50_000_000;

fn read_values(var: &Variable<'_>, path: &Path) -> Result<Vec<f64>> {
    if var.len() > MAX_AXIS {
        return Err(NetcdfError::AxisTooLong {
            path: path.to_path_buf(),
            variable: var.name(),
            entries: var.len(),
            limit: MAX_AXIS,
        });
    }
    var.get_values::<f64, _>(..)
        .map_err(|source| NetcdfError::Read {
            path: path.to_path_buf(),
            variable: var.name(),
            source,
        })
}

/// A coordinate's values; one equal to the variable's fill value is an
/// error. Such a value was never written (libnetcdf fills unwritten
/// entries), and as a number it can pass for a real one: an int32 "seconds
/// since 1970" axis reads its default fill as December 1901.
fn read_coordinate(var: &Variable<'_>, path: &Path) -> Result<Vec<f64>> {
    let values = read_values(var, path)?;
    if let Some(fill) = fill_of(var)
        && let Some(index) = values.iter().position(|&v| v == fill)
    {
        return Err(NetcdfError::Unwritten {
            path: path.to_path_buf(),
            variable: var.name(),
            index,
            fill,
        });
    }
    Ok(values)
}

/// The value libnetcdf stores where nothing was written (`_FillValue`, else
/// the type's default), as f64; none when the variable is written without
/// fill.
fn fill_of(var: &Variable<'_>) -> Option<f64> {
    match var.vartype() {
        NcVariableType::Int(IntType::I8) => var.fill_value::<i8>().ok()?.map(f64::from),
        NcVariableType::Int(IntType::U8) => var.fill_value::<u8>().ok()?.map(f64::from),
        NcVariableType::Int(IntType::I16) => var.fill_value::<i16>().ok()?.map(f64::from),
        NcVariableType::Int(IntType::U16) => var.fill_value::<u16>().ok()?.map(f64::from),
        NcVariableType::Int(IntType::I32) => var.fill_value::<i32>().ok()?.map(f64::from),
        NcVariableType::Int(IntType::U32) => var.fill_value::<u32>().ok()?.map(f64::from),
        NcVariableType::Int(IntType::I64) => var.fill_value::<i64>().ok()?.map(|x| x as f64),
        NcVariableType::Int(IntType::U64) => var.fill_value::<u64>().ok()?.map(|x| x as f64),
        NcVariableType::Float(FloatType::F32) => var.fill_value::<f32>().ok()?.map(f64::from),
        NcVariableType::Float(FloatType::F64) => var.fill_value::<f64>().ok()?,
        _ => None,
    }
}

fn read_times(file: &netcdf::File, path: &Path, name: &str) -> Result<Vec<i64>> {
    let var = coordinate(file, path, name)?;
    let attr_err = |attribute: &str, problem: String| NetcdfError::Attribute {
        path: path.to_path_buf(),
        variable: name.to_string(),
        attribute: attribute.to_string(),
        problem,
    };
    let units = string_attr(&var, "units").ok_or_else(|| {
        attr_err(
            "units",
            "missing; CF time needs '<unit> since <date>'".into(),
        )
    })?;
    let calendar = string_attr(&var, "calendar");
    // Checked on its own first, so a calendar error names that attribute.
    Calendar::parse(calendar.as_deref()).map_err(|p| attr_err("calendar", p))?;
    let axis = TimeAxis::parse(&units, calendar.as_deref()).map_err(|p| attr_err("units", p))?;
    read_coordinate(&var, path)?
        .into_iter()
        .map(|v| axis.to_micros(v).map_err(|p| attr_err("units", p)))
        .collect()
}

fn read_axis(file: &netcdf::File, path: &Path, name: &str) -> Result<Axis> {
    let var = coordinate(file, path, name)?;
    let values = read_coordinate(&var, path)?;
    let increasing = values.len() < 2 || values[1] > values[0];
    for i in 1..values.len() {
        let ok = if increasing {
            values[i] > values[i - 1]
        } else {
            values[i] < values[i - 1]
        };
        if !ok {
            return Err(NetcdfError::NotMonotonic {
                path: path.to_path_buf(),
                variable: name.to_string(),
                index: i,
            });
        }
    }
    Ok(Axis {
        name: name.to_string(),
        values,
    })
}

/// How to merge `slices` expver slices: by the file's `expver` numbers
/// where it has them (the CDS writes `int expver(expver)`: 1, 5), else in
/// file order.
fn expver_of(file: &netcdf::File, slices: usize) -> Expver {
    let numbers = file
        .variable(expver::DIMENSION)
        .filter(|v| {
            matches!(
                v.vartype(),
                NcVariableType::Int(_) | NcVariableType::Float(_)
            )
        })
        .and_then(|v| v.get_values::<f64, _>(..).ok());
    Expver::new(slices, numbers.as_deref())
}

fn describe(var: &Variable<'_>, path: &Path, expver: Option<Expver>) -> Result<VariableInfo> {
    let name = var.name();
    let stored =
        StoredType::from_nc(&var.vartype()).ok_or_else(|| NetcdfError::UnsupportedType {
            path: path.to_path_buf(),
            variable: name.clone(),
            expected: "8/16/32-bit integers or 32/64-bit floats",
            found: format!("{:?}", var.vartype()),
        })?;
    let number = |attribute: &str| -> Result<Option<Vec<f64>>> {
        match var.attribute_value(attribute) {
            None => Ok(None),
            Some(value) => {
                let value = value.map_err(|source| NetcdfError::Read {
                    path: path.to_path_buf(),
                    variable: format!("{name}:{attribute}"),
                    source,
                })?;
                numbers(value)
                    .map(Some)
                    .ok_or_else(|| NetcdfError::Attribute {
                        path: path.to_path_buf(),
                        variable: name.clone(),
                        attribute: attribute.to_string(),
                        problem: "is not numeric".to_string(),
                    })
            }
        }
    };
    let single = |attribute: &str, default: f64| -> Result<f64> {
        Ok(number(attribute)?
            .and_then(|v| v.first().copied())
            .unwrap_or(default))
    };
    let scale = single("scale_factor", 1.0)?;
    let offset = single("add_offset", 0.0)?;
    let mut fills = number("_FillValue")?.unwrap_or_default();
    fills.extend(number("missing_value")?.unwrap_or_default());
    Ok(VariableInfo {
        packing: Packing::new(scale, offset, &fills),
        units: string_attr(var, "units"),
        long_name: string_attr(var, "long_name"),
        stored,
        name,
        expver,
    })
}

fn string_attr(var: &Variable<'_>, name: &str) -> Option<String> {
    match var.attribute_value(name)?.ok()? {
        AttributeValue::Str(s) => Some(s),
        AttributeValue::Strs(v) => Some(v.join(" ")),
        _ => None,
    }
}

fn numbers(value: AttributeValue) -> Option<Vec<f64>> {
    use AttributeValue as A;
    Some(match value {
        A::Uchar(x) => vec![x as f64],
        A::Schar(x) => vec![x as f64],
        A::Ushort(x) => vec![x as f64],
        A::Short(x) => vec![x as f64],
        A::Uint(x) => vec![x as f64],
        A::Int(x) => vec![x as f64],
        A::Ulonglong(x) => vec![x as f64],
        A::Longlong(x) => vec![x as f64],
        A::Float(x) => vec![x as f64],
        A::Double(x) => vec![x],
        A::Uchars(v) => v.into_iter().map(f64::from).collect(),
        A::Schars(v) => v.into_iter().map(f64::from).collect(),
        A::Ushorts(v) => v.into_iter().map(f64::from).collect(),
        A::Shorts(v) => v.into_iter().map(f64::from).collect(),
        A::Uints(v) => v.into_iter().map(f64::from).collect(),
        A::Ints(v) => v.into_iter().map(f64::from).collect(),
        A::Floats(v) => v.into_iter().map(f64::from).collect(),
        A::Doubles(v) => v,
        A::Ulonglongs(v) => v.into_iter().map(|x| x as f64).collect(),
        A::Longlongs(v) => v.into_iter().map(|x| x as f64).collect(),
        A::Str(_) | A::Strs(_) => return None,
    })
}
