//! Plan serialisation: what an [`Era5TableProvider`] or a [`NetcdfExec`] is
//! rebuilt from in another process (a distributed scheduler or executor).
//!
//! A spec names the files, not their contents: the process that decodes it
//! opens the same paths (shared storage) and checks they still hold the grid
//! and the steps that were planned, so a plan is never run against data it
//! was not planned for.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::cf::Packing;
use crate::error::{NetcdfError, Result};
use crate::exec::NetcdfExec;
use crate::inspect::{Axis, FileInfo, StoredType, VariableInfo};
use crate::provider::Era5TableProvider;
use crate::pushdown::Selection;
use crate::reader::Hyperslab;
use crate::schema::era5_schema;

/// An ERA5 table: its files (expanded, sorted) and its data variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSpec {
    pub files: Vec<PathBuf>,
    pub variables: Vec<String>,
}

/// A planned scan: the table, the columns, the pushed-down selection, the
/// hyperslab, and each partition's steps by time (UTC microseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanSpec {
    pub table: TableSpec,
    pub projection: Vec<usize>,
    pub selection: Selection,
    /// Latitude and longitude index ranges, `[start, end)`.
    pub latitude: (usize, usize),
    pub longitude: (usize, usize),
    pub partitions: Vec<Vec<i64>>,
}

impl TableSpec {
    fn of(catalog: &Catalog) -> Self {
        Self {
            files: catalog.files.iter().map(|f| f.path.clone()).collect(),
            variables: catalog.variables.iter().map(|v| v.name.clone()).collect(),
        }
    }

    /// Opens the files again (blocking I/O) and checks they are the same set.
    fn open(&self) -> Result<Catalog> {
        let locations: Vec<String> = self
            .files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let catalog = Catalog::open(&locations, Some(&self.variables))?;
        let found = TableSpec::of(&catalog);
        if found.files != self.files {
            return Err(self.replanned(format!(
                "planned over {} files, {} found",
                self.files.len(),
                found.files.len()
            )));
        }
        Ok(catalog)
    }

    fn replanned(&self, problem: String) -> NetcdfError {
        let files = match self.files.as_slice() {
            [] => "(no files)".to_string(),
            [one] => one.display().to_string(),
            [first, .., last] => format!(
                "{} … {} ({} files)",
                first.display(),
                last.display(),
                self.files.len()
            ),
        };
        NetcdfError::Replanned { files, problem }
    }
}

/// What a table's files were found to hold when it was planned: the grid,
/// and each file's time axis and variables (as [`TableSpec::files`]). A
/// process given these plans over the files without opening them (a
/// distributed scheduler); a process that reads the files opens them, and
/// checks them against its scan's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableHeaders {
    pub latitude: Axis,
    pub longitude: Axis,
    pub files: Vec<FileHeader>,
}

/// One file's time axis and data variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHeader {
    pub time_name: String,
    /// UTC microseconds, in file order.
    pub times: Vec<i64>,
    pub variables: Vec<VariableHeader>,
}

/// A data variable as a plan needs it: its column's name and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariableHeader {
    pub name: String,
    pub units: Option<String>,
    pub long_name: Option<String>,
}

impl Era5TableProvider {
    pub fn spec(&self) -> TableSpec {
        TableSpec::of(self.catalog())
    }

    /// Rebuilds the table from its spec (blocking I/O).
    pub fn from_spec(spec: &TableSpec) -> Result<Self> {
        Ok(Self::from_catalog(spec.open()?))
    }

    /// What the table's files hold, for [`Self::from_headers`].
    pub fn headers(&self) -> TableHeaders {
        let catalog = self.catalog();
        TableHeaders {
            latitude: catalog.latitude().clone(),
            longitude: catalog.longitude().clone(),
            files: catalog
                .files
                .iter()
                .map(|f| FileHeader {
                    time_name: f.time_name.clone(),
                    times: f.times.clone(),
                    variables: f
                        .variables
                        .iter()
                        .map(|v| VariableHeader {
                            name: v.name.clone(),
                            units: v.units.clone(),
                            long_name: v.long_name.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The table `spec` names, planned from `headers` without opening its
    /// files. Its scans plan and travel; they cannot be read here (a
    /// reading process rebuilds a scan from its spec, opening the files).
    pub fn from_headers(spec: &TableSpec, headers: &TableHeaders) -> Result<Self> {
        if headers.files.len() != spec.files.len() {
            return Err(spec.replanned(format!(
                "headers of {} files for {} files",
                headers.files.len(),
                spec.files.len()
            )));
        }
        let files = spec
            .files
            .iter()
            .zip(&headers.files)
            .map(|(path, file)| FileInfo {
                path: path.clone(),
                time_name: file.time_name.clone(),
                times: file.times.clone(),
                latitude: headers.latitude.clone(),
                longitude: headers.longitude.clone(),
                variables: file
                    .variables
                    .iter()
                    .map(|v| VariableInfo {
                        name: v.name.clone(),
                        // Unknown until the file is opened; never read here.
                        stored: StoredType::F32,
                        packing: Packing::default(),
                        units: v.units.clone(),
                        long_name: v.long_name.clone(),
                        expver: None,
                    })
                    .collect(),
                ungridded: Vec::new(),
            })
            .collect();
        let catalog = Catalog::assemble(files, Some(&spec.variables), false)?;
        Ok(Self::from_catalog(catalog))
    }
}

impl ScanSpec {
    /// The columns the scan was planned to produce, known without opening
    /// its files (which add each variable's units and long name): for a
    /// process that must stand in for a scan it could not rebuild.
    pub fn planned_schema(&self) -> Result<SchemaRef> {
        let variables: Vec<VariableInfo> = self
            .table
            .variables
            .iter()
            .map(|name| VariableInfo {
                name: name.clone(),
                stored: StoredType::F32,
                packing: Packing::default(),
                units: None,
                long_name: None,
                expver: None,
            })
            .collect();
        let schema = era5_schema(&variables)
            .project(&self.projection)
            .map_err(|e| {
                self.table
                    .replanned(format!("projection {:?}: {e}", self.projection))
            })?;
        Ok(Arc::new(schema))
    }
}

impl NetcdfExec {
    /// The scan as it travels. Its table is the files its steps are in
    /// (the first file if none, for the grid), not the whole table's: every
    /// task of a distributed scan rebuilds it over all of them (each reads
    /// only its own steps), so an executor describes the files the scan
    /// reads, and fetches only those its tasks read.
    pub fn spec(&self) -> ScanSpec {
        let (catalog, projection, selection, slab, partitions) = self.parts();
        let mut read: Vec<usize> = partitions.iter().flatten().map(|s| s.file).collect();
        read.sort_unstable();
        read.dedup();
        if read.is_empty() {
            read.push(0);
        }
        let mut table = TableSpec::of(catalog);
        table.files = read.iter().map(|&i| table.files[i].clone()).collect();
        ScanSpec {
            table,
            projection: projection.to_vec(),
            selection: selection.clone(),
            latitude: (slab.latitude.start, slab.latitude.end),
            longitude: (slab.longitude.start, slab.longitude.end),
            partitions: partitions
                .iter()
                .map(|steps| steps.iter().map(|s| s.time).collect())
                .collect(),
        }
    }

    /// Rebuilds the scan from its spec (blocking I/O), with the same
    /// partitions and steps; fails if a planned step or cell is gone.
    pub fn from_spec(spec: &ScanSpec) -> Result<Self> {
        Self::over_catalog(spec, spec.table.open()?)
    }

    /// Rebuilds the scan from its spec over `files`, one per file the spec
    /// names, in its order, described by the caller (an S3 object from its
    /// header, to be fetched when read: see [`crate::LocalCopies`]).
    pub fn from_described(spec: &ScanSpec, files: Vec<FileInfo>) -> Result<Self> {
        let table = &spec.table;
        if files.len() != table.files.len() {
            return Err(table.replanned(format!(
                "{} files described for {} planned",
                files.len(),
                table.files.len()
            )));
        }
        let catalog = Catalog::assemble(files, Some(&table.variables), true)?;
        Self::over_catalog(spec, catalog)
    }

    fn over_catalog(spec: &ScanSpec, catalog: Catalog) -> Result<Self> {
        let table = &spec.table;
        let full_schema = era5_schema(&catalog.variables);
        if let Some(&bad) = spec
            .projection
            .iter()
            .find(|&&i| i >= full_schema.fields().len())
        {
            return Err(table.replanned(format!(
                "column {bad} planned, the table has {}",
                full_schema.fields().len()
            )));
        }
        let schema = Arc::new(
            full_schema
                .project(&spec.projection)
                .map_err(|e| table.replanned(format!("projection {:?}: {e}", spec.projection)))?,
        );
        let axis = |(start, end): (usize, usize), len: usize, name: &str| {
            if start <= end && end <= len {
                Ok(start..end)
            } else {
                Err(table.replanned(format!(
                    "{name} cells {start}..{end} planned, the grid has {len}"
                )))
            }
        };
        let slab = Hyperslab {
            latitude: axis(spec.latitude, catalog.latitude().values.len(), "latitude")?,
            longitude: axis(
                spec.longitude,
                catalog.longitude().values.len(),
                "longitude",
            )?,
        };
        let partitions = catalog.steps_at(&spec.partitions).map_err(|time| {
            table.replanned(format!(
                "step {} planned, not in the files",
                crate::cf::time::format_micros(time)
            ))
        })?;
        Ok(Self::from_parts(
            Arc::new(catalog),
            schema,
            spec.projection.clone(),
            spec.selection.clone(),
            slab,
            partitions,
        ))
    }
}
