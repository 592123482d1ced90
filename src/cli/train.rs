//! `uqcast train --config P [--input PATH] [--out MODEL]`: trains the
//! pipeline's HyperDM field model on (t, t + lead) pairs of the source table.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use uqcast_forecast::assemble::{SourceColumns, StepAssembler, check_source_columns};
use uqcast_forecast::{ModelGrid, PackedStep, StepField};

use super::output::counted;
use crate::job::{empty_source, source_sql, timestamp_sql};
use crate::pipeline::Pipeline;
use crate::session::s3::{self, S3Location};
use crate::session::{context_with_table, memory};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The pipeline (TOML).
    #[arg(long)]
    config: PathBuf,
    /// ERA5 NetCDF file, directory or glob (default: the pipeline's source.path).
    #[arg(long)]
    input: Option<String>,
    /// Checkpoint to write (default: the pipeline's model.checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override train.iterations.
    #[arg(long)]
    iterations: Option<u64>,
    /// Only steps at or after this time.
    #[arg(long, value_parser = crate::time::parse_utc_arg)]
    since: Option<i64>,
    /// Only steps at or before this time.
    #[arg(long, value_parser = crate::time::parse_utc_arg)]
    until: Option<i64>,
    /// Override train.max_pairs: train on at most this many pairs, drawn
    /// evenly over the span, reading and holding only their steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_pairs: Option<u64>,
}

/// How a step read is held: packed for training ([`PackedStep`], 2 bytes a
/// cell), or as read to be forecast ([`StepField`], 4).
pub trait HeldStep: Sized {
    /// What one source row takes once held, for checks made before
    /// anything is read.
    const BYTES_PER_ROW: u64;
    fn hold(step: StepField) -> Self;
    fn time(&self) -> i64;
}

impl HeldStep for PackedStep {
    const BYTES_PER_ROW: u64 = uqcast_forecast::packed::BYTES_PER_CELL;
    fn hold(step: StepField) -> Self {
        PackedStep::pack(&step)
    }
    fn time(&self) -> i64 {
        self.time
    }
}

impl HeldStep for StepField {
    const BYTES_PER_ROW: u64 = size_of::<f32>() as u64;
    fn hold(step: StepField) -> Self {
        step
    }
    fn time(&self) -> i64 {
        self.time
    }
}

/// Reads every step the source query returns, as whole steps on the grid
/// of the first step read (every step must have its cells), each held as
/// `S`.
///
/// Steps are assembled as the rows stream by, so a span takes what its
/// steps take held (`S::BYTES_PER_ROW` a row) and the steps still
/// incomplete. That counts against the memory a query may hold
/// ([`memory::LIMIT_VAR`]): a span too long for the machine ends in one
/// line saying how far the reading got and how to ask for less (`fewer`),
/// rather than in the kernel's out-of-memory kill.
pub async fn read_steps<S: HeldStep>(
    ctx: &SessionContext,
    location: &str,
    sql: &str,
    fewer: &str,
) -> Result<(ModelGrid, Vec<S>)> {
    let df = ctx.sql(sql).await.context("source query")?;
    check_source_columns(df.schema().as_arrow())?;
    let reservation = MemoryConsumer::new("uqcast: the source steps read for training")
        .register(&ctx.runtime_env().memory_pool);
    let mut stream = df.execute_stream().await.context("source query")?;
    let first = loop {
        match stream.next().await {
            None => return Ok((ModelGrid::from_coordinates([], []), Vec::new())),
            Some(b) => {
                let b = b.context("source query")?;
                if b.num_rows() > 0 {
                    break b;
                }
            }
        }
    };
    let (first_time, ..) = SourceColumns::of(&first)?.row(0)?;
    let grid = grid_of_step(ctx, sql, first_time).await?;
    let mut assembler = StepAssembler::with_cells_of(grid.clone(), first_time);
    let mut steps: Vec<S> = assembler.push(&first)?.into_iter().map(S::hold).collect();
    let step_bytes = grid.cells() * S::BYTES_PER_ROW as usize;
    while let Some(b) = stream.next().await {
        let completed = assembler.push(&b.context("source query")?)?;
        steps.extend(completed.into_iter().map(S::hold));
        let needed = steps.len() * step_bytes + assembler.open_bytes();
        if reservation.try_resize(needed).is_err() {
            let limit = memory::limit_bytes().unwrap_or_default();
            bail!(
                "{location}: the training span does not fit in the memory a query may hold \
                 here: the {} steps read so far ({} cells each), with those still incomplete, \
                 take {} of the {} limit ({}, default half of the memory), which holds at most \
                 {} such steps; {fewer}",
                steps.len(),
                grid.cells(),
                memory::amount(needed as u64),
                memory::amount(limit),
                memory::LIMIT_VAR,
                limit.checked_div(step_bytes as u64).unwrap_or_default(),
            );
        }
    }
    assembler.finish()?;
    steps.sort_by_key(S::time);
    tracing::debug!(
        "{location}: {} steps of {} cells held in {}",
        steps.len(),
        grid.cells(),
        memory::amount((steps.len() * step_bytes) as u64)
    );
    Ok((grid, steps))
}

/// The grid of the cells the source query returns for the step valid at
/// `time` (a NetCDF scan reads only that step).
async fn grid_of_step(ctx: &SessionContext, sql: &str, time: i64) -> Result<ModelGrid> {
    let query = format!(
        "SELECT latitude, longitude FROM ({sql}) AS source WHERE valid_time = {}",
        timestamp_sql(time)
    );
    let batches = ctx
        .sql(&query)
        .await
        .context("source query")?
        .collect()
        .await
        .context("source query")?;
    let (mut latitudes, mut longitudes) = (Vec::new(), Vec::new());
    for b in &batches {
        for (name, into) in [("latitude", &mut latitudes), ("longitude", &mut longitudes)] {
            let column = cast(b.column(b.schema().index_of(name)?), &DataType::Float64)
                .with_context(|| format!("source query: column '{name}'"))?;
            into.extend(column.as_primitive::<Float64Type>().iter().flatten());
        }
    }
    Ok(ModelGrid::from_coordinates(latitudes, longitudes))
}

pub async fn run(args: TrainArgs) -> Result<()> {
    crate::time::check_span(args.since, args.until)?;
    let pipeline = Pipeline::load(&args.config)?;
    let location = args
        .input
        .clone()
        .unwrap_or_else(|| pipeline.source_location());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| pipeline.resolve(&pipeline.model.checkpoint));
    if !crate::pipeline::is_checkpoint_name(&out) {
        anyhow::bail!(
            "{}: --out needs a .safetensors file name (the weights; the metadata is written beside it as .json)",
            out.display()
        );
    }
    // Into a bucket: trained here as files (and resumable from them), then
    // stored. The credentials, and that the bucket takes objects there, are
    // checked before any training.
    let (out, bucket) = match S3Location::parse(&out.to_string_lossy())? {
        Some(remote) => {
            let staged = s3::staged_model(&remote).with_context(|| remote.to_string())?;
            s3::check_storable(&remote).await?;
            (staged, Some(remote))
        }
        None => (out, None),
    };
    let method = pipeline.method()?;
    pipeline.check_training_fits(&method, crate::session::memory::process_memory())?;
    let ctx = context_with_table("era5", location.clone()).await?;
    let query = source_sql(&pipeline, None, None)?;
    crate::job::source_check::check(&ctx, &pipeline, &query).await?;
    let sql = source_sql(&pipeline, args.since, args.until)?;
    let max_pairs = args.max_pairs.map(|n| n as usize);
    let drawn = match max_pairs.or(pipeline.train.max_pairs) {
        Some(max) => {
            let span = (args.since, args.until);
            let queries = (query.as_str(), sql.as_str());
            super::train_pairs::drawn(&ctx, &pipeline, queries, span, max).await?
        }
        None => None,
    };
    let (sample, read) = match drawn {
        Some((sample, read)) => (Some(sample), read),
        None => (None, sql.clone()),
    };
    let (grid, steps) = read_steps::<PackedStep>(
        &ctx,
        &location,
        &read,
        "train on fewer steps (--since, --until) or pairs (--max-pairs, train.max_pairs)",
    )
    .await?;
    if steps.is_empty() {
        if empty_source::is_empty(&ctx, &query).await? {
            return Err(empty_source::error(&ctx, &pipeline, &location).await);
        }
        anyhow::bail!("{location}: no step between --since and --until");
    }
    // Made once there is something to train on.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("model directory {}", dir.display()))?;
    }
    let mut settings = pipeline.field_training(method);
    if let Some(n) = args.iterations {
        settings.train.iterations = n;
    }
    let drawn = match &sample {
        Some(s) => format!(
            " ({} drawn from the span's {})",
            counted(s.starts.len() as u64, "pair"),
            s.in_span
        ),
        None => String::new(),
    };
    settings.sample = sample;
    eprintln!(
        "training on {} of {} from {location}{drawn}; {} of {} cells each",
        counted(steps.len() as u64, "step"),
        grid.describe(),
        counted(settings.train.iterations, "update"),
        settings.train.batch_size
    );
    let interactive = std::io::stderr().is_terminal();
    let source = location.clone();
    let out_path = out.clone();
    let span = tokio::task::spawn_blocking(move || {
        let device = uqcast_hyperdm::default_device()?;
        let progress = |p: uqcast_hyperdm::Progress| {
            let done = p.iteration as f64 / p.iterations.max(1) as f64;
            let bar: String = (0..30)
                .map(|i| if (i as f64) < done * 30.0 { '#' } else { '.' })
                .collect();
            let line = format!(
                "train [{bar}] {}/{} loss {:.4} {:.0} s",
                p.iteration, p.iterations, p.loss, p.elapsed_seconds
            );
            if interactive {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        };
        let notes = |note: &str| eprintln!("{note}");
        uqcast_forecast::model::train(
            &steps, &grid, &settings, &source, &out_path, &device, progress, notes,
        )
        .map_err(anyhow::Error::from)
    })
    .await
    .context("training task failed")??;
    if interactive {
        eprintln!();
    }
    let written = match &bucket {
        Some(remote) => {
            s3::store_model(&out, remote).await?;
            remote.to_string()
        }
        None => out.display().to_string(),
    };
    let mut stdout = super::output::stdout();
    let drawn = match span.pairs_in_span {
        Some(n) => format!(" drawn from the span's {n}"),
        None => String::new(),
    };
    writeln!(
        stdout,
        "wrote {} ({}{drawn} from {} to {}, {} without a partner {} h later skipped, {:.0} s)",
        written,
        counted(span.pairs as u64, "pair"),
        span.first,
        span.last,
        counted(span.unpaired as u64, "step"),
        pipeline.model.lead_hours,
        span.seconds
    )?;
    Ok(())
}
