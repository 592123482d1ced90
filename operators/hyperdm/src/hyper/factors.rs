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

/// The rank-1 form's backward pass on the host: from ∂L/∂φ (`dphi`,
/// `[K, P]`, standardised units), the factors `f` (`[K, F]`, F = `width`), the base
/// (final units) and 1/gain, returns ∂L/∂f `[K, F]` and ∂L/∂base `[P]`.
/// φ_k = m_k ⊙ base/gain with m = (1 + r)(1 + s)ᵀ per matrix, 1 + t per
/// vector, so ∂L/∂r_i = Σ_j e_ij (1 + s_j), ∂L/∂s_j = Σ_i e_ij (1 + r_i)
/// with e = ∂L/∂φ ⊙ base/gain, and ∂L/∂base = Σ_k ∂L/∂φ_k ⊙ m_k / gain.
pub(crate) fn backward(
    blocks: &[Block],
    (f, width): (&[f32], usize),
    dphi: &[f32],
    base: &[f32],
    inverse: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let outputs = base.len();
    let members = dphi.len() / outputs.max(1);
    let mut d_f = vec![0f32; members * width];
    let mut d_base = vec![0f32; outputs];
    for k in 0..members {
        let f = &f[k * width..(k + 1) * width];
        let dphi = &dphi[k * outputs..(k + 1) * outputs];
        let d_f = &mut d_f[k * width..(k + 1) * width];
        let mut p = 0;
        for block in blocks {
            match *block {
                Block::Matrix { at, rows, cols } => {
                    let (r, s) = f[at..at + rows + cols].split_at(rows);
                    let mut d_s = vec![0f32; cols];
                    for (i, &ri) in r.iter().enumerate() {
                        let mut d_r = 0f32;
                        for (j, &sj) in s.iter().enumerate() {
                            let q = p + i * cols + j;
                            let g = dphi[q] * inverse[q];
                            let e = g * base[q];
                            d_base[q] += g * (1.0 + ri) * (1.0 + sj);
                            d_r += e * (1.0 + sj);
                            d_s[j] += e * (1.0 + ri);
                        }
                        d_f[at + i] = d_r;
                    }
                    d_f[at + rows..at + rows + cols].copy_from_slice(&d_s);
                    p += rows * cols;
                }
                Block::Vector { at, len } => {
                    for i in 0..len {
                        let q = p + i;
                        let g = dphi[q] * inverse[q];
                        d_base[q] += g * (1.0 + f[at + i]);
                        d_f[at + i] = g * base[q];
                    }
                    p += len;
                }
            }
        }
    }
    (d_f, d_base)
}
