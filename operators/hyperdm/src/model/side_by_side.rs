//! What both side-by-side training updates share (`networks_side_by_side`
//! for HyperDM, `rows_side_by_side` for the baselines): each network's rows
//! cut into shards, one job per shard run on the pool, and each network's
//! shards summed.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{CandleContext, HyperdmError, Result};
use crate::layout::Leaves;

/// One job: (network, first row, end row) of that network's minibatch.
pub(super) type Job = (usize, usize, usize);

/// `shards` jobs per network (fewer where it has fewer rows), `rows(k)`
/// being network k's row count.
pub(super) fn shard_jobs(
    networks: usize,
    shards: usize,
    rows: impl Fn(usize) -> usize,
) -> Vec<Job> {
    (0..networks)
        .flat_map(|k| {
            let rows = rows(k);
            let shards = shards.clamp(1, rows.max(1));
            (0..shards).map(move |s| (k, s * rows / shards, (s + 1) * rows / shards))
        })
        .collect()
}

/// Runs every job (side by side on the CPU, in turn on an accelerator) and
/// returns each network's (loss, flat gradient), summed over its shards.
pub(super) fn run_summed(
    device: &Device,
    networks: usize,
    jobs: &[Job],
    job: impl Fn(&Job) -> Result<(Tensor, Tensor)> + Sync,
) -> Result<Vec<(Tensor, Tensor)>> {
    let done: Vec<Result<(Tensor, Tensor)>> = if device.is_cpu() {
        jobs.par_iter().map(&job).collect()
    } else {
        jobs.iter().map(&job).collect()
    };
    let mut sums: Vec<Option<(Tensor, Tensor)>> = vec![None; networks];
    for (&(k, _, _), result) in jobs.iter().zip(done) {
        let (loss, grad) = result?;
        sums[k] = Some(match sums[k].take() {
            Some((l, g)) => (
                (l + loss).ctx("loss")?,
                (g + grad).ctx("side-by-side update")?,
            ),
            None => (loss, grad),
        });
    }
    sums.into_iter()
        .map(|s| {
            s.ok_or(HyperdmError::Config {
                field: "batch_size",
                problem: "a network of the update has no rows".into(),
            })
        })
        .collect()
}

/// A shard's share of its network's loss, `scale`·Σ(out − target)² / the
/// network's element count (`elements`), and that share's gradient with
/// respect to the flat vector `leaves` came from.
pub(super) fn shard_loss(
    out: Tensor,
    target: &Tensor,
    scale: f64,
    elements: usize,
    leaves: &Leaves,
) -> Result<(Tensor, Tensor)> {
    let loss = (out - target)
        .and_then(|d| d.sqr())
        .and_then(|d| d.sum_all())
        .and_then(|d| d.affine(scale / elements as f64, 0.0))
        .ctx("loss")?;
    let grads = loss.backward().ctx("backward")?;
    Ok((loss.detach(), leaves.flat_gradient(&grads)?))
}

/// Runs `f` in a rayon pool of `threads` threads (tests of work that must
/// not depend on how many threads share it).
#[cfg(test)]
pub(super) fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a test thread pool")
        .install(f)
}

/// Test support: the same loss value and, for every trained tensor, the
/// same gradient, to 1e-5 relative to the tensor's largest entry (the
/// side-by-side updates add the same floats in another order).
#[cfg(test)]
pub(super) fn assert_same_update(
    case: &str,
    varmap: &candle_nn::VarMap,
    want: (&Tensor, &candle_core::backprop::GradStore),
    got: (&Tensor, &candle_core::backprop::GradStore),
) {
    let (a, b) = (
        want.0.to_scalar::<f32>().unwrap(),
        got.0.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{case}: loss {a} vs {b}");
    let vars = super::named_vars(varmap);
    assert!(!vars.is_empty(), "{case}: no trained tensors");
    let flat = |g: &Tensor| -> Vec<f32> { g.flatten_all().unwrap().to_vec1().unwrap() };
    for (name, var) in vars {
        let w = flat(want.1.get(&var).unwrap());
        let g = flat(
            got.1
                .get(&var)
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}")),
        );
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{case}: {name} has no gradient");
        for (x, y) in w.iter().zip(&g) {
            assert!((x - y).abs() <= 1e-5 * scale, "{case}: {name}: {x} vs {y}");
        }
    }
}
