//! Errors of the synthetic-data generator.

/// What went wrong while configuring or writing synthetic data.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synth option '{field}': {problem}")]
    Config {
        field: &'static str,
        problem: String,
    },

    #[error(transparent)]
    Netcdf(#[from] uqcast_netcdf::NetcdfError),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
