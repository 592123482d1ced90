//! The rank-1 form of the hyper-network ([`super::HyperForm::Rank1`]): it
//! generates per-channel factors, not weights. Member z's weight matrix is
//! base ⊙ (1 + r(z))(1 + s(z))ᵀ and its bias base ⊙ (1 + t(z)), with the
//! base shared by every member and trained like a plain network's weights.
//!
//! Why: the full form's members differ only along its last hidden layer
//! (16 directions of ≈ 12,000 weights) and its base fit is learned through
//! the same output weights that carry z. Here every weight of every member
//! differs, by factors on its row and column, while the base sees all of
//! the minibatch's rows (BatchEnsemble, Wen et al. 2020, with the members'
//! factors drawn from z; the paper's "per-channel weights" direction).

use candle_core::Tensor;

use crate::error::{CandleContext, Result};
use crate::layout::ParamLayout;

/// One primary tensor and where its factors sit in the generated vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Block {
    /// A weight `[rows, cols]` (trailing axes folded into `cols`): factors
    /// r at `at` (`rows` long), then s (`cols` long).
    Matrix { at: usize, rows: usize, cols: usize },
    /// A bias or scale: one factor per element at `at`.
    Vector { at: usize, len: usize },
}

/// The factor blocks of a layout, in its flat order, and how many factors
/// they need in all.
pub(crate) fn blocks(layout: &ParamLayout) -> (Vec<Block>, usize) {
    let mut at = 0;
    let blocks = layout
        .specs()
        .iter()
        .map(|s| {
            let block = if s.shape.len() >= 2 {
                let rows = s.shape[0];
                Block::Matrix {
                    at,
                    rows,
                    cols: s.numel() / rows.max(1),
                }
            } else {
                Block::Vector { at, len: s.numel() }
            };
            at += match &block {
                Block::Matrix { rows, cols, .. } => rows + cols,
                Block::Vector { len, .. } => *len,
            };
            block
        })
        .collect();
    (blocks, at)
}

/// `factors` `[K, F]` → every member's multipliers `[K, P]` in the layout's
/// flat order: (1 + r)(1 + s)ᵀ flattened per matrix, 1 + t per vector.
pub(crate) fn multipliers(blocks: &[Block], factors: &Tensor) -> Result<Tensor> {
    const CTX: &str = "rank-1 hyper-network";
    let members = factors.dim(0).ctx(CTX)?;
    let one_plus = |at: usize, len: usize| -> Result<Tensor> {
        factors
            .narrow(1, at, len)
            .and_then(|f| f.affine(1.0, 1.0))
            .ctx(CTX)
    };
    let parts = blocks
        .iter()
        .map(|b| match *b {
            Block::Matrix { at, rows, cols } => {
                let r = one_plus(at, rows)?.unsqueeze(2).ctx(CTX)?;
                let s = one_plus(at + rows, cols)?.unsqueeze(1).ctx(CTX)?;
                r.broadcast_mul(&s)
                    .and_then(|m| m.reshape((members, rows * cols)))
                    .ctx(CTX)
            }
            Block::Vector { at, len } => one_plus(at, len),
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1).ctx(CTX)
}
