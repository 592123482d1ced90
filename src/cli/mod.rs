//! The command line: one subcommand per file.

mod demo;
mod output;
mod sql;
mod synth;
mod toy;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// ERA5 forecasts with aleatoric and epistemic uncertainty, as SQL tables and Parquet.
#[derive(Debug, Parser)]
#[command(name = "uqcast", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL over NetCDF and Parquet tables.
    Sql(sql::SqlArgs),
    /// Write ERA5-like synthetic data with a known noise map and optional OOD inputs.
    Synth(synth::SynthArgs),
    /// The embedded default job: synthesise data and summarise it with SQL.
    Demo(demo::DemoArgs),
    /// The HyperDM paper's toy experiment: AU vs noise, EU vs data size, EU in a data gap.
    Toy(toy::ToyArgs),
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sql(args) => sql::run(args).await,
        Command::Synth(args) => synth::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Toy(args) => toy::run_toy(args).await,
    }
}
