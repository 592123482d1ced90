//! Whole forecast steps from a stream of batches cut anywhere.
//!
//! Run locally, the forecast operator emits one batch per step. Through a
//! cluster, batches arrive as its shuffle and transport cut them: a step may
//! come in pieces, or share a batch with the next. A step is complete when
//! all cells of the model's grid have arrived; it is written then.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::TimestampMicrosecondType;

use uqcast_netcdf::cf::time::format_micros;

/// Rows of steps not yet complete, by forecast valid time.
#[derive(Debug)]
pub struct Pending {
    cells: usize,
    parts: BTreeMap<i64, (usize, Vec<RecordBatch>)>,
}

impl Pending {
    /// `cells`: rows of one whole step (the model grid's cells).
    pub fn new(cells: usize) -> Self {
        Self {
            cells,
            parts: BTreeMap::new(),
        }
    }

    /// Takes in `batch`; returns the steps it completes, each as one batch.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>> {
        let times = batch
            .column_by_name(uqcast_forecast::schema::VALID_TIME)
            .context("forecast batch without valid_time")?
            .as_primitive::<TimestampMicrosecondType>()
            .values();
        let mut done = Vec::new();
        let mut start = 0;
        while start < times.len() {
            let time = times[start];
            let len = times[start..].iter().take_while(|&&t| t == time).count();
            let (rows, parts) = self.parts.entry(time).or_default();
            *rows += len;
            parts.push(batch.slice(start, len));
            if *rows > self.cells {
                bail!(
                    "forecast step {}: {} rows arrived, the model grid has {} cells",
                    format_micros(time),
                    rows,
                    self.cells
                );
            }
            if *rows == self.cells {
                let (_, parts) = self.parts.remove(&time).unwrap_or_default();
                done.push((time, concat_batches(&batch.schema(), &parts)?));
            }
            start += len;
        }
        Ok(done)
    }

    /// Fails if a step arrived in part only (nothing of it is written).
    pub fn finish(self) -> Result<()> {
        match self.parts.iter().next() {
            None => Ok(()),
            Some((&time, (rows, _))) => bail!(
                "forecast step {} ended incomplete: {} of {} cells arrived ({} step(s) in all)",
                format_micros(time),
                rows,
                self.cells,
                self.parts.len()
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float32Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    /// Rows of `valid_time` (UTC µs) and `t2m_mean`, a forecast's first
    /// columns; the session's tests write step files of them too.
    pub(crate) fn batch(rows: &[(i64, f32)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "valid_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("t2m_mean", DataType::Float32, false),
        ]));
        let times: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let values: Vec<f32> = rows.iter().map(|r| r.1).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
                Arc::new(Float32Array::from(values)),
            ],
        )
        .unwrap()
    }

    fn values(b: &RecordBatch) -> Vec<f32> {
        b.column(1)
            .as_primitive::<datafusion::arrow::datatypes::Float32Type>()
            .values()
            .to_vec()
    }

    /// Three steps of three cells, cut mid-step and merged across steps,
    /// come out whole, in arrival order, each row once.
    #[test]
    fn steps_cut_anywhere_come_out_whole() {
        let mut pending = Pending::new(3);
        let mut out = Vec::new();
        for b in [
            batch(&[(10, 1.0), (10, 2.0)]),
            batch(&[]),
            batch(&[(20, 4.0), (10, 3.0), (20, 5.0)]),
            batch(&[(30, 7.0), (30, 8.0), (30, 9.0), (20, 6.0)]),
        ] {
            out.extend(pending.push(&b).unwrap());
        }
        pending.finish().unwrap();
        let got: Vec<(i64, Vec<f32>)> = out.iter().map(|(t, b)| (*t, values(b))).collect();
        assert_eq!(
            got,
            vec![
                (10, vec![1.0, 2.0, 3.0]),
                (30, vec![7.0, 8.0, 9.0]),
                (20, vec![4.0, 5.0, 6.0]),
            ]
        );
    }

    /// A step short of cells at the end, or with too many, is an error.
    #[test]
    fn incomplete_or_overfull_steps_fail() {
        let mut pending = Pending::new(3);
        assert!(
            pending
                .push(&batch(&[(10, 1.0), (10, 2.0)]))
                .unwrap()
                .is_empty()
        );
        let e = pending.finish().unwrap_err().to_string();
        assert!(e.contains("ended incomplete: 2 of 3 cells"), "{e}");
        let mut pending = Pending::new(1);
        let e = pending
            .push(&batch(&[(10, 1.0), (10, 2.0)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 rows arrived, the model grid has 1 cells"),
            "{e}"
        );
    }
}
