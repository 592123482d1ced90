//! Whether a flags SQL is per step, as `flags.per_step = true` promises:
//! a run then flags only the steps it wrote and keeps the others' rows
//! ([`super::flags_incremental`]), which is right only where each valid
//! time's rows come from that valid time's cells alone. A SQL that takes
//! its threshold over the whole table (a percentile of every step's EU,
//! say) would make each run's flags by a different yardstick, silently.
//!
//! The check runs the SQL over a small probe table, first with one valid
//! time and then with a second whose EU is a hundred times larger: a SQL
//! that looks past its own step gives the first step other rows.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{
    ArrayRef, DictionaryArray, Float32Array, Float64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::UInt16Type;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;

use super::flags::{FlagsQuery, table_schema};

const HOUR: i64 = 3_600_000_000;
/// 2020-01-01T06:00Z and 12:00Z, in microseconds.
const FIRST: i64 = 1_577_858_400_000_000;
const SECOND: i64 = FIRST + 6 * HOUR;
/// A 12 × 12 grid of 1° cells: several tiles at the usual tile sizes.
const SIDE: usize = 12;

/// Errors unless `query` gives the probe's first valid time the same rows
/// whether or not the table also holds a second one.
pub async fn check(query: &FlagsQuery) -> Result<()> {
    let label = format!("flags SQL {}", query.file.display());
    let first = probe_step(FIRST, 0.01)?;
    let second = probe_step(SECOND, 1.0)?;
    let alone = first_steps_rows(query, std::slice::from_ref(&first))
        .await
        .with_context(|| label.clone())?;
    let beside = first_steps_rows(query, &[first, second])
        .await
        .with_context(|| label.clone())?;
    if alone != beside {
        bail!(
            "{label}: [flags] per_step = true, but the rows it gives a valid time change with \
             the other valid times in the table (tried on a probe table of two steps): make \
             each valid time's rows from its own cells (a threshold per valid_time, as \
             pipelines/flag_high_eu.sql does), or set per_step = false"
        );
    }
    Ok(())
}

/// The rows `query` gives the valid time [`FIRST`] over a `forecast`
/// table of `steps`, as sorted lines (row order within a step is the
/// SQL's to choose).
async fn first_steps_rows(query: &FlagsQuery, steps: &[RecordBatch]) -> Result<Vec<String>> {
    let table = MemTable::try_new(table_schema(), vec![steps.to_vec()])?;
    let ctx = crate::session::new_context();
    ctx.register_table("forecast", Arc::new(table))?;
    let sql = format!(
        "SELECT * FROM ({}) AS per_step WHERE valid_time = {}",
        query.sql.trim().trim_end_matches(';'),
        super::timestamp_sql(FIRST)
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut lines: Vec<String> = pretty_format_batches(&batches)?
        .to_string()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines)
}

/// One valid time of the probe grid, its EU spread over cells from 0 to
/// `eu_scale` (so a percentile of it falls between cells).
fn probe_step(valid_time: i64, eu_scale: f32) -> Result<RecordBatch> {
    let cells = SIDE * SIDE;
    let times = |t: i64| {
        Arc::new(TimestampMicrosecondArray::from(vec![t; cells]).with_timezone("UTC")) as ArrayRef
    };
    let latitude: Vec<f64> = (0..cells).map(|i| 40.0 + (i / SIDE) as f64).collect();
    let longitude: Vec<f64> = (0..cells).map(|i| 250.0 + (i % SIDE) as f64).collect();
    // A spread that is not monotone in the cell order: tiles differ.
    let eu: Vec<f32> = (0..cells)
        .map(|i| eu_scale * ((i * 37) % cells) as f32 / cells as f32)
        .collect();
    let kelvin = |v: f32| Arc::new(Float32Array::from(vec![v; cells])) as ArrayRef;
    let partition =
        |v: &str| Arc::new(DictionaryArray::<UInt16Type>::from_iter(vec![v; cells])) as ArrayRef;
    let columns = vec![
        times(valid_time - 6 * HOUR),
        times(valid_time),
        Arc::new(Float64Array::from(latitude)) as ArrayRef,
        Arc::new(Float64Array::from(longitude)),
        kelvin(280.0),
        kelvin(281.0),
        kelvin(0.5),
        Arc::new(Float32Array::from(eu)),
        partition("2020"),
        partition("01"),
    ];
    Ok(RecordBatch::try_new(table_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped template with the shipped pipeline's settings.
    fn shipped() -> FlagsQuery {
        with_threshold("percentile_cont(t2m_eu, 0.95)")
    }

    /// The shipped template with the shipped tiles and `threshold`.
    fn with_threshold(threshold: &str) -> FlagsQuery {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/flag_high_eu.sql");
        let sql = std::fs::read_to_string(path)
            .unwrap()
            .replace("{{tile_degrees}}", "5.0")
            .replace("{{eu_threshold}}", threshold)
            .replace("{{min_fraction}}", "0.5");
        FlagsQuery {
            sql,
            file: path.into(),
        }
    }

    /// Per valid time of the probe (EU up to 0.01 K², then up to 1 K²): its
    /// threshold (one for all its tiles) and its flagged tiles.
    async fn thresholds_and_flagged(query: &FlagsQuery) -> Vec<(f64, f64)> {
        let steps = [
            probe_step(FIRST, 0.01).unwrap(),
            probe_step(SECOND, 1.0).unwrap(),
        ];
        let table = MemTable::try_new(table_schema(), vec![steps.to_vec()]).unwrap();
        let ctx = crate::session::new_context();
        ctx.register_table("forecast", Arc::new(table)).unwrap();
        let sql = format!(
            "SELECT valid_time, min(eu_threshold) AS low, max(eu_threshold) AS high, \
             count(*) FILTER (WHERE flagged) AS flagged \
             FROM ({}) AS flags GROUP BY valid_time ORDER BY valid_time",
            query.sql.trim().trim_end_matches(';')
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let column = |name| crate::session::f64_column(b, name).unwrap();
            let (low, high, flagged) = (column("low"), column("high"), column("flagged"));
            for row in 0..b.num_rows() {
                assert_eq!(low[row], high[row], "one threshold a step");
                rows.push((high[row].unwrap(), flagged[row].unwrap()));
            }
        }
        rows
    }

    /// Both a percentile and an absolute threshold: the greater of the two,
    /// so the step whose EU is all small flags nothing, and the other step
    /// is flagged as by its percentile alone. Still per step.
    #[tokio::test]
    async fn a_percentile_with_an_absolute_floor_flags_only_high_eu() {
        let threshold = |percentile, absolute| {
            let t = crate::pipeline::Threshold {
                percentile,
                absolute,
            };
            super::super::flags::threshold_sql(&t).unwrap()
        };
        // The median, so that half of a tile's cells above it is common.
        let both = with_threshold(&threshold(Some(0.5), Some(0.05)));
        assert!(
            both.sql
                .contains("greatest(percentile_cont(t2m_eu, 0.5), 0.05)")
        );
        let alone = thresholds_and_flagged(&with_threshold(&threshold(Some(0.5), None))).await;
        let floored = thresholds_and_flagged(&both).await;
        // The probe's EU is a permutation of scale × k / 144, k = 0..143 (in
        // f32): its median interpolates half way along, at k = 71.5.
        let median = |scale: f64| scale * 71.5 / 144.0;
        let near = |got: f64, want: f64| (got - want).abs() <= 1e-6 * want;
        assert!(near(alone[0].0, median(0.01)), "{alone:?}");
        assert!(
            alone[0].1 > 0.0 && alone[1].1 > 0.0,
            "a percentile alone flags every step: {alone:?}"
        );
        assert_eq!(floored[0], (0.05, 0.0), "EU below 0.01 K² everywhere");
        assert!(near(floored[1].0, median(1.0)), "{floored:?}");
        assert_eq!(
            floored[1], alone[1],
            "above the floor, the percentile decides"
        );
        check(&both).await.unwrap();
        let absolute = with_threshold(&threshold(None, Some(0.05)));
        assert_eq!(thresholds_and_flagged(&absolute).await[0], (0.05, 0.0));
    }

    #[tokio::test]
    async fn the_shipped_flags_sql_is_per_step() {
        check(&shipped()).await.unwrap();
    }

    #[tokio::test]
    async fn a_threshold_over_the_whole_table_is_not() {
        let mut query = shipped();
        // The threshold of every valid time's cells, given to each.
        let per_step = "SELECT valid_time, CAST(percentile_cont(t2m_eu, 0.95) AS DOUBLE) AS eu_threshold\n    FROM forecast\n    GROUP BY valid_time";
        let whole = "SELECT DISTINCT f.valid_time, g.eu_threshold FROM forecast f CROSS JOIN \
                     (SELECT CAST(percentile_cont(t2m_eu, 0.95) AS DOUBLE) AS eu_threshold \
                     FROM forecast) g";
        assert!(query.sql.contains(per_step), "{}", query.sql);
        query.sql = query.sql.replace(per_step, whole);
        let e = format!("{:#}", check(&query).await.unwrap_err());
        assert!(
            e.contains("flag_high_eu.sql") && e.contains("per_step = true"),
            "{e}"
        );
    }
}
