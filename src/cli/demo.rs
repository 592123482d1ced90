//! `uqcast demo [--out DIR]`: the default job end to end, with nothing to
//! download. The pipeline, its SQL and a small trained model are embedded
//! in the binary (the model is the one `uqcast train` makes from the
//! synthetic training span; see README "The shipped model").
//!
//! 1. synthesise three days of ERA5-like t2m on the default grid (North
//!    America, 1°) with an out-of-distribution hot disk at 2020-01-03T12Z;
//! 2. run the scheduled job (`uqcast run`) with the embedded pipeline;
//! 3. print the flagged high-EU regions with SQL;
//! 4. check AU, EU and skill against the synthetic ground truth;
//! 5. draw maps for a normal and the OOD step.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use datafusion::arrow::array::AsArray;
use datafusion::prelude::SessionContext;

use super::eval::{render, science};
use super::output::{Format, print};
use super::synth::{SynthArgs, generate};
use crate::job::eu_outliers::place;
use crate::job::{RunOptions, describe, run as run_job};
use crate::pipeline::Pipeline;
use crate::session::{context_with_table, f64_column};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write everything.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
}

/// The default pipeline and what it refers to, as shipped.
const EMBEDDED: [(&str, &[u8]); 5] = [
    (
        "pipelines/era5_t2m_6h.toml",
        include_bytes!("../../pipelines/era5_t2m_6h.toml"),
    ),
    (
        "pipelines/era5_na_1deg.sql",
        include_bytes!("../../pipelines/era5_na_1deg.sql"),
    ),
    (
        "pipelines/flag_high_eu.sql",
        include_bytes!("../../pipelines/flag_high_eu.sql"),
    ),
    (
        "models/era5_t2m_6h_na1deg.safetensors",
        include_bytes!("../../models/era5_t2m_6h_na1deg.safetensors"),
    ),
    (
        "models/era5_t2m_6h_na1deg.json",
        include_bytes!("../../models/era5_t2m_6h_na1deg.json"),
    ),
];

const FLAGGED_SQL: &str = "\
SELECT valid_time,
       count(*) FILTER (WHERE flagged)                        AS flagged_tiles,
       count(*)                                               AS tiles,
       round(max(max_eu), 3)                                  AS max_eu_k2,
       first_value(concat(CAST(tile_lat AS VARCHAR), 'N ', CAST(tile_lon AS VARCHAR), 'E')
                   ORDER BY max_eu DESC) FILTER (WHERE flagged) AS top_flagged_tile
FROM flags
GROUP BY valid_time
ORDER BY valid_time";

/// The out-of-distribution input: a disk 30 K too hot, 6° in radius
/// around 45N 260E, pasted into one step's input.
const OOD_INPUT: &str = "2020-01-03T12:00Z";
const OOD_DISK: (f64, f64, f64, f64) = (45.0, 260.0, 6.0, 30.0);
/// The forecast made from it (the input + the shipped model's 6 hours).
const OOD_FORECAST: &str = "2020-01-03T18:00Z";

fn unpack(root: &Path) -> Result<PathBuf> {
    for (name, bytes) in EMBEDDED {
        let path = root.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("{}", path.display()))?;
    }
    Ok(root.join(EMBEDDED[0].0))
}

pub async fn run(args: DemoArgs) -> Result<()> {
    super::output::make_dir(&args.out, "--out")?;
    let data = args.out.join("era5");
    let (lat, lon, radius, delta) = OOD_DISK;
    let ood = vec![format!("disk:{OOD_INPUT},{lat},{lon},{radius},{delta}")];
    let report = generate(&SynthArgs::new(
        data.clone(),
        "2020-01-01T00:00Z",
        12,
        0,
        ood,
    ))
    .await?;
    let config = unpack(&args.out)?;
    let output = args.out.join("output");
    let mut out = super::output::stdout();
    writeln!(
        out,
        "1. synthesised {} steps into {} (ground truth: {})",
        12,
        data.display(),
        report.truth.display()
    )?;
    writeln!(
        out,
        "2. running the job: uqcast run --config {} --input {} --output {}",
        config.display(),
        data.display(),
        output.display()
    )?;
    drop(out);

    let pipeline = Pipeline::load(&config)?;
    let summary = run_job(
        &pipeline,
        &RunOptions {
            input: Some(data.display().to_string()),
            output: Some(output.clone()),
            ..RunOptions::default()
        },
    )
    .await
    .with_context(|| {
        // The likeliest cause after an upgrade: a kept table from an older
        // model or sampler, which the job rightly refuses to mix with.
        format!(
            "the demo's job (if {} holds an earlier demo's forecast from another model or \
             sampler, it is kept, not overwritten: remove it or pass --out DIR)",
            output.display()
        )
    })?;
    writeln!(
        super::output::stdout(),
        "   uqcast run: ok {}\n\n3. high-epistemic regions (flags table):\n{FLAGGED_SQL};\n",
        describe(&summary, &output)
    )?;
    let ctx = context_with_table("flags", output.join("flags").display().to_string()).await?;
    print(ctx.sql(FLAGGED_SQL).await?, Format::Table).await?;
    let finding = ood_finding(&ctx)
        .await
        .with_context(|| format!("{}", output.join("flags").display()))?;
    writeln!(super::output::stdout(), "{finding}")?;

    let science_report = science(&output, &data).await?;
    writeln!(
        super::output::stdout(),
        "\n4. checked against the synthetic ground truth:\n{}\n",
        render(&science_report)
    )?;

    let maps = args.out.join("maps");
    std::fs::create_dir_all(&maps)?;
    let mut written = Vec::new();
    for (time, name) in [
        ("2020-01-02T12:00Z", "t2m_20200102T1200.png"),
        (OOD_FORECAST, "t2m_20200103T1800_ood.png"),
    ] {
        let png = maps.join(name);
        super::plot::draw(&output, crate::time::parse_utc(time).context("time")?, &png).await?;
        written.push(png);
    }
    let mut out = super::output::stdout();
    writeln!(
        out,
        "5. maps: {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        out,
        "\nEverything is under {}: era5/ (input NetCDF + truth/), pipelines/ and models/ (what ran), output/forecast (Parquet, year=/month=), output/flags, maps/.",
        args.out.display()
    )?;
    writeln!(
        out,
        "Query it: uqcast sql \"SELECT valid_time, avg(t2m_eu) FROM f GROUP BY 1 ORDER BY 1\" --table f={}",
        output.join("forecast").display()
    )?;
    drop(out);
    let missed = science_report.missed();
    if !missed.is_empty() {
        bail!(
            "the demo's forecast (in {}) missed its targets against the synthetic ground \
             truth: {}",
            output.display(),
            missed.join("; ")
        );
    }
    Ok(())
}

/// Where EU peaks in the forecast made from the OOD input, against the
/// highest peak of every other step, in words.
async fn ood_finding(ctx: &SessionContext) -> Result<String> {
    let forecast = crate::time::parse_utc(OOD_FORECAST).context("OOD_FORECAST")? / 1_000_000;
    let sql = format!(
        "SELECT to_unixtime(valid_time) = {forecast} AS ood_step,
                count(DISTINCT valid_time) AS steps,
                max(max_eu) AS peak,
                first_value(tile_lat ORDER BY max_eu DESC) AS tile_lat,
                first_value(tile_lon ORDER BY max_eu DESC) AS tile_lon
         FROM flags GROUP BY 1"
    );
    let (mut ood, mut others) = (None, None);
    for batch in ctx.sql(&sql).await?.collect().await? {
        let is_ood = batch.column(0).as_boolean();
        let steps = f64_column(&batch, "steps")?;
        let peak = f64_column(&batch, "peak")?;
        let (lat, lon) = (
            f64_column(&batch, "tile_lat")?,
            f64_column(&batch, "tile_lon")?,
        );
        for row in 0..batch.num_rows() {
            let corner = (lat[row].unwrap_or(f64::NAN), lon[row].unwrap_or(f64::NAN));
            let found = (
                steps[row].unwrap_or(0.0),
                peak[row].unwrap_or(f64::NAN),
                place(corner.0, corner.1),
            );
            match is_ood.value(row) {
                true => ood = Some(found),
                false => others = Some(found),
            }
        }
    }
    let (Some((_, peak, tile)), Some((steps, other_peak, _))) = (ood, others) else {
        bail!("no flags for the step valid at {OOD_FORECAST}, or none for any other step");
    };
    let (lat, lon, radius, delta) = OOD_DISK;
    Ok(format!(
        "The disk {delta} K too hot ({radius}° in radius around {lat}N {lon}E) pasted into the \
         input of {OOD_INPUT} stands out in the forecast valid at {OOD_FORECAST}: EU peaks at \
         {peak:.3} K² (tile {tile}), {:.1}× the highest of the other {steps} steps \
         ({other_peak:.3} K²).",
        peak / other_peak
    ))
}
