//! Why a source query returned no rows: the data's extent beside the query
//! that kept none of it.
//!
//! A pipeline's source query crops ERA5 to its model grid, so data from
//! another region, or with longitudes in −180…180 where the query asks for
//! 0…360, give no rows at all. `train` and a first `run` would otherwise
//! report "no two of the 0 steps are 6 h apart" or "ok new_steps=0".

use anyhow::{Result, anyhow};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;

use crate::pipeline::Pipeline;
use crate::session::f64_column;

/// True when `sql` (over table `era5` in `ctx`) returns no row at all.
pub async fn is_empty(ctx: &SessionContext, sql: &str) -> Result<bool> {
    let batches = ctx
        .sql(&format!("SELECT 1 AS one FROM ({sql}) AS source LIMIT 1"))
        .await?
        .collect()
        .await?;
    Ok(batches.iter().all(|b| b.num_rows() == 0))
}

/// The error for a source query that returned nothing from `location`:
/// it names the query file and gives the data's latitude, longitude and
/// time ranges (read from the table's statistics, not a scan).
pub async fn error(ctx: &SessionContext, pipeline: &Pipeline, location: &str) -> anyhow::Error {
    let query = pipeline.resolve(&pipeline.source.query);
    let extent = match extent(ctx).await {
        Ok(text) => text,
        Err(e) => format!("their extent could not be read: {e:#}"),
    };
    anyhow!(
        "{location}: pipeline {} source.query {} returns no rows from these data; they hold \
         {extent}",
        pipeline.file.display(),
        query.display()
    )
}

async fn extent(ctx: &SessionContext) -> Result<String> {
    let batches = ctx
        .sql(
            "SELECT min(latitude) AS lat0, max(latitude) AS lat1, min(longitude) AS lon0, \
             max(longitude) AS lon1, min(valid_time) AS t0, max(valid_time) AS t1 FROM era5",
        )
        .await?
        .collect()
        .await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| anyhow!("no rows"))?;
    let number = |name: &str| -> Result<f64> {
        f64_column(batch, name)?[0].ok_or_else(|| anyhow!("no {name}"))
    };
    let text = |name: &str| -> Result<String> {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| anyhow!("no {name}"))?;
        Ok(array_value_to_string(column, 0)?)
    };
    let (lon0, lon1) = (number("lon0")?, number("lon1")?);
    let hint = if lon0 < 0.0 {
        " (these data use −180…180 longitudes; ERA5's own, and the shipped query's, are \
         0…360)"
    } else {
        ""
    };
    Ok(format!(
        "latitude {}…{}, longitude {lon0}…{lon1}{hint}, valid_time {} … {}",
        number("lat0")?,
        number("lat1")?,
        text("t0")?,
        text("t1")?
    ))
}
