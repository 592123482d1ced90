//! Steps a run wrote whose EU peaks far above the table's usual peak: an
//! input unlike anything the model learned from (a damaged or implausible
//! field, a regime it never saw). A scheduled job's log is where its
//! operator looks, so the run warns of each, as the shipped analysts' query
//! `queries/eu_outlier_steps.sql` finds them (the same SQL, over the flags
//! table the run just refreshed).

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;

use super::output::Output;
use crate::pipeline::Outliers;
use crate::session::f64_column;

/// The shipped query: steps whose EU peaks at 3× the median step's or more.
const QUERY: &str = include_str!("../../queries/eu_outlier_steps.sql");

/// The shipped query's condition, whose factor a pipeline may change.
const CONDITION: &str = "peak_eu_k2 >= 3 * median_peak_eu_k2";

/// The shipped query's usual steps, the whole table's, which a pipeline
/// may make those of the days up to each step.
const FRAME: &str = "RANGE BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING";

/// The shipped query with the pipeline's bounds in it.
fn query(bounds: Outliers) -> String {
    let factor = bounds.times_median;
    let query = QUERY.replace(
        CONDITION,
        &format!("peak_eu_k2 >= {factor:?} * median_peak_eu_k2"),
    );
    match bounds.window_days {
        None => query,
        Some(days) => query.replace(
            FRAME,
            &format!("RANGE BETWEEN INTERVAL '{days} days' PRECEDING AND CURRENT ROW"),
        ),
    }
}

/// One step whose EU peaks far above the usual.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// Valid time, UTC microseconds.
    pub valid_time: i64,
    pub tile_lat: f64,
    pub tile_lon: f64,
    /// K².
    pub peak_eu: f64,
    pub median_peak_eu: f64,
    pub times_median: f64,
    /// The usual steps' span: the whole table's, or these days up to it.
    pub window_days: Option<u32>,
}

impl std::fmt::Display for Outlier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let median = match self.window_days {
            None => "the median step's peak".to_string(),
            Some(1) => "the median peak of the day up to it".to_string(),
            Some(days) => format!("the median peak of the {days} days up to it"),
        };
        let against = if self.median_peak_eu > 0.0 {
            format!(
                "{:.1}× {median} ({:.3} K²)",
                self.times_median, self.median_peak_eu
            )
        } else {
            format!("where {median} is 0")
        };
        write!(
            f,
            "forecast valid at {}: EU peaks at {:.3} K² (tile {}), {against}: its input may be \
             damaged, or unlike the data the model learned from",
            uqcast_forecast::error::iso(self.valid_time),
            self.peak_eu,
            place(self.tile_lat, self.tile_lon),
        )
    }
}

/// A tile's corner as a forecaster writes it: `45N 265E`, `33.5S 70W`
/// (longitudes as the grid has them, 0..360 or −180..180).
pub fn place(lat: f64, lon: f64) -> String {
    let north_south = if lat < 0.0 { 'S' } else { 'N' };
    let east_west = if lon < 0.0 { 'W' } else { 'E' };
    format!("{}{north_south} {}{east_west}", lat.abs(), lon.abs())
}

/// The steps of `written` (valid times) that the shipped query, with the
/// pipeline's factor and usual steps, lists over `output`'s flags table,
/// where the usual steps are at least the pipeline's least number (below
/// it a median peak says too little).
pub async fn among(
    output: &Output,
    written: &BTreeSet<i64>,
    bounds: Outliers,
) -> Result<Vec<Outlier>> {
    if written.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = output.flags_session("flags").await?;
    let batches = ctx
        .sql(&query(bounds))
        .await?
        .collect()
        .await
        .context("queries/eu_outlier_steps.sql over the flags table")?;
    let mut found = Vec::new();
    for batch in &batches {
        for outlier in outliers(batch, bounds.window_days)? {
            if written.contains(&outlier.0.valid_time) && outlier.1 >= bounds.min_steps {
                found.push(outlier.0);
            }
        }
    }
    Ok(found)
}

/// The query's rows, each with its usual steps' count.
fn outliers(batch: &RecordBatch, window_days: Option<u32>) -> Result<Vec<(Outlier, u64)>> {
    let times = batch
        .column_by_name("valid_time")
        .context("column valid_time")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .context("valid_time is not a timestamp")?;
    let column = |name| f64_column(batch, name);
    let (lat, lon, peak) = (
        column("tile_lat")?,
        column("tile_lon")?,
        column("peak_eu_k2")?,
    );
    let (median, times_median) = (column("median_peak_eu_k2")?, column("times_median")?);
    let steps = column("steps")?;
    Ok((0..batch.num_rows())
        .map(|i| {
            let outlier = Outlier {
                valid_time: times.value(i),
                tile_lat: lat[i].unwrap_or(f64::NAN),
                tile_lon: lon[i].unwrap_or(f64::NAN),
                peak_eu: peak[i].unwrap_or(f64::NAN),
                median_peak_eu: median[i].unwrap_or(f64::NAN),
                times_median: times_median[i].unwrap_or(f64::NAN),
                window_days,
            };
            (outlier, steps[i].unwrap_or(0.0) as u64)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, TimestampMicrosecondArray,
    };

    use super::*;
    use crate::job::flags::{Flags, flags_schema};
    use crate::job::flags_months::month_of;
    use crate::job::store::Provenance;

    const HOUR: i64 = 3_600_000_000;
    /// 2020-01-01T00:00Z.
    const START: i64 = 1_577_836_800_000_000;

    /// Flags of `peaks.len()` 6-hourly steps, two tiles each, the second
    /// tile (45N 265E) peaking at the step's EU.
    fn flags(peaks: &[f64]) -> RecordBatch {
        let n = peaks.len() * 2;
        let times: Vec<i64> = (0..n).map(|i| START + 6 * HOUR * (i / 2) as i64).collect();
        let max_eu: Vec<f64> = (0..n)
            .map(|i| peaks[i / 2] / if i % 2 == 1 { 1.0 } else { 10.0 })
            .collect();
        let lat: Vec<f64> = (0..n)
            .map(|i| if i % 2 == 1 { 45.0 } else { 10.0 })
            .collect();
        let lon: Vec<f64> = (0..n)
            .map(|i| if i % 2 == 1 { 265.0 } else { 200.0 })
            .collect();
        let floats = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let columns = vec![
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")) as ArrayRef,
            floats(lat),
            floats(lon),
            Arc::new(Int64Array::from(vec![25; n])),
            floats(max_eu.iter().map(|e| e / 2.0).collect()),
            floats(max_eu),
            floats(vec![0.0; n]),
            floats(vec![1.0; n]),
            Arc::new(BooleanArray::from(vec![false; n])),
        ];
        RecordBatch::try_new(flags_schema().unwrap(), columns).unwrap()
    }

    async fn output_with(peaks: &[f64]) -> (tempfile::TempDir, Output) {
        let dir = tempfile::tempdir().unwrap();
        let output = Output::open(&dir.path().join("out")).await.unwrap();
        let batch = flags(peaks);
        let flags = Flags {
            tiles: batch.num_rows(),
            batches: vec![batch],
            flagged: 0,
        };
        let month = month_of(START).unwrap();
        output
            .write_flags(&month, &flags, &Provenance::new())
            .await
            .unwrap();
        (dir, output)
    }

    #[test]
    fn places_are_written_with_their_hemispheres() {
        assert_eq!(place(45.0, 265.0), "45N 265E");
        assert_eq!(place(-33.5, -70.0), "33.5S 70W");
        assert_eq!(place(-0.0, 0.0), "0N 0E");
    }

    fn step(k: i64) -> i64 {
        START + 6 * HOUR * k
    }

    /// A step at 3× the median peak or more is found if this run wrote it,
    /// and only once the table holds enough steps to have a usual peak.
    #[tokio::test]
    async fn a_written_step_peaking_far_above_the_median_is_found() {
        // Eight steps peaking at 0.02-0.05 K², the sixth at 0.3 (median 0.03).
        let peaks = [0.02, 0.03, 0.03, 0.05, 0.03, 0.3, 0.02, 0.04];
        let shipped = Outliers::default();
        let (_dir, output) = output_with(&peaks).await;
        let written: BTreeSet<i64> = (0..8).map(step).collect();
        let found = among(&output, &written, shipped).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let outlier = &found[0];
        assert_eq!(outlier.valid_time, step(5));
        assert_eq!((outlier.tile_lat, outlier.tile_lon), (45.0, 265.0));
        assert!((outlier.median_peak_eu - 0.03).abs() < 1e-12, "{outlier:?}");
        assert!((outlier.times_median - 10.0).abs() < 1e-9, "{outlier:?}");
        let said = outlier.to_string();
        assert!(
            said.starts_with(
                "forecast valid at 2020-01-02T06:00Z: EU peaks at 0.300 K² (tile 45N 265E), 10.0×"
            ),
            "{said}"
        );
        // Not written by this run: not warned of again.
        let others: BTreeSet<i64> = (0..5).map(step).collect();
        assert!(among(&output, &others, shipped).await.unwrap().is_empty());
        // Just above 3× counts; 2.9× does not.
        let mut edge = peaks;
        edge[5] = 0.0901;
        let (_dir, output) = output_with(&edge).await;
        assert_eq!(among(&output, &written, shipped).await.unwrap().len(), 1);
        edge[5] = 0.087;
        let (_dir, output) = output_with(&edge).await;
        assert!(among(&output, &written, shipped).await.unwrap().is_empty());
        // Members that agree everywhere (EU 0) have no outliers; a peak
        // where the usual one is 0 is one.
        let mut zero = [0.0; 8];
        let (_dir, output) = output_with(&zero).await;
        assert!(among(&output, &written, shipped).await.unwrap().is_empty());
        zero[2] = 0.01;
        let (_dir, output) = output_with(&zero).await;
        let found = among(&output, &written, shipped).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .to_string()
                .contains("(tile 45N 265E), where the median step's peak is 0: "),
            "{}",
            found[0]
        );
        // Seven steps: too few for a usual peak.
        let (_dir, output) = output_with(&peaks[..7]).await;
        let seven: BTreeSet<i64> = (0..7).map(step).collect();
        assert!(among(&output, &seven, shipped).await.unwrap().is_empty());
    }

    /// A pipeline's `flags.eu_outliers` moves both bounds.
    #[tokio::test]
    async fn the_pipelines_bounds_decide_what_is_an_outlier() {
        // The condition a pipeline's factor replaces is in the shipped query, once.
        assert_eq!(QUERY.matches(CONDITION).count(), 1);
        assert_eq!(QUERY.matches(FRAME).count(), 1);
        let peaks = [0.02, 0.03, 0.03, 0.05, 0.03, 0.3, 0.02, 0.04];
        let written: BTreeSet<i64> = (0..8).map(step).collect();
        let (_dir, output) = output_with(&peaks).await;
        let bounds = |times_median, min_steps| Outliers {
            times_median,
            min_steps,
            window_days: None,
        };
        // The step at 10× is not one at 12×, and is at 9.5×.
        assert!(
            among(&output, &written, bounds(12.0, 8))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            among(&output, &written, bounds(9.5, 8))
                .await
                .unwrap()
                .len(),
            1
        );
        // At 1.6×, the 0.05 K² step (1.67×) is one too.
        let found = among(&output, &written, bounds(1.6, 8)).await.unwrap();
        let times: Vec<i64> = found.iter().map(|o| o.valid_time).collect();
        assert_eq!(times, [step(5), step(3)]);
        // Seven steps are enough where the pipeline says so.
        let (_dir, output) = output_with(&peaks[..7]).await;
        let seven: BTreeSet<i64> = (0..7).map(step).collect();
        assert!(
            among(&output, &seven, bounds(3.0, 8))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            among(&output, &seven, bounds(3.0, 7)).await.unwrap().len(),
            1
        );
    }

    /// With `window_days` a step is judged against the steps of the days up
    /// to it: a season whose EU runs high is not all outliers, and a real
    /// outlier within it still is one.
    #[tokio::test]
    async fn a_window_of_days_judges_a_step_against_the_days_up_to_it() {
        // Four days peaking at 0.02 K², four at 0.08 with one step at 0.5.
        let mut peaks = [0.02; 32];
        peaks[16..].fill(0.08);
        peaks[28] = 0.5;
        let (_dir, output) = output_with(&peaks).await;
        let written: BTreeSet<i64> = (24..32).map(step).collect();
        let whole = Outliers {
            times_median: 1.5,
            min_steps: 8,
            window_days: None,
        };
        // Against the whole table (median 0.05) every step written is one.
        assert_eq!(among(&output, &written, whole).await.unwrap().len(), 8);
        let recent = Outliers {
            window_days: Some(2),
            ..whole
        };
        let found = among(&output, &written, recent).await.unwrap();
        let times: Vec<i64> = found.iter().map(|o| o.valid_time).collect();
        assert_eq!(times, [step(28)]);
        assert!((found[0].median_peak_eu - 0.08).abs() < 1e-12, "{found:?}");
        let said = found[0].to_string();
        assert!(
            said.contains("6.2× the median peak of the 2 days up to it (0.080 K²)"),
            "{said}"
        );
        // The first steps of a table have fewer days before them than the
        // usual steps need: two days hold 9 steps, the fourth step 4.
        let mut early = [0.02; 12];
        early[3] = 0.5;
        let (_dir, output) = output_with(&early).await;
        let written: BTreeSet<i64> = (0..12).map(step).collect();
        assert!(among(&output, &written, recent).await.unwrap().is_empty());
        assert_eq!(among(&output, &written, whole).await.unwrap().len(), 1);
    }
}
