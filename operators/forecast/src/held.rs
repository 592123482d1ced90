//! Source rows held until the grid they lie on is known.
//!
//! Training takes its grid from the rows themselves (the coordinates they
//! hold, every step covering all of them), so a span is read to its end
//! before its first step can be assembled. Held as Arrow batches a row takes
//! up to 28 bytes (its time and coordinates as 8-byte numbers, its t2m;
//! less where batches share coordinate arrays, as a plain scan's do, but a
//! filter's output does not); here it takes 12: its coordinates as indices
//! into the distinct values seen, its t2m, and its time once per run of
//! rows with the same time.

use std::collections::HashMap;

use datafusion::arrow::array::RecordBatch;

use crate::assemble::{SourceColumns, StepAssembler};
use crate::error::{ForecastError, Result};
use crate::grid::{ModelGrid, key};
use crate::pairs::StepField;

/// What a held row takes: two coordinate indices and its t2m, 4 bytes each
/// (its time is kept once per run of rows).
pub const BYTES_PER_ROW: u64 = 12;

/// Rows as they stream by, for [`HeldRows::into_steps`] once they all have.
#[derive(Debug, Default)]
pub struct HeldRows {
    latitudes: Distinct,
    longitudes: Distinct,
    /// One per batch, each allocated to its size.
    chunks: Vec<Chunk>,
    /// What the chunks take, kept as they come (a sum over them per batch
    /// would grow with the square of a long span's steps).
    chunk_bytes: usize,
    rows: usize,
}

/// Distinct coordinate values in the order first seen (the first value
/// seen for a micro-degree key, as [`ModelGrid::from_coordinates`] keeps).
#[derive(Debug, Default)]
struct Distinct {
    index: HashMap<i64, u32>,
    values: Vec<f64>,
}

impl Distinct {
    fn index_of(&mut self, value: f64) -> Result<u32> {
        if let Some(&i) = self.index.get(&key(value)) {
            return Ok(i);
        }
        let i = u32::try_from(self.values.len()).map_err(|_| {
            ForecastError::Grid("the source rows hold more than 2³² distinct coordinates".into())
        })?;
        self.index.insert(key(value), i);
        self.values.push(value);
        Ok(i)
    }
}

#[derive(Debug)]
struct Chunk {
    latitude: Vec<u32>,
    longitude: Vec<u32>,
    t2m: Vec<f32>,
    /// (valid time, rows) per run of rows with one time.
    times: Vec<(i64, u32)>,
}

impl Chunk {
    /// The memory its rows take (its own fields are counted with the list
    /// of chunks).
    fn bytes(&self) -> usize {
        (self.latitude.capacity() + self.longitude.capacity() + self.t2m.capacity()) * 4
            + self.times.capacity() * size_of::<(i64, u32)>()
    }
}

impl HeldRows {
    /// Holds a batch's rows; a NULL time or coordinate is an error here, a
    /// missing t2m once its row is placed (naming its step and cell).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let columns = SourceColumns::of(batch)?;
        let n = batch.num_rows();
        let mut chunk = Chunk {
            latitude: Vec::with_capacity(n),
            longitude: Vec::with_capacity(n),
            t2m: Vec::with_capacity(n),
            times: Vec::new(),
        };
        for row in 0..n {
            let (t, y, x, value) = columns.row(row)?;
            chunk.latitude.push(self.latitudes.index_of(y)?);
            chunk.longitude.push(self.longitudes.index_of(x)?);
            chunk.t2m.push(value);
            match chunk.times.last_mut() {
                Some((last, count)) if *last == t => *count += 1,
                _ => chunk.times.push((t, 1)),
            }
        }
        chunk.times.shrink_to_fit();
        self.chunk_bytes += chunk.bytes();
        self.chunks.push(chunk);
        self.rows += n;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The memory the held rows take.
    pub fn bytes(&self) -> usize {
        let distinct = |d: &Distinct| d.values.capacity() * 8 + d.index.capacity() * 16;
        distinct(&self.latitudes)
            + distinct(&self.longitudes)
            + self.chunks.capacity() * size_of::<Chunk>()
            + self.chunk_bytes
    }

    /// The grid of every coordinate held, and the rows assembled into whole
    /// steps on it, in time order; each chunk is let go once placed.
    pub fn into_steps(self) -> Result<(ModelGrid, Vec<StepField>)> {
        let (lats, lons) = (self.latitudes.values, self.longitudes.values);
        let grid = ModelGrid::from_coordinates(lats.iter().copied(), lons.iter().copied());
        let mut assembler = StepAssembler::new(grid.clone());
        let mut steps = Vec::new();
        for chunk in self.chunks {
            let mut row = 0;
            for &(t, count) in &chunk.times {
                let run = row..row + count as usize;
                row = run.end;
                steps.extend(assembler.push_rows(run.map(|r| {
                    (
                        t,
                        lats[chunk.latitude[r] as usize],
                        lons[chunk.longitude[r] as usize],
                        chunk.t2m[r],
                    )
                }))?);
            }
        }
        assembler.finish()?;
        steps.sort_by_key(|s| s.time);
        Ok((grid, steps))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float32Array, Float64Array, TimestampMicrosecondArray};

    use super::*;
    use crate::assemble::tests::batch;

    /// Rows in any order, steps split across batches and batches holding
    /// several steps: the grid of all their coordinates (a value one
    /// rounding off its key counts as that key's), and each step whole,
    /// as the assembler makes them from the same rows on that grid.
    #[test]
    fn held_rows_make_the_steps_the_assembler_makes() {
        let batches = [
            batch(&[
                (6, 0.0, 11.0, Some(4.0)),
                (0, 1.0, 10.0, Some(9.0)),
                (0, 1.0, 11.0, Some(8.0)),
            ]),
            batch(&[
                (0, 0.0, 10.0000000001, Some(7.0)),
                (6, 1.0, 10.0, Some(1.0)),
                (6, 1.0, 11.0, Some(2.0)),
                (6, 0.0, 10.0, Some(3.0)),
                (0, 0.0, 11.0, Some(6.0)),
            ]),
        ];
        let mut held = HeldRows::default();
        for b in &batches {
            held.push(b).unwrap();
        }
        assert_eq!(held.rows(), 8);
        assert!(held.bytes() as u64 >= 8 * BYTES_PER_ROW, "{}", held.bytes());
        let (grid, steps) = held.into_steps().unwrap();
        assert_eq!(grid, ModelGrid::new(vec![1.0, 0.0], vec![10.0, 11.0]));
        let mut assembler = StepAssembler::new(grid);
        let mut want: Vec<StepField> = batches
            .iter()
            .flat_map(|b| assembler.push(b).unwrap())
            .collect();
        want.sort_by_key(|s| s.time);
        assert_eq!(steps, want);
        assert_eq!(steps[0].values, vec![9.0, 8.0, 7.0, 6.0]);
        assert_eq!(steps[1].values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    /// The assembler's errors reach the caller: a repeated cell, a step
    /// short of the grid, a missing t2m (at push, a NULL coordinate).
    #[test]
    fn held_rows_keep_the_assemblers_errors() {
        let steps = |rows: &[(i64, f64, f64, Option<f32>)]| {
            let mut held = HeldRows::default();
            held.push(&batch(rows))?;
            held.into_steps()
        };
        let err = steps(&[(0, 0.0, 10.0, Some(1.0)), (0, 0.0, 10.0, Some(1.0))]).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let err = steps(&[(0, 0.0, 10.0, Some(1.0)), (6, 1.0, 10.0, Some(1.0))]).unwrap_err();
        assert!(err.to_string().contains("has 1 of the 2 cells"), "{err}");
        let err = steps(&[(0, 0.0, 10.0, None)]).unwrap_err();
        assert!(err.to_string().contains("t2m is missing"), "{err}");
        let nulls = RecordBatch::try_new(
            batch(&[]).schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from_iter_values([0]).with_timezone("UTC")),
                Arc::new(Float64Array::from(vec![None::<f64>])),
                Arc::new(Float64Array::from_iter_values([10.0])),
                Arc::new(Float32Array::from_iter_values([1.0])),
            ],
        )
        .unwrap();
        let err = HeldRows::default().push(&nulls).unwrap_err();
        assert!(err.to_string().contains("must not be NULL"), "{err}");
    }
}
