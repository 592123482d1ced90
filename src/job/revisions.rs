//! Steps whose input changed after they were forecast. The CDS publishes
//! the latest months as preliminary ERA5T and replaces them with final ERA5
//! two to three months later (and now and then corrects a period), so a
//! scheduled job that skips every step it has forecast keeps forecasts made
//! from data that no longer exist. A run with a recheck window reads the
//! input of the forecast steps in it again and compares it with the input
//! each forecast file stores (its `t2m` column); a step whose input differs
//! is forecast again and its file replaced.
//!
//! Both sides are summarised per step as a row count and a sum of row
//! hashes, which does not depend on the order rows come in (the source in
//! the file's order, a forecast file in the model grid's), so a step costs
//! a few bytes however large its grid.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, Result};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use uqcast_forecast::input_digest::{Digest, StepDigests};

use super::output::Output;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The initial times among `forecast` (initial times already forecast)
/// whose input is read again: those within `days` of the newest.
pub fn window(forecast: &BTreeSet<i64>, days: u32) -> BTreeSet<i64> {
    let Some(&newest) = forecast.last() else {
        return BTreeSet::new();
    };
    if days == 0 {
        return BTreeSet::new();
    }
    let oldest = newest.saturating_sub(i64::from(days).saturating_mul(MICROS_PER_DAY));
    forecast.range(oldest..).copied().collect()
}

/// The initial times in `rechecked` whose input in the source query `sql`
/// (run in `ctx`, which has its tables) differs from the input stored in
/// `output`'s forecast files, whose steps are valid `lead` (µs) after
/// their initial times. A step the source no longer holds is not revised:
/// its forecast stays.
pub async fn revised(
    ctx: &SessionContext,
    sql: &str,
    output: &Output,
    rechecked: &BTreeSet<i64>,
    lead: i64,
) -> Result<BTreeSet<i64>> {
    if rechecked.is_empty() {
        return Ok(BTreeSet::new());
    }
    let times = super::timestamps_sql(rechecked);
    let source = format!(
        "SELECT valid_time AS step, latitude, longitude, t2m FROM ({}) AS rechecked \
         WHERE valid_time IN ({times})",
        sql.trim().trim_end_matches(';')
    );
    let now = digests(ctx, &source)
        .await
        .context("reading the input of forecast steps again (source.recheck_days)")?;

    let (stored_ctx, forecast) = output.forecast_session("forecast").await?;
    // Only the window's months are listed and opened: the statistics of
    // every other file would rule it out too, but only after its footer
    // was read.
    let valid: Vec<i64> = rechecked.iter().map(|t| t + lead).collect();
    let columns = "init_time AS step, latitude, longitude, t2m";
    let stored_sql = super::store::months_select("forecast", columns, &valid)?;
    let stored = digests(&stored_ctx, &stored_sql).await;
    // A forecast file damaged since it was written is named, not only the query.
    let stored = crate::session::footers::naming_damaged(&[forecast], stored)
        .await
        .context("reading the input the forecast files hold (source.recheck_days)")?;

    Ok(rechecked
        .iter()
        .copied()
        .filter(|t| matches!((now.get(t), stored.get(t)), (Some(a), Some(b)) if a != b))
        .collect())
}

/// Says, before any is forecast, how many steps were found revised of how
/// many rechecked, and their first and last initial times.
pub fn announce(revised: &BTreeSet<i64>, rechecked: usize) {
    if let (Some(&first), Some(&last)) = (revised.first(), revised.last()) {
        let at = uqcast_netcdf::cf::time::format_micros;
        eprintln!(
            "revised input: {} of {rechecked} steps rechecked (initial times {} … {}) are \
             forecast again",
            revised.len(),
            at(first),
            at(last)
        );
    }
}

/// The digest of each step of `sql`, whose columns are `step` (a
/// timestamp), `latitude`, `longitude` and `t2m`.
async fn digests(ctx: &SessionContext, sql: &str) -> Result<HashMap<i64, Digest>> {
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    let mut out = StepDigests::default();
    while let Some(batch) = stream.next().await {
        out.add(&batch?)?;
    }
    Ok(out.into_map())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::RecordBatch;

    use super::*;

    const HOUR: i64 = 3_600_000_000;

    /// 2020-01-01T00:00Z in microseconds.
    const JAN_1: i64 = 1_577_836_800_000_000;

    /// Rows of one step of a 2 × 2 grid: `init` and the cells' input
    /// `t2m`, as the source gives them (`with_lead: None`) or as a forecast
    /// file stores them, valid `lead` later.
    fn step_rows(init: i64, t2m: f32, with_lead: Option<i64>) -> RecordBatch {
        use datafusion::arrow::array::TimestampMicrosecondArray;
        use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array};
        use std::sync::Arc;
        let time = |t: i64| {
            Arc::new(TimestampMicrosecondArray::from(vec![t; 4]).with_timezone("UTC")) as ArrayRef
        };
        let degrees = |v: [f64; 4]| Arc::new(Float64Array::from(v.to_vec())) as ArrayRef;
        let kelvin = |v: f32| Arc::new(Float32Array::from(vec![v; 4])) as ArrayRef;
        let cells = [
            degrees([45.0, 45.0, 46.0, 46.0]),
            degrees([260.0, 261.0, 260.0, 261.0]),
            kelvin(t2m),
        ];
        match with_lead {
            None => RecordBatch::try_from_iter([
                ("valid_time", time(init)),
                ("latitude", cells[0].clone()),
                ("longitude", cells[1].clone()),
                ("t2m", cells[2].clone()),
            ])
            .unwrap(),
            Some(lead) => {
                let mut columns = vec![time(init), time(init + lead)];
                columns.extend(cells);
                columns.extend([kelvin(t2m + 1.0), kelvin(0.5), kelvin(0.01)]);
                RecordBatch::try_new(uqcast_forecast::forecast_schema(), columns).unwrap()
            }
        }
    }

    #[tokio::test]
    async fn the_recheck_finds_a_changed_step_and_opens_only_its_windows_months() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output::open(&dir.path().join("out")).await.unwrap();
        let lead = 6 * HOUR;
        let jan = [JAN_1, JAN_1 + 6 * HOUR];
        for init in jan {
            let step = step_rows(init, 280.0, Some(lead));
            let provenance = Default::default();
            output
                .write_step(init + lead, &step, &provenance)
                .await
                .unwrap();
        }
        // An older month whose file no longer reads (a bad disk): a window
        // that does not reach it must not open it.
        let december = dir.path().join("out/forecast/year=2019/month=12");
        std::fs::create_dir_all(&december).unwrap();
        std::fs::write(december.join("t2m_20191231T1800.parquet"), b"not Parquet").unwrap();

        // The source's second step was revised.
        let source = datafusion::datasource::MemTable::try_new(
            step_rows(0, 0.0, None).schema(),
            vec![vec![
                step_rows(jan[0], 280.0, None),
                step_rows(jan[1], 280.25, None),
            ]],
        )
        .unwrap();
        let ctx = crate::session::new_context();
        ctx.register_table("source", std::sync::Arc::new(source))
            .unwrap();
        let sql = "SELECT * FROM source";
        let window: BTreeSet<i64> = jan.into();
        let found = revised(&ctx, sql, &output, &window, lead).await.unwrap();
        assert_eq!(found, BTreeSet::from([jan[1]]));

        // A window that reaches the damaged month names its file.
        let december_init = JAN_1 - 12 * HOUR;
        let reaching: BTreeSet<i64> = [december_init, jan[0]].into();
        let e = revised(&ctx, sql, &output, &reaching, lead)
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("t2m_20191231T1800.parquet"),
            "{e:#}"
        );
    }

    #[test]
    fn the_window_holds_the_steps_within_its_days_of_the_newest() {
        let forecast: BTreeSet<i64> = (0..12).map(|i| i * 6 * HOUR).collect();
        // Newest at 66 h; one day back is 42 h: 42, 48, …, 66.
        let one_day = window(&forecast, 1);
        assert_eq!(one_day, (7..12).map(|i| i * 6 * HOUR).collect());
        assert!(window(&forecast, 0).is_empty());
        assert_eq!(window(&forecast, u32::MAX), forecast);
        assert!(window(&BTreeSet::new(), 5).is_empty());
    }
}
