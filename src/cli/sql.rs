//! `uqcast sql "QUERY" --table NAME=PATH ... [--format table|csv|json] [--output FILE.parquet]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::output::{Format, print, write_parquet};
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
    /// Write the result to this Parquet file instead of printing it.
    #[arg(long, value_name = "FILE.parquet")]
    output: Option<PathBuf>,
}

pub async fn run(args: SqlArgs) -> Result<()> {
    let ctx = crate::session::new_context();
    register_tables(&ctx, &args.tables).await?;
    let df = ctx.sql(&args.query).await.context("query")?;
    match &args.output {
        Some(path) => write_parquet(df, path).await,
        None => print(df, args.format).await.context("query"),
    }
}
