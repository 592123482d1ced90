//! `uqcast run --config P [...]`: the scheduled forecast job. Prints one
//! summary line (`uqcast run: ok new_steps=… …`) for schedulers; exits
//! non-zero on any error, keeping every step already written. With
//! `--dry-run`, says what it would do (`uqcast run --dry-run: ok
//! would_forecast=… …`) and writes nothing.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::job::{RunOptions, describe, run as run_job};
use crate::pipeline::Pipeline;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline (TOML).
    #[arg(long)]
    config: PathBuf,
    /// ERA5 NetCDF file, directory or glob (default: the pipeline's source.path).
    #[arg(long)]
    input: Option<String>,
    /// Output directory (default: the pipeline's output.dir).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Model checkpoint (default: the pipeline's model.checkpoint).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Only initial times at or after this time (RFC 3339 or YYYY-MM-DDTHH:MMZ).
    #[arg(long, value_parser = crate::time::parse_utc_arg)]
    since: Option<i64>,
    /// Only initial times at or before this time.
    #[arg(long, value_parser = crate::time::parse_utc_arg)]
    until: Option<i64>,
    /// Read the input of the steps forecast within this many days of the
    /// newest again, and forecast again those whose input changed (ERA5T
    /// replaced by final ERA5); default: the pipeline's source.recheck_days.
    #[arg(long, value_name = "DAYS")]
    recheck_days: Option<u32>,
    /// Forecast on a Ballista cluster (`uqcast scheduler`), df://HOST:PORT:
    /// executors sample different steps at once. They read the input and
    /// the model at the same paths; the output is written from here.
    #[arg(long, value_name = "df://HOST:PORT")]
    ballista: Option<String>,
    /// Check everything a run checks and say which steps it would
    /// forecast, forecast again and flag, sampling and writing nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: RunArgs) -> Result<()> {
    crate::time::check_span(args.since, args.until)?;
    let pipeline = Pipeline::load(&args.config)?;
    let options = RunOptions {
        input: args.input,
        output: args.output.clone(),
        model: args.model,
        since: args.since,
        until: args.until,
        recheck_days: args.recheck_days,
        ballista: args.ballista,
    };
    let out = args
        .output
        .unwrap_or_else(|| pipeline.resolve(&pipeline.output.dir));
    if args.dry_run {
        let plan = crate::job::dry_run::plan(&pipeline, &options).await?;
        let said = [
            ("would forecast", &plan.new),
            ("would forecast again (input revised)", &plan.revised),
        ];
        for (what, steps) in said {
            for span in crate::job::dry_run::spans(steps, plan.spacing) {
                eprintln!("{what}: valid {span}");
            }
        }
        let fields = crate::job::dry_run::describe(&plan, &out);
        writeln!(super::output::stdout(), "uqcast run --dry-run: ok {fields}")?;
        return Ok(());
    }
    let summary = run_job(&pipeline, &options).await?;
    writeln!(
        super::output::stdout(),
        "uqcast run: ok {}",
        describe(&summary, &out)
    )?;
    Ok(())
}
