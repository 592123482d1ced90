//! `uqcast eval --forecast DIR --data DIR`: checks a forecast table against
//! the ground truth of a synthetic data set (`uqcast synth`):
//! - AU: correlation of the per-cell mean AU with the true innovation
//!   variance (`truth/innovation_variance.nc`), and their mean ratio;
//! - EU: AUROC of per-cell EU for cells of out-of-distribution inputs
//!   (`truth/ood.json`) against all other cells;
//! - skill: RMSE of `t2m_mean` against the next step vs persistence, and the
//!   spread–skill ratio √mean(AU + EU) / RMSE, on in-distribution steps.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float32Type, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use serde::Serialize;
use uqcast_forecast::ModelGrid;
use uqcast_netcdf::Era5TableProvider;
use uqcast_skill::{auroc, pearson};
use uqcast_synth::{LatLonGrid, OodEvent, read_ood_events};

use crate::session::{TableArg, f64_column, footers, new_context, register_tables};

/// Two modes: `--forecast DIR --data DIR` checks one run against its
/// synthetic truth; `--config P` compares methods on the synthetic
/// benchmark (see `compare.rs`).
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Output directory of `uqcast run` (holding `forecast/`).
    #[arg(long, required_unless_present = "config", requires = "data")]
    forecast: Option<PathBuf>,
    /// The synthetic data set the forecasts were made from (with `truth/`).
    #[arg(long, requires = "forecast")]
    data: Option<PathBuf>,
    /// Compare methods on the synthetic benchmark with this pipeline's
    /// architecture and training settings.
    #[arg(long, conflicts_with_all = ["forecast", "data"])]
    config: Option<PathBuf>,
    /// Methods to compare: hyperdm, mc-dropout, ensemble, and single (one
    /// plain network, no EU: the unit of training time).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hyperdm,mc-dropout,ensemble,single"
    )]
    methods: Vec<String>,
    /// Members M (weight draws; dropout masks; ensemble size).
    #[arg(long, default_value_t = 10)]
    m: usize,
    /// Samples N per member.
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Training updates per network (default: the pipeline's train.iterations).
    #[arg(long)]
    iterations: Option<u64>,
    /// 6-hour steps of the synthetic training span.
    #[arg(long, default_value_t = 240)]
    train_steps: usize,
    /// 6-hour steps of the held-out span (its third carries the OOD disk: EU is scored with 4 or more).
    #[arg(long, default_value_t = 6)]
    test_steps: usize,
    /// Where the benchmark's data and models are kept (reused when present).
    #[arg(long, default_value = "out/eval")]
    work: PathBuf,
    /// JSON instead of a table (one object per line with `--config`).
    #[arg(long)]
    json: bool,
    /// With `--forecast`: exit 1, naming them, when targets are not met (the
    /// report is printed first), so a scheduled job can stop on it.
    #[arg(long, requires = "forecast")]
    require_targets: bool,
}

/// The science acceptance numbers.
#[derive(Debug, Serialize)]
pub struct ScienceReport {
    pub forecast_steps: usize,
    pub in_distribution_steps: usize,
    pub au_correlation: f64,
    /// Mean AU over mean true variance (1 = right level).
    pub au_mean_ratio: f64,
    pub eu_auroc: f64,
    pub ood_cells: usize,
    pub rmse_mean: f64,
    pub rmse_persistence: f64,
    pub spread_skill: f64,
}

/// The AU correlation a forecast must reach.
const TARGET_AU_CORRELATION: f64 = 0.8;
/// The EU AUROC on the OOD cells a forecast must reach.
const TARGET_EU_AUROC: f64 = 0.9;

impl ScienceReport {
    /// Whether the AU, EU and RMSE targets are met, in the report's order.
    fn targets(&self) -> [(bool, String); 3] {
        [
            (
                self.au_correlation >= TARGET_AU_CORRELATION,
                format!(
                    "AU correlation {:.3} < {TARGET_AU_CORRELATION}",
                    self.au_correlation
                ),
            ),
            // Without OOD cells there is nothing for EU to find: not
            // checked, rather than failed as a NaN AUROC.
            (
                self.ood_cells == 0 || self.eu_auroc >= TARGET_EU_AUROC,
                format!("EU AUROC {:.3} < {TARGET_EU_AUROC}", self.eu_auroc),
            ),
            (
                self.rmse_mean < self.rmse_persistence,
                format!(
                    "RMSE {:.3} K not below persistence {:.3} K",
                    self.rmse_mean, self.rmse_persistence
                ),
            ),
        ]
    }

    /// The targets not met, each as a phrase with its figure.
    pub fn missed(&self) -> Vec<String> {
        self.targets()
            .into_iter()
            .filter(|(met, _)| !met)
            .map(|(_, why)| why)
            .collect()
    }
}

struct Rows {
    init: Vec<i64>,
    valid: Vec<i64>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    now: Vec<f64>,
    mean: Vec<f64>,
    au: Vec<f64>,
    eu: Vec<f64>,
    truth: Vec<Option<f64>>,
    /// The data's t2m at the forecast's initial time and cell: the
    /// forecast's input, if these data are its source.
    source_now: Vec<Option<f64>>,
}

async fn forecast_rows(ctx: &SessionContext) -> Result<Rows> {
    let sql = "SELECT f.init_time, f.valid_time, f.latitude, f.longitude, f.t2m, f.t2m_mean, f.t2m_au, f.t2m_eu,
                      e.t2m AS truth, s.t2m AS source_now
               FROM forecast f
               LEFT JOIN era5 e
                 ON e.valid_time = f.valid_time AND e.latitude = f.latitude AND e.longitude = f.longitude
               LEFT JOIN era5 s
                 ON s.valid_time = f.init_time AND s.latitude = f.latitude AND s.longitude = f.longitude";
    let batches = ctx
        .sql(sql)
        .await?
        .collect()
        .await
        .context("reading forecasts")?;
    let mut r = Rows {
        init: vec![],
        valid: vec![],
        lat: vec![],
        lon: vec![],
        now: vec![],
        mean: vec![],
        au: vec![],
        eu: vec![],
        truth: vec![],
        source_now: vec![],
    };
    for b in &batches {
        let t = |name: &str| -> Result<Vec<i64>> {
            Ok(b.column_by_name(name)
                .with_context(|| format!("column {name}"))?
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec())
        };
        r.init.extend(t("init_time")?);
        r.valid.extend(t("valid_time")?);
        let req = |v: Vec<Option<f64>>| v.into_iter().map(|x| x.unwrap_or(f64::NAN));
        r.lat.extend(req(f64_column(b, "latitude")?));
        r.lon.extend(req(f64_column(b, "longitude")?));
        r.now.extend(req(f64_column(b, "t2m")?));
        r.mean.extend(req(f64_column(b, "t2m_mean")?));
        r.au.extend(req(f64_column(b, "t2m_au")?));
        r.eu.extend(req(f64_column(b, "t2m_eu")?));
        r.truth.extend(f64_column(b, "truth")?);
        r.source_now.extend(f64_column(b, "source_now")?);
    }
    Ok(r)
}

/// Refuses data that are not the forecast's source: scores against another
/// data set's truth (another seed or grid) would look like a bad model.
/// The forecast's `t2m` is its input at the initial time; the source has
/// the same value there (0.01 K: both decode the same stored numbers).
fn check_source(rows: &Rows, forecast: &Path, data: &Path) -> Result<()> {
    let mut found = 0usize;
    for k in 0..rows.init.len() {
        let Some(source) = rows.source_now[k] else {
            continue;
        };
        found += 1;
        if (source - rows.now[k]).abs() > 0.01 {
            bail!(
                "{}: t2m at {} ({}, {}) is {source:.2} K, but the forecast in {} started from {:.2} K: \
                 these data are not the ones it was run on",
                data.display(),
                uqcast_forecast::error::iso(rows.init[k]),
                rows.lat[k],
                rows.lon[k],
                forecast.display(),
                rows.now[k]
            );
        }
    }
    if found == 0 {
        bail!(
            "{}: no cell and initial time of the forecast in {} is in these data",
            data.display(),
            forecast.display()
        );
    }
    Ok(())
}

pub(crate) async fn true_variance(path: &Path) -> Result<HashMap<(i64, i64), f64>> {
    let location = path.display().to_string();
    let provider = tokio::task::spawn_blocking(move || {
        Era5TableProvider::try_new(&[location], Some(&["innovation_variance".to_string()]))
    })
    .await??;
    let ctx = SessionContext::new();
    ctx.register_table("truth", Arc::new(provider))?;
    let batches = ctx
        .sql("SELECT latitude, longitude, innovation_variance FROM truth")
        .await?
        .collect()
        .await?;
    let mut map = HashMap::new();
    for b in &batches {
        let (lat, lon) = (f64_column(b, "latitude")?, f64_column(b, "longitude")?);
        let var = b
            .column_by_name("innovation_variance")
            .context("innovation_variance")?
            .as_primitive::<Float32Type>();
        for k in 0..b.num_rows() {
            if let (Some(y), Some(x), false) = (lat[k], lon[k], var.is_null(k)) {
                map.insert(grid_key(y, x), f64::from(var.value(k)));
            }
        }
    }
    Ok(map)
}

/// A cell's coordinates to the micro-degree, as a map key.
pub(crate) fn grid_key(lat: f64, lon: f64) -> (i64, i64) {
    ((lat * 1e6).round() as i64, (lon * 1e6).round() as i64)
}

pub async fn science(forecast: &Path, data: &Path) -> Result<ScienceReport> {
    // Checked first: real ERA5 has no truth to score against, and the
    // forecast query below is the slow part.
    let truth = data.join("truth");
    if data.is_dir() && !truth.is_dir() {
        bail!(
            "{}: no truth/ folder: `eval --forecast` scores against the truth `uqcast synth` \
             writes beside its data (noise variance, OOD cells); score forecasts of real ERA5 \
             with the SQL skill functions (README, Skill)",
            data.display()
        );
    }
    let ctx = new_context();
    let tables = [
        TableArg {
            name: "forecast".into(),
            location: crate::job::output_table(forecast, "forecast", "--forecast")?
                .display()
                .to_string(),
        },
        TableArg {
            name: "era5".into(),
            location: data.display().to_string(),
        },
    ];
    register_tables(&ctx, &tables).await?;
    let rows = footers::naming_damaged(&tables, forecast_rows(&ctx).await).await?;
    if rows.init.is_empty() {
        bail!("{}: no forecasts", forecast.display());
    }
    check_source(&rows, forecast, data)?;
    let variance = true_variance(&truth.join("innovation_variance.nc")).await?;
    let events = read_ood_events(&truth.join("ood.json"))?;

    // OOD labels: a forecast cell is OOD when its input cell was altered.
    let grid = ModelGrid::from_coordinates(rows.lat.iter().copied(), rows.lon.iter().copied());
    let synth_grid = LatLonGrid {
        latitude: grid.latitude.clone(),
        longitude: grid.longitude.clone(),
    };
    let times: BTreeSet<i64> = rows.init.iter().chain(&rows.valid).copied().collect();
    let masks: HashMap<i64, Vec<bool>> = times
        .iter()
        .map(|&t| (t, OodEvent::union_mask(&events, &synth_grid, t)))
        .collect();
    let touched = |t: i64| masks.get(&t).is_some_and(|m| m.iter().any(|&b| b));
    let mut labels = Vec::with_capacity(rows.init.len());
    for k in 0..rows.init.len() {
        let cell = grid
            .cell(rows.lat[k], rows.lon[k])
            .context("cell off grid")?;
        labels.push(masks[&rows.init[k]][cell]);
    }
    let eu_auroc = auroc(&rows.eu, &labels).unwrap_or(f64::NAN);

    // Skill and AU on in-distribution steps with a truth to compare to.
    let clean =
        |k: usize| !touched(rows.init[k]) && !touched(rows.valid[k]) && rows.truth[k].is_some();
    let (mut se_mean, mut se_persist, mut spread, mut n) = (0.0, 0.0, 0.0, 0usize);
    let mut au_by_cell: HashMap<(i64, i64), (f64, usize)> = HashMap::new();
    let mut steps_clean = BTreeSet::new();
    for k in (0..rows.init.len()).filter(|&k| clean(k)) {
        let truth = rows.truth[k].unwrap_or(f64::NAN);
        se_mean += (rows.mean[k] - truth).powi(2);
        se_persist += (rows.now[k] - truth).powi(2);
        spread += rows.au[k] + rows.eu[k];
        n += 1;
        steps_clean.insert(rows.init[k]);
    }
    for k in (0..rows.init.len()).filter(|&k| !touched(rows.init[k])) {
        let e = au_by_cell
            .entry(grid_key(rows.lat[k], rows.lon[k]))
            .or_default();
        e.0 += rows.au[k];
        e.1 += 1;
    }
    let (mut au, mut truth_var) = (Vec::new(), Vec::new());
    for (cell, (sum, count)) in &au_by_cell {
        if let Some(v) = variance.get(cell) {
            au.push(sum / *count as f64);
            truth_var.push(*v);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let rmse_mean = (se_mean / n.max(1) as f64).sqrt();
    Ok(ScienceReport {
        forecast_steps: rows.init.iter().collect::<BTreeSet<_>>().len(),
        in_distribution_steps: steps_clean.len(),
        au_correlation: pearson(&au, &truth_var).unwrap_or(f64::NAN),
        au_mean_ratio: mean(&au) / mean(&truth_var),
        eu_auroc,
        ood_cells: labels.iter().filter(|&&l| l).count(),
        rmse_mean,
        rmse_persistence: (se_persist / n.max(1) as f64).sqrt(),
        spread_skill: (spread / n.max(1) as f64).sqrt() / rmse_mean,
    })
}

/// The report as aligned lines with the acceptance targets.
pub fn render(r: &ScienceReport) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let [au, eu, rmse] = r.targets().map(|(met, _)| met);
    let eu_line = if r.ood_cells == 0 {
        "EU separates OOD cells: not checked, these data hold none (uqcast synth --ood makes some)"
            .to_string()
    } else {
        format!(
            "EU separates OOD cells: AUROC {:.3} (target ≥ {TARGET_EU_AUROC}: {})",
            r.eu_auroc,
            verdict(eu)
        )
    };
    format!(
        "forecast steps {} ({} in distribution with a truth step), OOD cells {}\n\
         AU vs true noise variance: correlation {:.3} (target ≥ {TARGET_AU_CORRELATION}: {}), mean ratio {:.2} (1 = calibrated)\n\
         {eu_line}\n\
         RMSE of t2m_mean {:.3} K vs persistence {:.3} K ({})\n\
         spread–skill √mean(AU+EU)/RMSE {:.2} (1 = calibrated)",
        r.forecast_steps,
        r.in_distribution_steps,
        r.ood_cells,
        r.au_correlation,
        verdict(au),
        r.au_mean_ratio,
        r.rmse_mean,
        r.rmse_persistence,
        verdict(rmse),
        r.spread_skill
    )
}

pub async fn run(args: EvalArgs) -> Result<()> {
    let (forecast, data) = match (args.config, args.forecast, args.data) {
        (Some(config), _, _) => {
            return super::compare::run(super::compare::Benchmark {
                config,
                methods: args.methods,
                members: args.m,
                samples: args.n,
                iterations: args.iterations,
                train_steps: args.train_steps,
                test_steps: args.test_steps,
                work: args.work,
                json: args.json,
            })
            .await;
        }
        (None, Some(forecast), Some(data)) => (forecast, data),
        _ => bail!("eval needs --config, or --forecast with --data"),
    };
    let report = science(&forecast, &data).await?;
    {
        let mut out = super::output::stdout();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            writeln!(out, "{}", render(&report))?;
        }
    }
    let missed = report.missed();
    if args.require_targets && !missed.is_empty() {
        bail!(
            "{}: --require-targets: not met: {}",
            forecast.display(),
            missed.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ScienceReport;

    fn report(au_correlation: f64, eu_auroc: f64, rmse_mean: f64) -> ScienceReport {
        ScienceReport {
            forecast_steps: 12,
            in_distribution_steps: 8,
            au_correlation,
            au_mean_ratio: 1.0,
            eu_auroc,
            ood_cells: 40,
            rmse_mean,
            rmse_persistence: 3.0,
            spread_skill: 1.0,
        }
    }

    #[test]
    fn each_missed_target_is_named_with_its_figure() {
        // On the thresholds counts as met (≥ 0.8, ≥ 0.9); RMSE must be below.
        assert!(report(0.8, 0.9, 2.999).missed().is_empty());
        assert_eq!(
            report(0.5, 0.95, 3.0).missed(),
            [
                "AU correlation 0.500 < 0.8",
                "RMSE 3.000 K not below persistence 3.000 K"
            ]
        );
        assert_eq!(report(0.9, 0.85, 1.0).missed(), ["EU AUROC 0.850 < 0.9"]);
        // A NaN correlation (no truth cells) is not a pass.
        assert_eq!(report(f64::NAN, 0.95, 1.0).missed().len(), 1);
        // Data without OOD cells leave EU unchecked, not failed, and say so.
        let mut none = report(0.9, f64::NAN, 1.0);
        assert_eq!(none.missed(), ["EU AUROC NaN < 0.9"]);
        none.ood_cells = 0;
        assert!(none.missed().is_empty());
        assert!(
            super::render(&none)
                .contains("EU separates OOD cells: not checked, these data hold none"),
            "{}",
            super::render(&none)
        );
    }
}
