//! Whether a pipeline's training can fit in memory at all, checked before
//! any data is read. A mistyped size (`batch_size = 1000000000`, a
//! hyper-network layer of a million) would otherwise allocate until the
//! allocator aborts or the kernel kills the process, with no word of which
//! setting did it.
//!
//! The figure is a floor, not an estimate: only the largest parts are
//! counted, each at its smallest (four bytes a number), so a setting is
//! refused only where the training could not run on this machine anyway.

use anyhow::{Result, bail};
use uqcast_forecast::features::POSITION_FEATURES;
use uqcast_hyperdm::{HyperForm, Method};

use super::Pipeline;

/// Numbers a trained parameter costs in training: itself, its gradient and
/// AdamW's two moments.
const COPIES_PER_PARAMETER: usize = 4;

impl Pipeline {
    /// Errors, naming the settings, when training with `method` needs more
    /// memory than `available` bytes even at its floor.
    pub fn check_training_fits(&self, method: &Method, available: u64) -> Result<()> {
        let t = &self.train;
        // The cell network: x, the step's embedding and the condition (the
        // patch and the position) in, one value out (`PrimaryMlp`).
        let input = t
            .patch
            .saturating_mul(t.patch)
            .saturating_add(POSITION_FEATURES)
            .saturating_add(t.time_dim)
            .saturating_add(1);
        let widths: Vec<usize> = std::iter::once(input)
            .chain(t.hidden.iter().copied())
            .chain([1])
            .collect();
        let primary = widths
            .windows(2)
            .map(|w| (w[0].saturating_add(1)).saturating_mul(w[1]))
            .fold(0usize, usize::saturating_add);
        // The rank-1 form's generator emits one factor per row and column
        // of each weight matrix and one per bias (`hyper/factors.rs`).
        let factors = widths
            .windows(2)
            .map(|w| w[0].saturating_add(w[1].saturating_mul(2)))
            .fold(0usize, usize::saturating_add);
        // A hyper-network emitting `outputs` numbers: z in, through the
        // hidden layers (and from z straight out with the skip).
        let generator = |outputs: usize| {
            let layers: Vec<usize> = std::iter::once(t.z_dim)
                .chain(t.hyper_hidden.iter().copied())
                .chain([outputs])
                .collect();
            let chain = layers
                .windows(2)
                .map(|w| w[0].saturating_mul(w[1]))
                .fold(0usize, usize::saturating_add);
            let skip = if t.z_skip {
                t.z_dim.saturating_mul(outputs)
            } else {
                0
            };
            chain.saturating_add(skip)
        };
        // What training keeps of it: a hyper-network that emits every
        // weight (the full form; with a shared base when centred), one that
        // emits the factors of a trained base (rank-1), M networks (an
        // ensemble), or one network (MC-Dropout).
        let full = t.hyper_form == HyperForm::Full;
        let trained = match method {
            Method::Hyperdm if full && t.centred => generator(primary).saturating_add(primary),
            Method::Hyperdm if full => generator(primary),
            Method::Hyperdm => generator(factors).saturating_add(primary),
            Method::Ensemble { members } => members.saturating_mul(primary),
            _ => primary,
        };
        // A minibatch's activations, forward only.
        let activations = t
            .batch_size
            .saturating_mul(widths.iter().fold(0usize, |a, w| a.saturating_add(*w)));
        // Anchored training keeps a fixed random matrix A from z to what it
        // anchors (every weight, or the rank-1 form's factors); untrained.
        let anchors = match method {
            Method::Hyperdm if t.anchor > 0.0 => {
                t.z_dim.saturating_mul(if full { primary } else { factors })
            }
            _ => 0,
        };
        let numbers = trained
            .saturating_mul(COPIES_PER_PARAMETER)
            .saturating_add(anchors)
            .saturating_add(activations);
        // The noise schedule: two f64 a step (`Schedule`'s betas and ᾱ).
        let needed = (numbers as u64)
            .saturating_mul(4)
            .saturating_add((t.diffusion_steps as u64).saturating_mul(16));
        if needed > available {
            bail!(
                "pipeline {}: [train] needs at least {:.1} GB of memory to train ({} trained \
                 numbers and their gradients and moments, {} activations of a minibatch of \
                 batch_size = {}), more than the {:.1} GB here; check hidden, hyper_hidden, \
                 z_dim, patch, time_dim, batch_size and diffusion_steps",
                self.file.display(),
                needed as f64 / 1e9,
                trained,
                activations,
                t.batch_size,
                available as f64 / 1e9
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped pipeline fits in a few MB: its floor, by hand, is the
    /// full form's layers (z of 8 through [16, 16] to the 11,393 weights of
    /// a cell network with 1 + 16 + 25 + 4 inputs and three layers of 64,
    /// and the skip from z) four times over, its anchor matrix (8 × 11,393),
    /// 2,048 rows × 239 activations, and 100 diffusion steps of two f64;
    /// the same pipeline in the rank-1 form likewise.
    #[test]
    fn the_shipped_pipeline_fits_and_a_mistyped_size_does_not() {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/era5_t2m_6h.toml");
        let mut pipeline = Pipeline::load(std::path::Path::new(shipped)).unwrap();
        let method = pipeline.method().unwrap();
        let primary = (47 * 64) + (65 * 64) * 2 + 65;
        assert_eq!(primary, 11_393);
        let hyper = 8 * 16 + 16 * 16 + 16 * primary + 8 * primary;
        let anchors = 8 * primary;
        let floor = (4 * (hyper * 4 + anchors + 2048 * (46 + 64 * 3 + 1)) + 100 * 16) as u64;
        pipeline.check_training_fits(&method, floor).unwrap();
        let err = pipeline
            .check_training_fits(&method, floor - 1)
            .unwrap_err();
        assert!(format!("{err}").contains("[train] needs at least"), "{err}");

        // The rank-1 form: its generator emits 624 factors (each layer's
        // inputs and twice its outputs: 46 + 128, 64 + 128, 64 + 128,
        // 64 + 2), from z through [16, 16] and by the skip, and it trains
        // the base of 11,393 weights itself; the anchor matrix is z × factors.
        pipeline.train.hyper_form = HyperForm::Rank1;
        let factors = 174 + 192 + 192 + 66;
        let rank1 = 8 * 16 + 16 * 16 + 16 * factors + 8 * factors + primary;
        let floor = (4 * (rank1 * 4 + 8 * factors + 2048 * 239) + 100 * 16) as u64;
        pipeline.check_training_fits(&method, floor).unwrap();
        assert!(pipeline.check_training_fits(&method, floor - 1).is_err());
        pipeline.train.hyper_form = HyperForm::Full;

        pipeline.train.batch_size = 1_000_000_000;
        let err = pipeline
            .check_training_fits(&method, 24_000_000_000)
            .unwrap_err();
        let text = format!("{err}");
        assert!(
            text.contains("batch_size = 1000000000") && text.contains("more than the 24.0 GB here"),
            "{text}"
        );
    }
}
