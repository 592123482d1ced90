//! ERA5 NetCDF as a streaming DataFusion table.
//!
//! Both encodings the Copernicus Climate Data Store serves read to the same
//! rows: legacy NetCDF3 (`time` in hours since 1900, packed int16) and
//! NetCDF4/HDF5 (`valid_time` in seconds since 1970, zlib float32). The table
//! streams one step at a time and pushes projection, time and lat/lon filters
//! and limits into the read.
//!
//! ```no_run
//! # async fn demo() -> datafusion::error::Result<()> {
//! use std::sync::Arc;
//! use datafusion::prelude::SessionContext;
//! use uqcast_netcdf::Era5TableProvider;
//!
//! let table = Era5TableProvider::try_new(&["data/*.nc".to_string()], None)?;
//! let ctx = SessionContext::new();
//! ctx.register_table("era5", Arc::new(table))?;
//! ctx.sql("SELECT max(t2m) FROM era5 WHERE latitude > 60").await?.show().await?;
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod cf;
pub mod chunks;
pub mod classic;
pub mod classic_reads;
pub mod copies;
pub mod error;
pub mod exec;
pub mod expver;
pub mod fatal;
pub mod global_heap;
pub(crate) mod hdf5_ffi;
pub mod inspect;
pub mod io_thread;
pub mod kept_inspections;
pub mod names;
pub mod plausible;
pub mod provider;
pub mod pushdown;
pub mod ranged;
pub mod reader;
pub mod runs;
pub mod schema;
pub mod scratch;
pub mod sniff;
pub mod spec;
pub mod step_filters;
pub mod steps_input;
pub mod stream;
pub mod times_left_out;
pub mod writer;

pub use catalog::Catalog;
pub use copies::LocalCopies;
pub use error::{NetcdfError, Result};
pub use exec::NetcdfExec;
pub use names::FileNames;
pub use provider::{Era5TableProvider, StepsAsInput};
pub use schema::era5_schema;
pub use times_left_out::TimesLeftOut;
pub use writer::{Encoding, Grid, GridVariable, write_era5};
