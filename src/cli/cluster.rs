//! `uqcast scheduler` and `uqcast executor`: a Ballista cluster that runs
//! `uqcast sql --ballista df://HOST:PORT` queries (see `crate::cluster`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::cluster::{ExecutorSettings, executor, scheduler};

/// What every cluster process reads, printed below both services' options.
const DATA: &str = "Data: executors open NetCDF files and models at the paths plans name (shared \
storage); the scheduler plans NetCDF tables from the headers clients send, and opens only the \
models of hyperdm_forecast tables. s3:// objects are fetched into $UQCAST_CACHE_DIR (default: \
$XDG_CACHE_HOME/uqcast or ~/.cache/uqcast) with this process's AWS environment \
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL). UQCAST_LOG sets the \
log level (default info).";

#[derive(Debug, Args)]
#[command(after_help = DATA)]
pub struct SchedulerArgs {
    /// Address to listen on (clients and executors connect here).
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: SocketAddr,
    /// The name others reach this scheduler by (default: the bind address,
    /// or localhost when binding all interfaces).
    #[arg(long)]
    external_host: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = DATA)]
pub struct ExecutorArgs {
    /// The scheduler to join, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// Address to listen on; other executors fetch shuffle data from it.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The name other executors reach this one by (default: the bind
    /// address, or, when binding all interfaces, the address the scheduler
    /// sees this executor connect from).
    #[arg(long)]
    external_host: Option<String>,
    /// Port for shuffle data (Arrow Flight).
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Port for task requests from the scheduler.
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Where shuffle files are written.
    #[arg(long)]
    work_dir: PathBuf,
    /// Tasks run at once (default: the machine's cores).
    #[arg(long)]
    concurrent_tasks: Option<usize>,
}

pub async fn run_scheduler(args: SchedulerArgs) -> Result<()> {
    let external = args.external_host.unwrap_or_else(|| match args.bind.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        ip => ip.to_string(),
    });
    scheduler(args.bind, external).await
}

pub async fn run_executor(args: ExecutorArgs) -> Result<()> {
    let Some((host, port)) = args.scheduler.rsplit_once(':') else {
        bail!("--scheduler {}: expected HOST:PORT", args.scheduler);
    };
    let Ok(port) = port.parse::<u16>() else {
        bail!(
            "--scheduler {}: port '{port}' is not a number",
            args.scheduler
        );
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    executor(ExecutorSettings {
        scheduler: (host.to_string(), port),
        bind: args.bind,
        external_host: args
            .external_host
            .or_else(|| (!args.bind.is_unspecified()).then(|| args.bind.to_string())),
        port: args.port,
        grpc_port: args.grpc_port,
        work_dir: args.work_dir,
        concurrent_tasks: args.concurrent_tasks.unwrap_or(cores).max(1),
    })
    .await
}
