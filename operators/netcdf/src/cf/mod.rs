//! CF conventions: time axes (`units = "<unit> since <epoch>"`, calendars) and
//! packed/filled data variables (`scale_factor`, `add_offset`, `_FillValue`,
//! `missing_value`, `valid_range`).

pub mod packing;
pub mod time;

pub use packing::{Packing, RawSample};
pub use time::{Calendar, TimeAxis};
