//! `uqcast plot --input DIR --time T --out FILE.png`: four maps of one
//! forecast valid time — mean, AU, EU, and EU with the flagged tiles
//! outlined — with labelled axes and colour bars.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::output::WrittenBeside;
use crate::job::store::months_select;
use crate::session::{TableArg, f64_column, footers, new_context, register_tables};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Output directory of `uqcast run` (holding `forecast/` and `flags/`).
    #[arg(long)]
    input: PathBuf,
    /// Forecast valid time (UTC).
    #[arg(long, value_parser = crate::time::parse_utc_arg)]
    time: i64,
    /// Image to write: PNG (`.png`) or JPEG (`.jpg`, `.jpeg`); its directory is created if needed.
    #[arg(long)]
    out: PathBuf,
}

/// One map's values.
struct Layer {
    title: &'static str,
    units: &'static str,
    values: Vec<f64>,
}

/// Fonts plotters can draw with (no system font service needed).
const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let path = FONT_CANDIDATES
        .iter()
        .find(|p| Path::new(p).is_file())
        .context(
            "no DejaVuSans.ttf found for labels; install fonts-dejavu-core (.ci/setup does)",
        )?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path}: not a usable font"))?;
    let _ = REGISTERED.set(());
    Ok(())
}

/// Viridis, by its anchor colours every eighth of the range.
fn colour(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let x = t.clamp(0.0, 1.0) * 8.0;
    let (i, f) = ((x.floor() as usize).min(7), x - x.floor().min(7.0));
    let lerp = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

fn column(b: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    Ok(f64_column(b, name)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// The rows of a query over the run output's table `table`, its SQL made
/// from the registered table (its columns); a damaged file is named.
async fn query(
    input: &Path,
    table: &str,
    sql: impl FnOnce(&datafusion::common::DFSchema) -> Result<String>,
) -> Result<Vec<RecordBatch>> {
    let location = crate::job::output_table(input, table, "--input")?;
    let table = TableArg {
        name: table.into(),
        location: location.display().to_string(),
    };
    let ctx = new_context();
    register_tables(&ctx, std::slice::from_ref(&table)).await?;
    let ran = async {
        let sql = sql(ctx.table(table.name.as_str()).await?.schema())?;
        Ok(ctx.sql(&sql).await?.collect().await?)
    }
    .await;
    footers::naming_damaged(&[table], ran).await
}

/// `SELECT columns FROM table` of the rows valid at `t`: from its month's
/// `year=/month=` folder alone where the table has those partitions
/// ([`months_select`]), so a plot lists and opens one month's files, not
/// years of them; the one-file flags table of earlier versions has none.
fn rows_at(
    table: &str,
    columns: &str,
    t: i64,
    schema: &datafusion::common::DFSchema,
) -> Result<String> {
    if schema.has_column_with_unqualified_name("month") {
        months_select(table, columns, &[t])
    } else {
        Ok(format!(
            "SELECT {columns} FROM {table} WHERE valid_time = to_timestamp_micros({t}, 'UTC')"
        ))
    }
}

/// The forecast table's valid times in words, for a time it does not hold:
/// from its files' names where each is a step's (a table `uqcast run`
/// wrote: 10 years of steps are listed, not read), else by a query.
async fn valid_times(input: &Path) -> Result<String> {
    let location = crate::job::output_table(input, "forecast", "--input")?;
    let table = TableArg {
        name: "forecast".into(),
        location: location.display().to_string(),
    };
    let ctx = new_context();
    register_tables(&ctx, std::slice::from_ref(&table)).await?;
    let (n, first, last) = match crate::session::forecast_step_times(&ctx, &table.location).await? {
        Some(times) => match (times.first(), times.last()) {
            (Some(&first), Some(&last)) => (times.len(), first, last),
            _ => return Ok("the table holds no step".into()),
        },
        None => {
            let sql = "SELECT count(DISTINCT valid_time) AS n, \
                       to_unixtime(min(valid_time)) AS first, to_unixtime(max(valid_time)) AS last \
                       FROM forecast";
            let ran = async { Ok(ctx.sql(sql).await?.collect().await?) }.await;
            let batches = footers::naming_damaged(std::slice::from_ref(&table), ran).await?;
            let Some(b) = batches.first().filter(|b| b.num_rows() == 1) else {
                return Ok("the table holds no step".into());
            };
            let [n, first, last] = ["n", "first", "last"].map(|c| column(b, c).map(|v| v[0]));
            let (n, first, last) = (n?, first?, last?);
            if n == 0.0 {
                return Ok("the table holds no step".into());
            }
            let micros = |secs: f64| secs as i64 * 1_000_000;
            (n as usize, micros(first), micros(last))
        }
    };
    Ok(format!(
        "the table holds {n} valid times from {} to {}",
        uqcast_forecast::error::iso(first),
        uqcast_forecast::error::iso(last)
    ))
}

fn range(values: &[f64], upper_quantile: f64) -> (f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 1.0);
    }
    let hi = v[((v.len() - 1) as f64 * upper_quantile) as usize];
    let lo = v[0];
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_map(
    area: &Area,
    layer: &Layer,
    cells: &[(f64, f64)],
    spacing: (f64, f64),
    tiles: &[(f64, f64, f64)],
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let (map, bar) = area.split_horizontally(w * 84 / 100);
    let (lo, hi) = if layer.units == "K" {
        range(&layer.values, 1.0)
    } else {
        range(&layer.values, 0.99)
    };
    let (lat_min, lat_max) = cells
        .iter()
        .fold((f64::MAX, f64::MIN), |a, c| (a.0.min(c.0), a.1.max(c.0)));
    let (lon_min, lon_max) = cells
        .iter()
        .fold((f64::MAX, f64::MIN), |a, c| (a.0.min(c.1), a.1.max(c.1)));
    let (dy, dx) = (spacing.0 / 2.0, spacing.1 / 2.0);
    let mut chart = ChartBuilder::on(&map)
        .caption(layer.title, ("sans-serif", 20))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(lon_min - dx..lon_max + dx, lat_min - dy..lat_max + dy)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("longitude (°E)")
        .y_desc("latitude (°N)")
        .label_style(("sans-serif", 13))
        .draw()?;
    chart.draw_series(cells.iter().zip(&layer.values).map(|(&(lat, lon), &v)| {
        Rectangle::new(
            [(lon - dx, lat - dy), (lon + dx, lat + dy)],
            colour((v - lo) / (hi - lo)).filled(),
        )
    }))?;
    for &(lat, lon, size) in tiles {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(lon, lat), (lon + size, lat + size)],
            RED.stroke_width(2),
        )))?;
    }
    let mut legend = ChartBuilder::on(&bar)
        .margin_top(40)
        .margin_bottom(48)
        .margin_right(8)
        .y_label_area_size(58)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    legend
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(layer.units)
        .label_style(("sans-serif", 12))
        .draw()?;
    let steps = 64;
    legend.draw_series((0..steps).map(|k| {
        let (a, b) = (k as f64 / steps as f64, (k + 1) as f64 / steps as f64);
        Rectangle::new(
            [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
            colour(a).filled(),
        )
    }))?;
    Ok(())
}

fn min_spacing(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::MAX, f64::min)
        .min(360.0)
}

pub async fn run(args: PlotArgs) -> Result<()> {
    draw(&args.input, args.time, &args.out).await
}

/// Draws the maps of valid time `t` from the run output `input` into `out`.
pub async fn draw(input: &Path, t: i64, out: &Path) -> Result<()> {
    let args = PlotArgs {
        input: input.to_path_buf(),
        time: t,
        out: out.to_path_buf(),
    };
    // The image format follows the extension; checked before any query, so
    // a typo costs nothing.
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
        bail!(
            "{}: --out needs a .png, .jpg or .jpeg file name (the extension picks the format)",
            out.display()
        );
    }
    let forecast = query(&args.input, "forecast", |schema| {
        let columns = "latitude, longitude, t2m_mean, t2m_au, t2m_eu";
        rows_at("forecast", columns, t, schema)
    })
    .await?;
    let rows: usize = forecast.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        bail!(
            "{}: no forecast valid at {}; {}",
            args.input.display(),
            uqcast_forecast::error::iso(t),
            valid_times(&args.input).await?
        );
    }
    let mut cells = Vec::with_capacity(rows);
    let (mut mean, mut au, mut eu) = (Vec::new(), Vec::new(), Vec::new());
    for b in &forecast {
        cells.extend(
            column(b, "latitude")?
                .into_iter()
                .zip(column(b, "longitude")?),
        );
        mean.extend(column(b, "t2m_mean")?);
        au.extend(column(b, "t2m_au")?);
        eu.extend(column(b, "t2m_eu")?);
    }
    // Every tile of the step (their spacing sizes the outlines), and the
    // flagged ones.
    let flags = query(&args.input, "flags", |schema| {
        rows_at("flags", "tile_lat, tile_lon, flagged", t, schema)
    })
    .await?;
    let mut tile_corners = Vec::new();
    let mut tile_lats = Vec::new();
    for b in &flags {
        let lats = column(b, "tile_lat")?;
        let flagged = b
            .column_by_name("flagged")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .context("flags: no boolean column 'flagged'")?;
        for (i, (lat, lon)) in lats.iter().zip(column(b, "tile_lon")?).enumerate() {
            if flagged.is_valid(i) && flagged.value(i) {
                tile_corners.push((*lat, lon));
            }
        }
        tile_lats.extend(lats);
    }
    let tile = if tile_lats.len() > 1 {
        min_spacing(&tile_lats)
    } else {
        5.0
    };
    let tiles: Vec<(f64, f64, f64)> = tile_corners.iter().map(|&(a, b)| (a, b, tile)).collect();
    let spacing = (
        min_spacing(&cells.iter().map(|c| c.0).collect::<Vec<_>>()),
        min_spacing(&cells.iter().map(|c| c.1).collect::<Vec<_>>()),
    );

    // Made only now, so a plot that fails on its input leaves no folder.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: creating the directory for --out", dir.display()))?;
    }
    register_font()?;
    let title = format!("t2m forecast valid {}", uqcast_forecast::error::iso(t));
    let file = WrittenBeside::create(out, "image")?;
    let layers = [
        Layer {
            title: "predictive mean",
            units: "K",
            values: mean,
        },
        Layer {
            title: "aleatoric variance (AU)",
            units: "K²",
            values: au,
        },
        Layer {
            title: "epistemic variance (EU)",
            units: "K²",
            values: eu.clone(),
        },
        Layer {
            title: "EU with flagged tiles (red)",
            units: "K²",
            values: eu,
        },
    ];
    let drawn = paint(&file.tmp, &title, &layers, &cells, spacing, &tiles);
    file.finish(drawn)
}

/// The four maps into the image file `file`; the last outlines `tiles`.
fn paint(
    file: &Path,
    title: &str,
    layers: &[Layer; 4],
    cells: &[(f64, f64)],
    spacing: (f64, f64),
    tiles: &[(f64, f64, f64)],
) -> Result<()> {
    let root = BitMapBackend::new(file, (1600, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 26))?;
    let panels = root.split_evenly((2, 2));
    for (k, (panel, layer)) in panels.iter().zip(layers).enumerate() {
        let outlined: &[(f64, f64, f64)] = if k == 3 { tiles } else { &[] };
        draw_map(panel, layer, cells, spacing, outlined)?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, DictionaryArray, Float64Array, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit, UInt16Type};
    use datafusion::datasource::MemTable;

    use super::*;

    /// 2020-01-31T18:00Z and 2020-02-01T00:00Z, in microseconds.
    const JAN: i64 = 1_580_493_600_000_000;
    const FEB: i64 = JAN + 6 * 3_600_000_000;

    /// The `tile_lat` of the rows [`rows_at`] reads at `t` from a table of
    /// a row at each of [`JAN`] and [`FEB`], with `year`/`month`
    /// partitions or without (the one-file flags table of earlier runs).
    async fn lats_at(partitioned: bool, t: i64) -> Vec<f64> {
        let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields = vec![
            Field::new("valid_time", time, false),
            Field::new("tile_lat", DataType::Float64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(vec![JAN, FEB]).with_timezone("UTC")),
            Arc::new(Float64Array::from(vec![10.0, 20.0])),
        ];
        if partitioned {
            for (name, values) in [("year", ["2020", "2020"]), ("month", ["01", "02"])] {
                fields.push(Field::new(name, crate::session::partition_type(), false));
                columns.push(Arc::new(DictionaryArray::<UInt16Type>::from_iter(values)));
            }
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        let ctx = new_context();
        ctx.register_table("flags", Arc::new(table)).unwrap();
        let schema = ctx.table("flags").await.unwrap().schema().clone();
        let sql = rows_at("flags", "tile_lat", t, &schema).unwrap();
        assert_eq!(sql.contains("month = '"), partitioned, "{sql}");
        let rows = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        rows.iter()
            .flat_map(|b| column(b, "tile_lat").unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_step_is_read_from_its_month_or_from_a_table_without_months() {
        for partitioned in [true, false] {
            assert_eq!(lats_at(partitioned, FEB).await, [20.0], "{partitioned}");
            assert_eq!(lats_at(partitioned, JAN).await, [10.0], "{partitioned}");
        }
    }
}
