//! `uqcast`: ERA5 forecasts with honest uncertainty, as SQL tables and Parquet.
//!
//! Thin entry point: parse the command line, install logging, run one
//! command, and turn any error into a one-line message and a non-zero exit.

mod cli;
mod job;
mod pipeline;
mod session;
mod time;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    uqcast_hyperdm::startup::prepare();
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UQCAST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes, outermost first.
            let causes: Vec<String> = e
                .chain()
                .map(|c| {
                    c.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            eprintln!("error: {}", dedupe(causes).join(": "));
            ExitCode::FAILURE
        }
    }
}

/// Drops causes already spelled out by the cause above them.
fn dedupe(causes: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in causes {
        if !out.last().is_some_and(|prev| prev.contains(&c)) {
            out.push(c);
        }
    }
    out
}
