//! The command line: one subcommand per file.

mod cluster;
mod compare;
mod demo;
mod eval;
pub mod output;
mod plot;
mod run;
mod sql;
mod synth;
mod toy;
mod train;
mod train_pairs;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// ERA5 forecasts with aleatoric and epistemic uncertainty, as SQL tables and Parquet.
#[derive(Debug, Parser)]
#[command(
    name = "uqcast",
    version,
    about,
    after_help = "Environment: UQCAST_DEVICE=cpu|cuda|cuda:N picks where models train and \
sample (default: the first GPU if the build has `cuda` and one is visible, else the CPU); \
UQCAST_NETCDF_LOOP_SECONDS (default 60) ends a command whose one libnetcdf call on a file \
has computed that long (CPU time) without returning (a damaged file can loop HDF5 forever), \
naming the file, and UQCAST_NETCDF_STALL_SECONDS (default 600) one whose call has not \
returned by then (wall-clock time: storage that stalled); UQCAST_QUERY_MEMORY_GB (default: \
half of the memory) is what a query's sorts, aggregations and joins, and the training span \
that train and eval read, may hold before they spill or fail; UQCAST_LOG sets the log level."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Services (a scheduler, an executor) log what they do. Commands warn
    /// only, and not through Ballista's client, whose failures they report.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Scheduler(_) | Command::Executor(_) => "info",
            _ => "warn,ballista=off,ballista_core=off",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL over NetCDF and Parquet tables.
    Sql(sql::SqlArgs),
    /// Write ERA5-like synthetic data with a known noise map and optional OOD inputs.
    Synth(synth::SynthArgs),
    /// The embedded default job: synthesise data and summarise it with SQL.
    Demo(demo::DemoArgs),
    /// Train the pipeline's HyperDM forecast model on ERA5 NetCDF.
    Train(train::TrainArgs),
    /// The scheduled job: forecast new steps to Parquet and flag high-EU regions.
    Run(run::RunArgs),
    /// Check forecasts against synthetic ground truth, or compare HyperDM with MC-Dropout and a deep ensemble.
    Eval(eval::EvalArgs),
    /// Maps of mean, AU, EU and flagged tiles for one forecast valid time (PNG).
    Plot(plot::PlotArgs),
    /// The HyperDM paper's toy experiment: AU vs noise, EU vs data size, EU in a data gap.
    Toy(toy::ToyArgs),
    /// A Ballista scheduler for `uqcast sql --ballista` (runs until stopped).
    Scheduler(cluster::SchedulerArgs),
    /// A Ballista executor joining a `uqcast scheduler` (runs until stopped).
    Executor(cluster::ExecutorArgs),
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sql(args) => sql::run(args).await,
        Command::Synth(args) => synth::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Train(args) => train::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Eval(args) => eval::run(args).await,
        Command::Plot(args) => plot::run(args).await,
        Command::Toy(args) => toy::run_toy(args).await,
        Command::Scheduler(args) => cluster::run_scheduler(args).await,
        Command::Executor(args) => cluster::run_executor(args).await,
    }
}
