//! Scores that check forecasts and their uncertainty against the truth.
//!
//! - [`ensemble`]: CRPS (fair and classic from samples, also for members
//!   that share their sampling noise or scored one by one; closed form for
//!   a Gaussian), the spread–skill ratio and the rank histogram;
//! - [`field`]: PSNR, SSIM and latitude-weighted RMSE of whole fields;
//! - [`detection`]: AUROC and AUPRC of a score for a binary label (EU for
//!   out-of-distribution cells);
//! - [`correlation`]: Pearson correlation (AU map vs the true noise map);
//! - [`sql`]: the same scores as DataFusion functions for analysts.
//!
//! Every function takes plain `f64` slices and returns `None` where the score
//! is undefined (empty input, one class only, a field smaller than the
//! window), so callers decide how to report it.

pub mod correlation;
pub mod detection;
pub mod ensemble;
pub mod field;
pub mod sql;

pub use correlation::pearson;
pub use detection::{auprc, auroc};
pub use ensemble::{
    CrpsEstimator, crps_common_noise, crps_ensemble, crps_gaussian, crps_member_mean, rank_deciles,
    rank_histogram, spread_skill,
};
pub use field::{AreaWeight, psnr, ssim, weighted_rmse};
