//! Errors of the NetCDF operator. Every variant names the file and the field
//! (variable, attribute or dimension) so a user can act on the one-line message.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = NetcdfError> = std::result::Result<T, E>;

/// What went wrong while finding, opening, decoding or writing ERA5 NetCDF files.
#[derive(Debug, thiserror::Error)]
pub enum NetcdfError {
    #[error("{path}: no such file, directory or glob match")]
    NotFound { path: String },

    /// `hint` is empty, or says which subfolders hold files (a directory is
    /// not searched below its own files).
    #[error("{path}: no NetCDF files (*.nc) in this directory or glob{hint}")]
    NoFiles { path: String, hint: String },

    /// A serialised scan or table rebuilt where its files no longer match
    /// what it was planned over (changed since, or different on this machine).
    #[error(
        "{files}: {problem}; the files changed since the query was planned, or differ on this machine"
    )]
    Replanned { files: String, problem: String },

    #[error("{path}: cannot list: {source}")]
    List {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// `what`: what the file's first bytes say it is, or a guess.
    #[error("{}: cannot open as NetCDF ({what}): {source}", path.display())]
    Open {
        path: PathBuf,
        what: String,
        #[source]
        source: netcdf::Error,
    },

    /// The netcdf crate gave up on a file (it unwraps libnetcdf errors in
    /// places, e.g. listing variables): caught on the I/O thread.
    #[error("{}: libnetcdf failed on it (corrupt file?): {problem}", path.display())]
    Library { path: PathBuf, problem: String },

    #[error("{}: corrupt or truncated NetCDF header: {problem}", path.display())]
    CorruptHeader { path: PathBuf, problem: String },

    #[error("{}: truncated: the header needs {expected} bytes of data, the file has {found}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    #[error("{}: cannot read variable '{variable}' (file truncated or corrupt?): {source}", path.display())]
    Read {
        path: PathBuf,
        variable: String,
        #[source]
        source: netcdf::Error,
    },

    #[error(
        "{}: {variable} at {time}, latitude {latitude}, longitude {longitude} is {value} K, \
         outside the {low}…{high} K a 2 m temperature can be (values in °C or °F under units \"K\"?)",
        path.display()
    )]
    Implausible {
        path: PathBuf,
        variable: String,
        time: String,
        latitude: f64,
        longitude: f64,
        value: f32,
        low: f32,
        high: f32,
    },

    #[error("{}: variable '{variable}' not found{}", path.display(), hint_available(available))]
    MissingVariable {
        path: PathBuf,
        variable: String,
        available: Vec<String>,
    },

    #[error("{}: no {axis} dimension (looked for {candidates})", path.display())]
    MissingAxis {
        path: PathBuf,
        axis: &'static str,
        candidates: &'static str,
    },

    #[error("{}: variable '{variable}' has dimensions ({found}); expected ({expected}){}", path.display(), hint_extra_dimension(found))]
    Dimensions {
        path: PathBuf,
        variable: String,
        expected: String,
        found: String,
    },

    #[error("{}: variable '{variable}' has type {found}, which uqcast cannot decode ({expected})", path.display())]
    UnsupportedType {
        path: PathBuf,
        variable: String,
        expected: &'static str,
        found: String,
    },

    #[error("{}: attribute '{variable}:{attribute}': {problem}", path.display())]
    Attribute {
        path: PathBuf,
        variable: String,
        attribute: String,
        problem: String,
    },

    #[error("{}: coordinate '{variable}' has no value at index {index} (it holds the fill value {fill}: never written, or the file was cut short while being written)", path.display())]
    Unwritten {
        path: PathBuf,
        variable: String,
        index: usize,
        fill: f64,
    },

    #[error("{}: coordinate '{variable}' claims {entries} values, more than the {limit} an axis may have (a damaged file?)", path.display())]
    AxisTooLong {
        path: PathBuf,
        variable: String,
        entries: usize,
        limit: usize,
    },

    #[error("{}: coordinate '{variable}' is not strictly monotonic at index {index}", path.display())]
    NotMonotonic {
        path: PathBuf,
        variable: String,
        index: usize,
    },

    #[error("{}: grid differs from {}: coordinate '{variable}' {detail}", path.display(), reference.display())]
    GridMismatch {
        path: PathBuf,
        reference: PathBuf,
        variable: String,
        detail: String,
    },

    #[error("{}: valid_time {time} also occurs in {} (duplicate step)", path.display(), other.display())]
    DuplicateStep {
        path: PathBuf,
        other: PathBuf,
        time: String,
    },

    #[error("{}: cannot write variable '{variable}': {source}", path.display())]
    Write {
        path: PathBuf,
        variable: String,
        #[source]
        source: netcdf::Error,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn hint_available(available: &[String]) -> String {
    if available.is_empty() {
        String::new()
    } else {
        format!(" (gridded variables present: {})", available.join(", "))
    }
}

/// What an extra dimension the CDS adds means, and how to get a file
/// without it.
fn hint_extra_dimension(found: &str) -> &'static str {
    let has = |name: &str| found.split(", ").any(|d| d == name);
    if has("expver") {
        "; the expver dimension mixes final ERA5 with preliminary ERA5T (the legacy CDS \
         NetCDF of a request reaching the last three months), and is read where the CDS \
         put it, second: (time, expver, latitude, longitude)"
    } else if has("number") {
        "; the number dimension holds ensemble members (ERA5's EDA): request the \
         reanalysis (product type reanalysis), one value per cell"
    } else {
        ""
    }
}

/// `text` with its control characters escaped (`\u{1b}`): an error may
/// quote bytes of a damaged file, which must neither break its line nor
/// reach the terminal as escape sequences.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl From<NetcdfError> for datafusion::error::DataFusionError {
    fn from(e: NetcdfError) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("units 'hours since 1\u{1c}00' \u{1b}[31mred é"),
            "units 'hours since 1\\u{1c}00' \\u{1b}[31mred é"
        );
    }
}
