//! A table's files: path expansion (file, directory or glob), one shared grid,
//! and every step of every file ordered by time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cf::time::format_micros;
use crate::error::{NetcdfError, Result};
use crate::inspect::{Axis, FileInfo, VariableInfo};
use crate::kept_inspections::KeptInspections;

/// The variable every ERA5 table must have.
pub const T2M: &str = "t2m";

/// File name extensions a folder's NetCDF files are found by.
pub const NETCDF_EXTENSIONS: &[&str] = &["nc", "nc4", "netcdf", "cdf"];

/// One 6-hour (or whatever the files hold) step: which file, which index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub file: usize,
    pub index: usize,
    /// UTC microseconds since 1970-01-01.
    pub time: i64,
}

/// All files of one table, checked to share a grid and the selected variables.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub files: Vec<Arc<FileInfo>>,
    /// Steps ordered by time; no two share a time.
    pub steps: Vec<Step>,
    /// The data columns, described from the first file (t2m first).
    pub variables: Vec<VariableInfo>,
    /// Whether the files were opened to build this; a catalog built from
    /// headers a planner sent plans scans, and cannot read them (how each
    /// variable is stored and packed is known only from the files).
    pub opened: bool,
}

impl Catalog {
    /// Builds the catalog for `locations` (files, directories or globs).
    ///
    /// `variables`: the data variables to expose; `None` means `t2m` plus every
    /// other gridded variable of the first file. Blocking: call off the async
    /// executor.
    pub fn open(locations: &[String], variables: Option<&[String]>) -> Result<Self> {
        let paths = expand_all(locations)?;
        let files = paths
            .iter()
            .map(|p| FileInfo::inspect(p))
            .collect::<Result<Vec<_>>>()?;
        Self::of_files(locations, files, variables)
    }

    /// As [`Catalog::open`], taking each unchanged file's inspection from
    /// those kept in `kept` and keeping the ones made
    /// ([`crate::kept_inspections`]).
    pub fn open_keeping(
        locations: &[String],
        variables: Option<&[String]>,
        kept: &Path,
    ) -> Result<Self> {
        let paths = expand_all(locations)?;
        let mut inspections = KeptInspections::load(kept);
        let files = paths
            .iter()
            .map(|p| inspections.inspect(p))
            .collect::<Result<Vec<_>>>()?;
        inspections.save(&paths);
        Self::of_files(locations, files, variables)
    }

    fn of_files(
        locations: &[String],
        files: Vec<FileInfo>,
        variables: Option<&[String]>,
    ) -> Result<Self> {
        if files.is_empty() {
            return Err(NetcdfError::NoFiles {
                path: locations.join(", "),
                hint: String::new(),
            });
        }
        Self::assemble(files, variables, true)
    }

    /// The catalog of `files` (at least one, in path order), checked to
    /// share the first file's grid and to have `variables`.
    pub(crate) fn assemble(
        files: Vec<FileInfo>,
        variables: Option<&[String]>,
        opened: bool,
    ) -> Result<Self> {
        let files: Vec<Arc<FileInfo>> = files.into_iter().map(Arc::new).collect();
        let first = files.first().ok_or_else(|| NetcdfError::NoFiles {
            path: "(no files)".into(),
            hint: String::new(),
        })?;
        let names = choose_variables(first, variables)?;
        let mut chosen = Vec::with_capacity(names.len());
        for name in &names {
            chosen.push(describe_or_explain(first, name)?);
        }
        for file in &files[1..] {
            check_same_grid(first, file)?;
            for name in &names {
                describe_or_explain(file, name)?;
            }
        }
        let steps = order_steps(&files)?;
        Ok(Self {
            files,
            steps,
            variables: chosen,
            opened,
        })
    }

    /// The steps at `times` (UTC µs), partition by partition; `Err` holds
    /// the first time no file has.
    pub fn steps_at(&self, times: &[Vec<i64>]) -> std::result::Result<Vec<Vec<Step>>, i64> {
        let at = |t: i64| {
            self.steps
                .binary_search_by_key(&t, |s| s.time)
                .map(|i| self.steps[i])
                .map_err(|_| t)
        };
        times
            .iter()
            .map(|partition| partition.iter().map(|&t| at(t)).collect())
            .collect()
    }

    pub fn latitude(&self) -> &Axis {
        &self.files[0].latitude
    }

    pub fn longitude(&self) -> &Axis {
        &self.files[0].longitude
    }

    /// The description of `variable` as stored in `file` (packing varies by file).
    pub fn variable_in(&self, file: usize, variable: &str) -> Result<&VariableInfo> {
        self.files[file].variable(variable)
    }
}

fn choose_variables(first: &FileInfo, requested: Option<&[String]>) -> Result<Vec<String>> {
    match requested {
        Some(names) => Ok(names.to_vec()),
        None => {
            describe_or_explain(first, T2M)?;
            let mut names = vec![T2M.to_string()];
            names.extend(
                first
                    .variables
                    .iter()
                    .map(|v| v.name.clone())
                    .filter(|n| n != T2M),
            );
            Ok(names)
        }
    }
}

/// The variable's description, or why it is absent; `t2m` must be in kelvin.
fn describe_or_explain(file: &FileInfo, name: &str) -> Result<VariableInfo> {
    let v = match file.variable(name) {
        Ok(v) => v.clone(),
        Err(_) => return Err(crate::inspect::explain_layout(name, file)),
    };
    if name == T2M && !crate::schema::is_kelvin(v.units.as_deref()) {
        return Err(NetcdfError::Attribute {
            path: file.path.clone(),
            variable: name.to_string(),
            attribute: "units".to_string(),
            problem: format!(
                "is {:?}, expected \"K\"",
                v.units.as_deref().unwrap_or("missing")
            ),
        });
    }
    Ok(v)
}

/// The files of `locations`, in path order, each once.
fn expand_all(locations: &[String]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for location in locations {
        paths.extend(expand(location)?);
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Expands one location into the NetCDF files it names, sorted.
pub fn expand(location: &str) -> Result<Vec<PathBuf>> {
    let is_glob = location.contains(['*', '?', '[']);
    let mut found = if is_glob {
        let entries = glob::glob(location).map_err(|e| NetcdfError::List {
            path: location.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        entries
            .filter_map(|e| e.ok())
            .filter(|p| p.is_file())
            .collect::<Vec<_>>()
    } else {
        let path = Path::new(location);
        if path.is_dir() {
            let list_err = |source| NetcdfError::List {
                path: location.to_string(),
                source,
            };
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(list_err)? {
                let p = entry.map_err(list_err)?.path();
                if is_netcdf(&p) {
                    files.push(p);
                }
            }
            files
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else {
            return Err(NetcdfError::NotFound {
                path: location.to_string(),
            });
        }
    };
    if found.is_empty() {
        return Err(if is_glob {
            NetcdfError::NotFound {
                path: location.to_string(),
            }
        } else {
            NetcdfError::NoFiles {
                path: location.to_string(),
                hint: subfolder_hint(Path::new(location))
                    + &crate::sniff::downloads_hint(Path::new(location)),
            }
        });
    }
    found.sort();
    Ok(found)
}

fn is_netcdf(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    path.is_file() && NETCDF_EXTENSIONS.contains(&ext.as_str())
}

/// For a directory without NetCDF files of its own (ERA5 downloads kept in
/// one folder per year, say): which subfolders hold some, and the glob that
/// reads them.
fn subfolder_hint(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut holding: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && std::fs::read_dir(p)
                    .map(|sub| sub.filter_map(|e| e.ok()).any(|e| is_netcdf(&e.path())))
                    .unwrap_or(false)
        })
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    if holding.is_empty() {
        return String::new();
    }
    holding.sort();
    format!(
        " (its subfolders {} hold some; a glob reads them: '{}')",
        holding.join(", "),
        dir.join("*").join("*.nc").display()
    )
}

fn check_same_grid(reference: &FileInfo, file: &FileInfo) -> Result<()> {
    for (a, b) in [
        (&reference.latitude, &file.latitude),
        (&reference.longitude, &file.longitude),
    ] {
        let detail = if a.values.len() != b.values.len() {
            Some(format!(
                "has {} values, expected {}",
                b.values.len(),
                a.values.len()
            ))
        } else {
            a.values
                .iter()
                .zip(&b.values)
                .position(|(x, y)| (x - y).abs() > 1e-6)
                .map(|i| format!("[{i}] is {}, expected {}", b.values[i], a.values[i]))
        };
        if let Some(detail) = detail {
            return Err(NetcdfError::GridMismatch {
                path: file.path.clone(),
                reference: reference.path.clone(),
                variable: b.name.clone(),
                detail,
            });
        }
    }
    Ok(())
}

fn order_steps(files: &[Arc<FileInfo>]) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = files
        .iter()
        .enumerate()
        .flat_map(|(file, info)| {
            info.times
                .iter()
                .enumerate()
                .map(move |(index, &time)| Step { file, index, time })
        })
        .collect();
    steps.sort_by_key(|s| (s.time, s.file, s.index));
    if let Some(pair) = steps.windows(2).find(|w| w[0].time == w[1].time) {
        return Err(NetcdfError::DuplicateStep {
            path: files[pair[1].file].path.clone(),
            other: files[pair[0].file].path.clone(),
            time: format_micros(pair[1].time),
        });
    }
    Ok(steps)
}
