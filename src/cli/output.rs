//! Writing query results: a pretty table, CSV, JSON lines, or a Parquet file.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::DataFrame;
use futures::StreamExt;

/// Creates the folder a command writes into (`option` names where it came
/// from), saying which file is in the way when one is: the OS says only
/// "Not a directory", about a path below it.
pub fn make_dir(dir: &Path, option: &str) -> Result<()> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        if let Some(file) = dir.ancestors().find(|a| a.is_file()) {
            anyhow::bail!(
                "{option} {}: {} is a file, not a folder",
                dir.display(),
                file.display()
            );
        }
        return Err(e).with_context(|| format!("{option} {}: cannot create", dir.display()));
    }
    Ok(())
}

/// Set once a write to standard output found its reader gone.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output for every command's results. A reader that stops early
/// (`uqcast sql … | head`) closes the pipe; the write then fails with
/// "Broken pipe", which the libraries wrap in their own errors (arrow's CSV
/// writer keeps only its text), so it is noted here, where its kind is known,
/// and the command ends quietly and successfully, as `cat` or `grep` do.
pub fn stdout() -> PipeAware<std::io::StdoutLock<'static>> {
    PipeAware(std::io::stdout().lock())
}

/// Whether standard output's reader has gone.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// A writer that notes a broken pipe (see [`stdout`]).
#[derive(Debug)]
pub struct PipeAware<W>(W);

impl<W: Write> PipeAware<W> {
    fn note<T>(result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl<W: Write> Write for PipeAware<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::note(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::note(self.0.flush())
    }
}

/// How `uqcast sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table with a header.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Streams the result to stdout in `format` (CSV and JSON never hold more
/// than one batch; the table needs all rows to size its columns).
pub async fn print(df: DataFrame, format: Format) -> Result<()> {
    let mut out = stdout();
    match format {
        Format::Table => {
            let batches = df.collect().await?;
            writeln!(out, "{}", pretty_format_batches(&batches)?)?;
        }
        Format::Csv => {
            let mut stream = df.execute_stream().await?;
            let mut writer = WriterBuilder::new().with_header(true).build(&mut out);
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
            }
        }
        Format::Json => {
            let mut stream = df.execute_stream().await?;
            let mut writer = LineDelimitedWriter::new(&mut out);
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
            }
            writer.finish()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Writes the result to one Parquet file, atomically: a temporary file in
/// the same directory is renamed over `path` only once complete.
pub async fn write_parquet(df: DataFrame, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!("{}: output directory does not exist", dir.display());
    }
    let name = path
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp.parquet", std::process::id()));
    // Created here first, so a place that cannot be written fails in the
    // OS's words before the query runs. DataFusion's local writer cannot
    // tell it: where creating a file there fails with "not found" although
    // the directory exists (/proc), it retried without end at full CPU.
    std::fs::File::create(&tmp)
        .with_context(|| format!("{}: cannot write the result", path.display()))?;
    let options = DataFrameWriteOptions::new().with_single_file_output(true);
    let written = df
        .write_parquet(&tmp.display().to_string(), options, None)
        .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: writing Parquet", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "{}: cannot move the finished file into place",
            path.display()
        )
    })
}
