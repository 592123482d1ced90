//! `uqcast sql "QUERY" --table NAME=PATH ... [--format table|csv|json] [--output FILE.parquet]`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, SessionContext};

use super::output::{Format, print, write_parquet};
use crate::session::s3::S3Location;
use crate::session::{TableArg, register_tables};

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query, e.g. "SELECT max(t2m) FROM era5".
    query: String,
    /// NAME=PATH: a NetCDF file, directory or glob, or a Parquet file or directory.
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<TableArg>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write the result to this Parquet file (or s3:// object) instead of printing it.
    #[arg(long, value_name = "FILE.parquet", conflicts_with = "format")]
    output: Option<PathBuf>,
    /// Run the query on a Ballista cluster (`uqcast scheduler`), df://HOST:PORT.
    /// Its executors read the tables' files at the same paths.
    #[arg(long, value_name = "df://HOST:PORT")]
    ballista: Option<String>,
}

/// Writes the result as one object; S3 makes a completed upload visible
/// whole, so no temporary is needed.
async fn write_parquet_s3(ctx: &SessionContext, df: DataFrame, remote: &S3Location) -> Result<()> {
    crate::session::s3::register_store(ctx, remote)
        .with_context(|| format!("--output {remote}"))?;
    let options = DataFrameWriteOptions::new().with_single_file_output(true);
    df.write_parquet(&remote.to_string(), options, None)
        .await
        .with_context(|| format!("{remote}: writing Parquet"))?;
    Ok(())
}

pub async fn run(args: SqlArgs) -> Result<()> {
    // Checked before any work: a `--output x.csv` would otherwise hold
    // Parquet under a CSV name.
    if let Some(path) = &args.output
        && !path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        bail!(
            "--output {}: the result is written as Parquet, so the name must end in .parquet \
             (for CSV or JSON, use --format csv or json and redirect the printed result)",
            path.display()
        );
    }
    let ctx = match &args.ballista {
        Some(url) => crate::cluster::client(url).await?,
        None => crate::session::new_context(),
    };
    register_tables(&ctx, &args.tables).await?;
    // A cluster is reached only when the query runs: name it in errors.
    let failed = |e: anyhow::Error| match &args.ballista {
        Some(url) => crate::cluster::failure("query", url, e),
        None => e.context("query"),
    };
    let df = ctx.sql(&args.query).await.map_err(|e| failed(e.into()))?;
    let ran = match &args.output {
        Some(path) => {
            if let Some(remote) = S3Location::parse(&path.to_string_lossy())? {
                return write_parquet_s3(&ctx, df, &remote).await;
            }
            write_parquet(df, path).await
        }
        None => print(df, args.format).await.map_err(failed),
    };
    match ran {
        Err(e) if args.ballista.is_none() => {
            match crate::session::footers::damaged_file(&args.tables, &e).await {
                Some(named) => Err(named.context("query")),
                None => Err(e),
            }
        }
        other => other,
    }
}
