//! `uqcast demo [--out DIR]`: the embedded default job, needing no downloads.
//!
//! Synthesises three days of ERA5-like data on the default grid (North
//! America, 1°) with one out-of-distribution hot disk, then summarises the
//! table with SQL. (The forecast stages join here as they land.)

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use datafusion::prelude::SessionContext;

use super::output::{Format, print};
use super::synth::{SynthArgs, generate};
use crate::session::{TableArg, register_tables};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write everything.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
}

const SUMMARY_SQL: &str = "\
SELECT valid_time,
       count(*)                    AS cells,
       round(min(t2m), 2)          AS min_t2m_k,
       round(avg(t2m), 2)          AS mean_t2m_k,
       round(max(t2m), 2)          AS max_t2m_k,
       sum(CASE WHEN latitude >= 40 AND t2m > 295 THEN 1 ELSE 0 END) AS hot_cells_north_of_40n
FROM era5
GROUP BY valid_time
ORDER BY valid_time";

pub async fn run(args: DemoArgs) -> Result<()> {
    let data = args.out.join("era5");
    let ood = vec!["disk:2020-01-03T12:00Z,45,260,6,30".to_string()];
    let report = generate(&SynthArgs::new(
        data.clone(),
        "2020-01-01T00:00Z",
        12,
        0,
        ood,
    ))
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "synthesised {} files under {} (truth: {})",
        report.files.len(),
        data.display(),
        report.truth.display()
    )?;
    writeln!(out, "\n{SUMMARY_SQL};\n")?;
    drop(out);

    let ctx = SessionContext::new();
    let table = TableArg {
        name: "era5".into(),
        location: data.display().to_string(),
    };
    register_tables(&ctx, &[table]).await?;
    print(ctx.sql(SUMMARY_SQL).await?, Format::Table).await?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "The out-of-distribution hot disk (+30 K at 45°N 260°E, 2020-01-03T12:00Z) is the only step with hot cells north of 40°N."
    )?;
    writeln!(
        out,
        "Query it yourself: uqcast sql \"SELECT * FROM era5 LIMIT 5\" --table era5={}",
        data.display()
    )?;
    Ok(())
}
