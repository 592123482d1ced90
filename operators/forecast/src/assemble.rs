//! Gathers source rows into whole steps on the model grid.
//!
//! Rows may arrive in any order and batches may hold several steps or part
//! of one: each row goes to its step's cell by coordinate, and a step is
//! complete once every cell is filled. A row off the grid, a repeated cell,
//! a missing t2m, or a step still incomplete at the end of the input is an
//! error that says which step and what is wrong.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use datafusion::arrow::array::{Array, AsArray, PrimitiveArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType,
};

use crate::error::{ForecastError, Result, iso};
use crate::grid::ModelGrid;
use crate::pairs::StepField;

/// The source columns the operator needs.
pub const NEEDED: [&str; 4] = ["valid_time", "latitude", "longitude", "t2m"];

#[derive(Debug)]
struct Partial {
    values: Vec<f32>,
    filled: Vec<bool>,
    count: usize,
}

/// Collects rows until steps are complete.
#[derive(Debug)]
pub struct StepAssembler {
    grid: ModelGrid,
    origin: GridOrigin,
    open: BTreeMap<i64, Partial>,
    /// Steps already complete: a row for one is a repeat, not a new step.
    done: HashSet<i64>,
}

/// Where the grid came from, for the errors that name it.
#[derive(Debug, Clone, Copy)]
enum GridOrigin {
    /// The model's: a run.
    Model,
    /// The cells of the first step read (valid time): training.
    FirstStep(i64),
}

/// Checks the source schema has the needed columns (types are cast).
pub fn check_source_columns(schema: &datafusion::arrow::datatypes::Schema) -> Result<()> {
    let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for name in NEEDED {
        if !found.contains(&name) {
            return Err(ForecastError::Source(format!(
                "column '{name}' is missing (the query returns {}); it must return {}",
                if found.is_empty() {
                    "no columns".to_string()
                } else {
                    found.join(", ")
                },
                NEEDED.join(", ")
            )));
        }
    }
    Ok(())
}

/// A batch's needed columns, cast to the types the assembler reads.
#[derive(Debug)]
pub struct SourceColumns {
    time: PrimitiveArray<TimestampMicrosecondType>,
    lat: PrimitiveArray<Float64Type>,
    lon: PrimitiveArray<Float64Type>,
    t2m: PrimitiveArray<Float32Type>,
}

impl SourceColumns {
    pub fn of(batch: &RecordBatch) -> Result<Self> {
        let column = |name: &str, to: &DataType| -> Result<_> {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| ForecastError::Source(format!("column '{name}' is missing")))?;
            cast(array, to).map_err(|e| ForecastError::Source(format!("column '{name}': {e}")))
        };
        Ok(Self {
            time: column(
                "valid_time",
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )?
            .as_primitive()
            .clone(),
            lat: column("latitude", &DataType::Float64)?
                .as_primitive()
                .clone(),
            lon: column("longitude", &DataType::Float64)?
                .as_primitive()
                .clone(),
            t2m: column("t2m", &DataType::Float32)?.as_primitive().clone(),
        })
    }

    /// Row `row` as (valid time, latitude, longitude, t2m); t2m NaN where
    /// NULL. A NULL time or coordinate is an error; a missing t2m is one
    /// once the row is placed, naming its step and cell.
    pub fn row(&self, row: usize) -> Result<(i64, f64, f64, f32)> {
        let (time, lat, lon, t2m) = (&self.time, &self.lat, &self.lon, &self.t2m);
        if time.is_null(row) || lat.is_null(row) || lon.is_null(row) {
            return Err(ForecastError::Source(
                "valid_time, latitude and longitude must not be NULL".into(),
            ));
        }
        let value = if t2m.is_null(row) {
            f32::NAN
        } else {
            t2m.value(row)
        };
        Ok((time.value(row), lat.value(row), lon.value(row), value))
    }
}

/// A cell of a step given a second value (also after the step was whole).
fn appears_twice(t: i64, y: f64, x: f64) -> ForecastError {
    ForecastError::Grid(format!(
        "step {}: the cell at latitude {y}, longitude {x} appears twice",
        iso(t)
    ))
}

/// A step's t2m that is NULL or not a number.
fn missing_t2m(t: i64, y: f64, x: f64) -> ForecastError {
    ForecastError::Step {
        time: iso(t),
        problem: format!(
            "t2m is missing at latitude {y}, longitude {x}; the model needs complete fields"
        ),
    }
}

impl StepAssembler {
    /// Rows onto the model's grid.
    pub fn new(grid: ModelGrid) -> Self {
        Self {
            grid,
            origin: GridOrigin::Model,
            open: BTreeMap::new(),
            done: HashSet::new(),
        }
    }

    /// Rows onto `grid`, the cells of the step valid at `first` (training
    /// learns its grid from the first step read): every step must have the
    /// same cells.
    pub fn with_cells_of(grid: ModelGrid, first: i64) -> Self {
        Self {
            origin: GridOrigin::FirstStep(first),
            ..Self::new(grid)
        }
    }

    /// What the steps still incomplete take (their values and which cells
    /// are filled), and the list of those done.
    pub fn open_bytes(&self) -> usize {
        self.open.len() * self.grid.cells() * (size_of::<f32>() + size_of::<bool>())
            + self.done.capacity() * size_of::<i64>()
    }

    /// The grid as errors name it.
    fn grid_name(&self) -> String {
        match self.origin {
            GridOrigin::Model => format!("the model's grid {}", self.grid.describe()),
            GridOrigin::FirstStep(t) => format!(
                "the {} grid of step {}, the first step read",
                self.grid.describe(),
                iso(t)
            ),
        }
    }

    /// Adds a batch; returns the steps it completed, in time order.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<StepField>> {
        let columns = SourceColumns::of(batch)?;
        let mut completed = Vec::new();
        for row in 0..batch.num_rows() {
            let (t, y, x, value) = columns.row(row)?;
            self.place(t, y, x, value, &mut completed)?;
        }
        completed.sort_by_key(|s| s.time);
        Ok(completed)
    }

    /// Adds rows of (valid time, latitude, longitude, t2m), t2m NaN where
    /// it is missing; returns the steps they completed, in time order.
    pub fn push_rows(
        &mut self,
        rows: impl IntoIterator<Item = (i64, f64, f64, f32)>,
    ) -> Result<Vec<StepField>> {
        let mut completed = Vec::new();
        for (t, y, x, value) in rows {
            self.place(t, y, x, value, &mut completed)?;
        }
        completed.sort_by_key(|s| s.time);
        Ok(completed)
    }

    /// Puts one value in its step's cell; a step it completes goes to `completed`.
    fn place(
        &mut self,
        t: i64,
        y: f64,
        x: f64,
        value: f32,
        completed: &mut Vec<StepField>,
    ) -> Result<()> {
        let cells = self.grid.cells();
        let Some(cell) = self.grid.cell(y, x) else {
            let fix = match self.origin {
                GridOrigin::Model => "crop or coarsen the source query to that grid",
                GridOrigin::FirstStep(_) => "every step must have the same cells",
            };
            return Err(ForecastError::Grid(format!(
                "step {}: the cell at latitude {y}, longitude {x} is not on {}; {fix}",
                iso(t),
                self.grid_name()
            )));
        };
        if !value.is_finite() {
            return Err(missing_t2m(t, y, x));
        }
        let partial = match self.open.entry(t) {
            Entry::Occupied(open) => open.into_mut(),
            // A step already whole takes no more rows.
            Entry::Vacant(_) if self.done.contains(&t) => return Err(appears_twice(t, y, x)),
            Entry::Vacant(new) => new.insert(Partial {
                values: vec![f32::NAN; cells],
                filled: vec![false; cells],
                count: 0,
            }),
        };
        if std::mem::replace(&mut partial.filled[cell], true) {
            return Err(appears_twice(t, y, x));
        }
        partial.values[cell] = value;
        partial.count += 1;
        if partial.count == cells
            && let Some(done) = self.open.remove(&t)
        {
            self.done.insert(t);
            completed.push(StepField {
                time: t,
                values: done.values,
            });
        }
        Ok(())
    }

    /// Ends the input: any step still incomplete is an error.
    pub fn finish(self) -> Result<()> {
        match self.open.iter().next() {
            None => Ok(()),
            Some((t, partial)) => Err(ForecastError::Grid(format!(
                "step {} has {} of the {} cells of {}; the source query must return the whole grid for each step",
                iso(*t),
                partial.count,
                self.grid.cells(),
                self.grid_name()
            ))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float32Array, Float64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    /// Source rows (valid time, latitude, longitude, t2m) as a batch;
    /// latitude may be NULL in batches built on its schema.
    pub(crate) fn batch(rows: &[(i64, f64, f64, Option<f32>)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new(
                "valid_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("latitude", DataType::Float64, true),
            Field::new("longitude", DataType::Float64, false),
            Field::new("t2m", DataType::Float32, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(rows.iter().map(|r| r.3).collect::<Float32Array>()),
            ],
        )
        .unwrap()
    }

    fn grid() -> ModelGrid {
        ModelGrid::new(vec![1.0, 0.0], vec![10.0, 11.0])
    }

    #[test]
    fn steps_complete_in_any_row_order_and_across_batches() {
        let mut a = StepAssembler::new(grid());
        let first = a
            .push(&batch(&[
                (1, 0.0, 11.0, Some(4.0)),
                (2, 1.0, 10.0, Some(9.0)),
                (1, 1.0, 10.0, Some(1.0)),
            ]))
            .unwrap();
        assert!(first.is_empty());
        let done = a
            .push(&batch(&[
                (1, 1.0, 11.0, Some(2.0)),
                (1, 0.0, 10.0, Some(3.0)),
            ]))
            .unwrap();
        assert_eq!(
            done,
            vec![StepField {
                time: 1,
                values: vec![1.0, 2.0, 3.0, 4.0]
            }]
        );
        let err = a.finish().unwrap_err().to_string();
        assert!(err.contains("has 1 of the 4 cells"), "{err}");
    }

    #[test]
    fn off_grid_duplicate_and_missing_cells_are_errors() {
        let err = StepAssembler::new(grid())
            .push(&batch(&[(0, 0.5, 10.0, Some(1.0))]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("latitude 0.5") && err.contains("2×2"), "{err}");
        let err = StepAssembler::new(grid())
            .push(&batch(&[
                (0, 0.0, 10.0, Some(1.0)),
                (0, 0.0, 10.0, Some(1.0)),
            ]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
        // A repeat after its step is whole is a repeat too, not a second
        // step of the same time (it was, on a grid filled by one batch).
        let whole = [
            (0, 0.0, 10.0, Some(1.0)),
            (0, 0.0, 11.0, Some(1.0)),
            (0, 1.0, 10.0, Some(1.0)),
            (0, 1.0, 11.0, Some(1.0)),
        ];
        let mut a = StepAssembler::new(grid());
        assert_eq!(a.push(&batch(&whole)).unwrap().len(), 1);
        let err = a.push(&batch(&whole[..1])).unwrap_err().to_string();
        assert!(
            err.contains(
                "step 1970-01-01T00:00Z: the cell at latitude 0, longitude 10 appears twice"
            ),
            "{err}"
        );
        let err = StepAssembler::new(grid())
            .push(&batch(&[(0, 0.0, 10.0, None)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t2m is missing"), "{err}");
    }

    /// Training's grid is the first step's cells: its errors name that
    /// step, for a cell the step lacks and for a step with fewer cells, and
    /// the open steps are counted while they wait.
    #[test]
    fn training_errors_name_the_first_step_read() {
        let six = 6 * 3_600_000_000;
        let mut a = StepAssembler::with_cells_of(grid(), six);
        let err = a
            .push(&batch(&[(0, 0.0, 12.0, Some(1.0))]))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "step 1970-01-01T00:00Z: the cell at latitude 0, longitude 12 is not on the 2×2 \
                 (latitude 1…0, longitude 10…11) grid of step 1970-01-01T06:00Z, the first step \
                 read; every step must have the same cells"
            ),
            "{err}"
        );
        let mut a = StepAssembler::with_cells_of(grid(), six);
        assert_eq!(a.open_bytes(), 0);
        a.push(&batch(&[(0, 1.0, 10.0, Some(1.0))])).unwrap();
        assert_eq!(a.open_bytes(), 4 * 5, "one open step of 4 cells");
        let err = a.finish().unwrap_err().to_string();
        assert!(
            err.ends_with(
                "step 1970-01-01T00:00Z has 1 of the 4 cells of the 2×2 (latitude 1…0, \
                 longitude 10…11) grid of step 1970-01-01T06:00Z, the first step read; the \
                 source query must return the whole grid for each step"
            ),
            "{err}"
        );
    }
}
