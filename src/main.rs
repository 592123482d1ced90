//! `uqcast`: ERA5 forecasts with honest uncertainty, as SQL tables and Parquet.
//!
//! Thin entry point: parse the command line, install logging, run one
//! command, and turn any error into a one-line message and a non-zero exit.

mod cli;
mod cluster;
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
                .unwrap_or_else(|_| args.default_log_level().into()),
        )
        .with_writer(std::io::stderr)
        .init();
    quiet_task_panics();
    // A crash inside libnetcdf names an S3 object's copy by its URL, as
    // errors do.
    uqcast_netcdf::fatal::name_files_with(session::s3::in_urls);
    // Checked before any work, as every setting is; read again where used.
    if let Err(problem) = uqcast_netcdf::fatal::limits()
        .map(drop)
        .and_then(|()| session::memory::limit_bytes().map(drop))
    {
        eprintln!("error: {problem}");
        return ExitCode::FAILURE;
    }
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
        // The reader of the results stopped early (`| head`): not a failure.
        Err(_) if cli::output::stdout_closed() => ExitCode::SUCCESS,
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
            // Errors about an s3:// table's local copies name the objects.
            let mut line = session::s3::in_urls(&one_line(causes));
            // DataFusion's advice names its own settings, not uqcast's.
            if line.contains("Resources exhausted") {
                let limit = session::memory::limit_bytes().unwrap_or_default() as f64 / 1e9;
                line.push_str(&format!(
                    " (uqcast: a query's sorts, aggregations and joins may hold {limit:.2} GB; \
                     {} sets it)",
                    session::memory::LIMIT_VAR
                ));
            }
            eprintln!("error: {}", uqcast_netcdf::error::escape_controls(&line));
            exit_failed()
        }
    }
}

/// A panic in a runtime task (the parquet crate on a damaged page) comes
/// back as that task's error and is printed with the others, on one line;
/// the default report (several lines, before it) is kept for other threads.
/// `UQCAST_LOG=debug` logs where a task panicked, with a backtrace.
fn quiet_task_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_task = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-"));
        if in_task {
            tracing::debug!(
                "a task panicked: {info}\n{}",
                std::backtrace::Backtrace::force_capture()
            );
        } else {
            default(info);
        }
    }));
}

/// Exits with status 1 without the C libraries' exit handlers. After
/// libnetcdf fails to open a corrupt NetCDF4 file, HDF5 keeps objects it
/// cannot close, and its exit handler then prints dozens of lines
/// ("HDF5: infinite loop closing library") after the one-line error. A
/// failed command has nothing left for those handlers to do: every file it
/// wrote was closed when its owner dropped, before `run` returned.
fn exit_failed() -> ExitCode {
    use std::io::Write;
    let flushed = std::io::stdout().flush().is_ok() && std::io::stderr().flush().is_ok();
    if !flushed {
        return ExitCode::FAILURE;
    }
    // SAFETY: `_exit` ends the process at once; Rust's own buffers were
    // flushed above and no Rust destructor is needed past this point.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(1)
    }
}

/// Drops causes already spelled out by the cause above them, a part said
/// twice in a row (DataFusion wraps a parquet error whose own text begins
/// "Parquet error:" in another "Parquet error:"), and DataFusion's
/// "External error:", which says only that the error came from our code.
fn one_line(causes: Vec<String>) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in causes {
        if out.last().is_some_and(|prev| prev.contains(&c)) {
            continue;
        }
        // A wrapper that quotes its source's message in Debug form
        // (DataFusion's `SQL error: ParserError("…")`) gives way to the
        // source, which says the same in plain words.
        let message = c.split_once(": ").map_or(c.as_str(), |(_, m)| m);
        if let Some(prev) = out.last_mut()
            && prev.contains(&format!("(\"{message}\")"))
        {
            *prev = c;
            continue;
        }
        out.push(c);
    }
    let mut parts: Vec<&str> = Vec::new();
    let joined = out.join(": ");
    for part in joined.split(": ") {
        if parts.last() != Some(&part) && part != "External error" {
            parts.push(part);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_says_each_cause_once() {
        let causes = |v: &[&str]| one_line(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            causes(&[
                "table 't': a.parquet",
                "Parquet error: Parquet error: Unexpected struct field type 15",
            ]),
            "table 't': a.parquet: Parquet error: Unexpected struct field type 15"
        );
        assert_eq!(
            causes(&["External error: source query: no column t2m"]),
            "source query: no column t2m"
        );
        assert_eq!(
            causes(&[
                "query",
                "SQL error: ParserError(\"Expected: an SQL statement, found: SELEKT\")",
                "sql parser error: Expected: an SQL statement, found: SELEKT",
            ]),
            "query: sql parser error: Expected: an SQL statement, found: SELEKT"
        );
        // A cause the one above already quotes is not repeated.
        assert_eq!(
            causes(&["x.nc: no variable t2m", "no variable t2m"]),
            "x.nc: no variable t2m"
        );
        // Different parts stay, in order; a part ending one cause and
        // beginning the next is said once.
        assert_eq!(causes(&["a: b", "c"]), "a: b: c");
        assert_eq!(causes(&["a: b", "b: c"]), "a: b: c");
    }
}
