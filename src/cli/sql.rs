//! `uqcast sql "QUERY" | --file FILE.sql --table NAME=PATH ... [--format table|csv|json] [--output FILE.parquet]`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::DFParser;

use super::output::{Format, print, write_parquet};
use crate::session::s3::S3Location;
use crate::session::{TableArg, register_tables};

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query, e.g. "SELECT max(t2m) FROM era5".
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    query: Option<String>,
    /// Read the query from this file (`-`: standard input), e.g. the source
    /// query of a pipeline; a query that begins with a `--` comment cannot
    /// be given on the command line, where it reads as an option.
    #[arg(long, short = 'f', value_name = "FILE.sql")]
    file: Option<PathBuf>,
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

/// The query and what its errors call it ("query", or the file it came
/// from): as given, or read from `--file`; refused before any table is
/// opened where it holds no SQL or a pipeline template's placeholder.
fn query_text(args: &SqlArgs) -> Result<(String, String)> {
    let (text, source) = match (&args.query, &args.file) {
        (Some(query), _) => (query.clone(), "the query".to_string()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("--file -: reading the query from standard input")?;
            (text, "--file - (standard input)".to_string())
        }
        (None, Some(path)) => (
            std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?,
            format!("--file {}", path.display()),
        ),
        (None, None) => bail!("no query: give one, or --file FILE.sql"),
    };
    let sql_lines = text
        .lines()
        .map(|l| l.split("--").next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty() && *l != ";");
    if sql_lines.count() == 0 {
        bail!("{source}: holds no SQL (only blank lines or comments)");
    }
    // Only the flags template's own names: `{{` may be in a string literal.
    let template = crate::job::flags::PLACEHOLDERS;
    if let Some(name) = template.iter().find(|p| text.contains(*p)) {
        bail!(
            "{source}: holds the placeholder {name}: it is a pipeline's flags template, \
             which `uqcast run` fills from the pipeline's [flags]; write the values in"
        );
    }
    let label = match &args.file {
        Some(_) => format!("query ({source})"),
        None => "query".to_string(),
    };
    Ok((text, label))
}

/// Runs every statement of `sql` but the last (a file's `CREATE VIEW`s,
/// say), in order, and returns the last one's result to print or write.
async fn last_statement(ctx: &SessionContext, sql: &str, tables: &[TableArg]) -> Result<DataFrame> {
    let statements = DFParser::parse_sql(sql)?;
    let count = statements.len();
    let mut last = None;
    for (i, statement) in statements.into_iter().enumerate() {
        let which = || format!("statement {} of {count}", i + 1);
        let planned = ctx.state().statement_to_plan(statement).await;
        let frame = match planned {
            Ok(plan) => ctx.execute_logical_plan(plan).await,
            Err(e) => Err(e),
        };
        let frame = match frame.map_err(|e| missing_table(e.into(), tables)) {
            Err(e) if count > 1 => return Err(e.context(which())),
            frame => frame?,
        };
        if i + 1 < count {
            frame
                .collect()
                .await
                .map_err(|e| anyhow::Error::from(e).context(which()))?;
        } else {
            last = Some(frame);
        }
    }
    last.context("no SQL statement")
}

/// A query that reads a table no `--table` gave fails in DataFusion with
/// only "table 'datafusion.public.era5' not found": this says which tables
/// were given and how to give the missing one.
fn missing_table(e: anyhow::Error, tables: &[TableArg]) -> anyhow::Error {
    let text = format!("{e:#}");
    let Some((_, rest)) = text.split_once("table '") else {
        return e;
    };
    // The name ends at the next quote, which "not found" must follow
    // ("table 'era5': x.nc: variable 't2m' not found" is another error).
    let Some((qualified, after)) = rest.split_once('\'') else {
        return e;
    };
    if !after.starts_with(" not found") {
        return e;
    }
    // DataFusion qualifies the name with its default catalog and schema.
    let name = qualified
        .strip_prefix("datafusion.public.")
        .unwrap_or(qualified)
        .to_string();
    let given: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let given = if given.is_empty() {
        "none".to_string()
    } else {
        given.join(", ")
    };
    e.context(format!(
        "table {name} is not among the tables given ({given}): add --table {name}=PATH \
         (a NetCDF or Parquet file, folder or glob)"
    ))
}

pub async fn run(args: SqlArgs) -> Result<()> {
    let (query, label) = query_text(&args)?;
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
        Some(url) => crate::cluster::failure(&label, url, e),
        None => e.context(label.clone()),
    };
    let df = last_statement(&ctx, &query, &args.tables)
        .await
        .map_err(failed)?;
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
                Some(named) => Err(named.context(label)),
                None => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(e: &str, tables: &[&str]) -> String {
        let tables: Vec<TableArg> = tables
            .iter()
            .map(|t| format!("{t}=x").parse().unwrap())
            .collect();
        format!("{:#}", missing_table(anyhow::anyhow!("{e}"), &tables))
    }

    #[test]
    fn a_table_not_given_is_named_with_the_tables_that_were() {
        let plan = "Error during planning: table 'datafusion.public.era5' not found";
        assert_eq!(
            said(plan, &["forecast", "flags"]),
            format!(
                "table era5 is not among the tables given (forecast, flags): add --table \
                 era5=PATH (a NetCDF or Parquet file, folder or glob): {plan}"
            )
        );
        assert!(said(plan, &[]).contains("tables given (none)"));
    }

    #[test]
    fn other_errors_that_quote_a_table_are_left_alone() {
        for e in [
            "table 'era5': x.nc: variable 't2m' not found",
            "table 'era5': x.nc: cannot open as NetCDF",
            "Schema error: No field named t3m",
        ] {
            assert_eq!(said(e, &["era5"]), e);
        }
    }
}
