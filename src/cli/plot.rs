//! `uqcast plot --input DIR --time T --out FILE.png`: four maps of one
//! forecast valid time — mean, AU, EU, and EU with the flagged tiles
//! outlined — with labelled axes and colour bars.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use datafusion::arrow::array::RecordBatch;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::output::WrittenBeside;
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

async fn query(input: &Path, table: &str, sql: String) -> Result<Vec<RecordBatch>> {
    let location = crate::job::output_table(input, table, "--input")?;
    let table = TableArg {
        name: table.into(),
        location: location.display().to_string(),
    };
    let ctx = new_context();
    register_tables(&ctx, std::slice::from_ref(&table)).await?;
    let ran = async { Ok(ctx.sql(&sql).await?.collect().await?) }.await;
    footers::naming_damaged(&[table], ran).await
}

/// The forecast table's valid times in words, for a time it does not hold.
async fn valid_times(input: &Path) -> Result<String> {
    let sql = "SELECT count(DISTINCT valid_time) AS n, \
               to_unixtime(min(valid_time)) AS first, to_unixtime(max(valid_time)) AS last \
               FROM forecast";
    let batches = query(input, "forecast", sql.to_string()).await?;
    let Some(b) = batches.first().filter(|b| b.num_rows() == 1) else {
        return Ok("the table holds no step".into());
    };
    let [n, first, last] = ["n", "first", "last"].map(|c| column(b, c).map(|v| v[0]));
    let (n, first, last) = (n?, first?, last?);
    if n == 0.0 {
        return Ok("the table holds no step".into());
    }
    let iso = |secs: f64| uqcast_forecast::error::iso(secs as i64 * 1_000_000);
    Ok(format!(
        "the table holds {n} valid times from {} to {}",
        iso(first),
        iso(last)
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
    let time_sql = format!("to_timestamp_micros({t}, 'UTC')");
    let forecast = query(
        &args.input,
        "forecast",
        format!("SELECT latitude, longitude, t2m_mean, t2m_au, t2m_eu FROM forecast WHERE valid_time = {time_sql}"),
    )
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
    let flags = query(
        &args.input,
        "flags",
        format!("SELECT tile_lat, tile_lon FROM flags WHERE flagged AND valid_time = {time_sql}"),
    )
    .await?;
    let mut tile_corners = Vec::new();
    for b in &flags {
        tile_corners.extend(
            column(b, "tile_lat")?
                .into_iter()
                .zip(column(b, "tile_lon")?),
        );
    }
    let all_tiles = query(
        &args.input,
        "flags",
        format!("SELECT DISTINCT tile_lat FROM flags WHERE valid_time = {time_sql}"),
    )
    .await?;
    let mut tile_lats = Vec::new();
    for b in &all_tiles {
        tile_lats.extend(column(b, "tile_lat")?);
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
