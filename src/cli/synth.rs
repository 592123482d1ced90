//! `uqcast synth --out DIR --start TIME --steps K [--grid RxC | --res DEG] [--bbox S,N,W,E]
//!  [--encoding nc3|nc4] [--files-per-day] [--seed S] [--ood SPEC]... [--era5t-from TIME]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use uqcast_netcdf::Encoding;
use uqcast_synth::{BoundingBox, LatLonGrid, OodEvent, SynthConfig, SynthReport, write_dataset};

use crate::time::parse_utc;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Directory to write into (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// First step (UTC), e.g. 2020-01-01T00:00Z; must be 00, 06, 12 or 18 UTC.
    #[arg(long)]
    start: String,
    /// Number of 6-hour steps.
    #[arg(long)]
    steps: usize,
    /// Grid shape ROWSxCOLS spanning the box (overrides --res).
    #[arg(long, value_name = "RxC")]
    grid: Option<String>,
    /// Grid spacing in degrees.
    #[arg(long, default_value_t = 1.0)]
    res: f64,
    /// Bounding box S,N,W,E (default: the HyperDM paper's North America box, 0..360 longitudes).
    #[arg(long, value_name = "S,N,W,E", default_value = "7,83,191,325")]
    bbox: String,
    /// CDS encoding: nc3 (packed int16, hours since 1900) or nc4 (zlib float32, seconds since 1970).
    #[arg(long, default_value = "nc4")]
    encoding: Encoding,
    /// One file per UTC day instead of one file.
    #[arg(long)]
    files_per_day: bool,
    /// Random seed: same seed, same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Out-of-distribution input: disk:TIME,LAT,LON,RADIUS_DEG,DELTA_K or regime:FROM_TIME,DELTA_K.
    #[arg(long, value_name = "SPEC")]
    ood: Vec<String>,
    /// Steps from TIME on are ERA5T: a file holding steps from before and after it gets the
    /// expver dimension (1 = ERA5, 5 = ERA5T) the CDS gave requests that mixed the two.
    #[arg(long, value_name = "TIME")]
    era5t_from: Option<String>,
}

impl SynthArgs {
    pub fn new(out: PathBuf, start: &str, steps: usize, seed: u64, ood: Vec<String>) -> Self {
        Self {
            out,
            start: start.to_string(),
            steps,
            grid: None,
            res: 1.0,
            bbox: "7,83,191,325".into(),
            encoding: Encoding::Nc4,
            files_per_day: true,
            seed,
            ood,
            era5t_from: None,
        }
    }

    pub(crate) fn config(&self) -> Result<SynthConfig> {
        let start = parse_utc(&self.start)
            .ok_or_else(|| anyhow!("synth option 'start': '{}' is not a UTC time", self.start))?;
        let bbox = BoundingBox::parse(&self.bbox)?;
        let grid = match &self.grid {
            Some(shape) => {
                let (rows, cols) = LatLonGrid::parse_shape(shape)?;
                LatLonGrid::with_shape(bbox, rows, cols)?
            }
            None => LatLonGrid::with_resolution(bbox, self.res)?,
        };
        let ood = self
            .ood
            .iter()
            .map(|s| OodEvent::parse(s, parse_utc))
            .collect::<Result<Vec<_>, _>>()?;
        let era5t_from = self
            .era5t_from
            .as_deref()
            .map(|t| {
                parse_utc(t)
                    .ok_or_else(|| anyhow!("synth option 'era5t-from': '{t}' is not a UTC time"))
            })
            .transpose()?;
        Ok(SynthConfig {
            start,
            steps: self.steps,
            grid,
            encoding: self.encoding,
            files_per_day: self.files_per_day,
            seed: self.seed,
            ood,
            era5t_from,
        })
    }
}

/// Generates the data set (off the async executor) and returns what was written.
pub async fn generate(args: &SynthArgs) -> Result<SynthReport> {
    write(args.config()?, args.out.clone()).await
}

async fn write(config: SynthConfig, out: PathBuf) -> Result<SynthReport> {
    tokio::task::spawn_blocking(move || write_dataset(&config, &out))
        .await
        .context("synth task failed")?
        .map_err(Into::into)
}

pub async fn run(args: SynthArgs) -> Result<()> {
    // An event the data would not hold is a mistake in its time or place;
    // refused before anything is written. (`uqcast eval` and the demo place
    // their own events and call `generate`.)
    let config = args.config()?;
    config.check()?;
    let times = config.times();
    for (event, spec) in config.ood.iter().zip(&args.ood) {
        if !event.touches(&config.grid, &times) {
            let needs = match event {
                OodEvent::Disk { .. } => {
                    "a disk's TIME must be one of them and the disk must overlap the box"
                }
                OodEvent::Regime { .. } => "a regime's FROM_TIME must come by the last of them",
            };
            bail!(
                "synth option 'ood': '{spec}' changes no grid cell in the {} steps from {}: {needs}",
                times.len(),
                args.start
            );
        }
    }
    super::output::make_dir(&args.out, "--out")?;
    let report = write(config, args.out.clone()).await?;
    let mut out = super::output::stdout();
    for f in &report.files {
        writeln!(out, "wrote {}", f.display())?;
    }
    writeln!(
        out,
        "truth {} (innovation variance, K²) and {} ({} OOD cells)",
        report.truth.display(),
        report.ood.display(),
        report.ood_cells
    )?;
    Ok(())
}
