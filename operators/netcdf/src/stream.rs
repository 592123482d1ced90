//! The per-partition scan: a blocking task that reads steps in time order and
//! sends one RecordBatch per step through a bounded channel (backpressure:
//! at most one decoded step waits while the next is read).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float32Array, Float64Array, RecordBatch, RecordBatchOptions,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::metrics::{BaselineMetrics, Count, RecordOutput, Time};
use tokio::sync::mpsc::Sender;

use crate::catalog::{Catalog, Step, T2M};
use crate::copies::LocalCopies;
use crate::error::NetcdfError;
use crate::reader::{Hyperslab, StepReader};
use crate::schema::COORDINATES;

/// Metrics one partition records (visible in `EXPLAIN ANALYZE`).
#[derive(Debug, Clone)]
pub struct ScanMetrics {
    pub baseline: BaselineMetrics,
    /// Time reading stored values: I/O, waiting for the NetCDF I/O thread,
    /// and decompression where libnetcdf does it.
    pub read_time: Time,
    pub steps_read: Count,
}

/// Everything a partition needs, owned, so it can move to a blocking thread.
#[derive(Debug)]
pub struct PartitionScan {
    pub catalog: Arc<Catalog>,
    pub schema: SchemaRef,
    /// Indices into the full table schema, in output order.
    pub projection: Vec<usize>,
    pub slab: Hyperslab,
    pub steps: Vec<Step>,
    /// Makes a file present before it is opened (see [`LocalCopies`]),
    /// told how many steps the whole scan reads from each file.
    pub copies: Option<(LocalCopies, Vec<usize>)>,
    pub metrics: ScanMetrics,
}

impl PartitionScan {
    /// Runs to completion or until the consumer hangs up.
    pub fn run(self, tx: Sender<Result<RecordBatch>>) -> Result<()> {
        let coordinates = self.coordinate_columns();
        let mut open: Option<(usize, StepReader)> = None;
        for step in &self.steps {
            // The whole step is the operator's own work (opening, reading,
            // decoding, building the batch); waiting on the consumer is not.
            let compute = self.metrics.baseline.elapsed_compute().timer();
            let batch = {
                let reader = match &open {
                    Some((file, reader)) if *file == step.file => reader,
                    _ => {
                        let path = self.present(step.file)?;
                        let _t = self.metrics.read_time.timer();
                        let reader = StepReader::open(&path)?;
                        &open.insert((step.file, reader)).1
                    }
                };
                self.batch(reader, step, &coordinates)?
            };
            compute.done();
            self.metrics.steps_read.add(1);
            let batch = batch.record_output(&self.metrics.baseline);
            if tx.blocking_send(Ok(batch)).is_err() {
                break; // the query finished early (LIMIT) or was cancelled
            }
        }
        self.metrics.baseline.done();
        Ok(())
    }

    /// The file to open for catalog file `file`: as the session's
    /// [`LocalCopies`] makes it present, with the steps this partition
    /// reads from it, and how many of its steps the whole scan reads.
    fn present(&self, file: usize) -> Result<std::path::PathBuf> {
        let path = &self.catalog.files[file].path;
        let Some((copies, in_scan)) = &self.copies else {
            return Ok(path.clone());
        };
        let steps: Vec<usize> = self
            .steps
            .iter()
            .filter(|s| s.file == file)
            .map(|s| s.index)
            .collect();
        copies
            .make_present(path, &steps, in_scan[file])
            .map_err(DataFusionError::Execution)
    }

    /// Latitude and longitude columns are the same for every step of the
    /// partition: build them once and share the buffers between batches.
    fn coordinate_columns(&self) -> [Option<ArrayRef>; 2] {
        let lat = &self.catalog.latitude().values[self.slab.latitude.clone()];
        let lon = &self.catalog.longitude().values[self.slab.longitude.clone()];
        let wants = |i: usize| self.projection.contains(&i);
        let latitude = wants(1).then(|| {
            let v: Vec<f64> = lat
                .iter()
                .flat_map(|&y| std::iter::repeat_n(y, lon.len()))
                .collect();
            Arc::new(Float64Array::from(v)) as ArrayRef
        });
        let longitude = wants(2).then(|| {
            let v: Vec<f64> = std::iter::repeat_n(lon, lat.len())
                .flatten()
                .copied()
                .collect();
            Arc::new(Float64Array::from(v)) as ArrayRef
        });
        [latitude, longitude]
    }

    /// Errors on the first t2m value no temperature in kelvin can have,
    /// naming the file, step and cell.
    fn check_kelvin(&self, values: &Float32Array, step: &Step) -> Result<()> {
        let range = crate::plausible::T2M_KELVIN;
        let Some((i, value)) = crate::plausible::first_outside(values, &range) else {
            return Ok(());
        };
        let columns = self.slab.longitude.len();
        let (row, column) = (i / columns, i % columns);
        Err(NetcdfError::Implausible {
            path: self.catalog.files[step.file].path.clone(),
            variable: T2M.to_string(),
            time: crate::cf::time::format_micros(step.time),
            latitude: self.catalog.latitude().values[self.slab.latitude.start + row],
            longitude: self.catalog.longitude().values[self.slab.longitude.start + column],
            value,
            low: *range.start(),
            high: *range.end(),
        }
        .into())
    }

    fn batch(
        &self,
        reader: &StepReader,
        step: &Step,
        coordinates: &[Option<ArrayRef>; 2],
    ) -> Result<RecordBatch> {
        let rows = self.slab.cells();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.projection.len());
        for &index in &self.projection {
            let column = match index {
                0 => {
                    let time =
                        TimestampMicrosecondArray::from_value(step.time, rows).with_timezone("UTC");
                    Arc::new(time) as ArrayRef
                }
                1 | 2 => coordinates[index - 1].clone().ok_or_else(|| {
                    DataFusionError::Internal(format!("coordinate column {index} not prepared"))
                })?,
                _ => {
                    let name = &self.catalog.variables[index - COORDINATES].name;
                    let variable = self.catalog.variable_in(step.file, name)?;
                    let values =
                        reader.read(variable, step.index, &self.slab, &self.metrics.read_time)?;
                    if name == T2M {
                        self.check_kelvin(&values, step)?;
                    }
                    Arc::new(values) as ArrayRef
                }
            };
            columns.push(column);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}
