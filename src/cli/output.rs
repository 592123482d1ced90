//! Writing query results: a pretty table, CSV, JSON lines, or a Parquet file.

use std::io::Write;
use std::path::{Path, PathBuf};
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

/// `n` and its noun, singular for one: "1 pair", "6 pairs".
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
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

/// A file written under a hidden name beside its destination and renamed
/// over it once complete, so a failed write leaves neither a partial file
/// nor the old one half overwritten. The hidden file is created first: a
/// place that cannot be written fails in the OS's words before any work,
/// not in a writer's (an image encoder nested the error; DataFusion's local
/// writer, where creating a file fails with "not found" although the
/// directory exists, as in /proc, retried without end at full CPU).
pub struct WrittenBeside<'a> {
    pub tmp: PathBuf,
    out: &'a Path,
    what: &'static str,
}

impl<'a> WrittenBeside<'a> {
    /// `what` names the file in errors: "image", "result".
    pub fn create(out: &'a Path, what: &'static str) -> Result<Self> {
        // `.NAME.PID.tmp.EXT` beside `out`: the extension kept, since it
        // picks the image format.
        let name = out.file_name().unwrap_or_default().to_string_lossy();
        let ext = out.extension().unwrap_or_default().to_string_lossy();
        let tmp = out.with_file_name(format!(".{name}.{}.tmp.{ext}", std::process::id()));
        std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot write the {what}", out.display()))?;
        Ok(Self { tmp, out, what })
    }

    /// Renames the hidden file over the destination if `written` is Ok;
    /// else removes it and returns the error.
    pub fn finish(self, written: Result<()>) -> Result<()> {
        let (out, what) = (self.out.display(), self.what);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e).with_context(|| format!("{out}: writing the {what}"));
        }
        std::fs::rename(&self.tmp, self.out)
            .with_context(|| format!("{out}: cannot move the finished {what} into place"))
    }
}

/// Writes the result to one Parquet file, atomically ([`WrittenBeside`]).
pub async fn write_parquet(df: DataFrame, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!("{}: output directory does not exist", dir.display());
    }
    path.file_name().context("output path has no file name")?;
    let file = WrittenBeside::create(path, "result")?;
    let options = DataFrameWriteOptions::new().with_single_file_output(true);
    let written = df
        .write_parquet(&file.tmp.display().to_string(), options, None)
        .await;
    file.finish(written.map(drop).map_err(Into::into))
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(counted(1, "pair"), "1 pair");
        assert_eq!(counted(0, "step"), "0 steps");
        assert_eq!(counted(39, "pair"), "39 pairs");
    }
}
