//! A bias added to every row of a `[rows, width]` activation, whose
//! backward pass sums the gradient over the rows in one contiguous loop.
//!
//! candle's `broadcast_add` back-propagates to the bias through a sum over
//! the rows axis, which its CPU backend walks one output element at a time
//! with strided indexing: about 13% of a training update of the pipeline's
//! cell model (`perf`), for every method. Off the CPU, for other ranks or
//! dtypes, and for non-contiguous inputs [`add_bias`] keeps `broadcast_add`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use super::cpu_values::f32_values;

/// `x` `[rows, width]` + `b` `[width]` on every row.
pub(crate) fn add_bias(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let fits = x.device().is_cpu()
        && x.rank() == 2
        && b.rank() == 1
        && x.dtype() == DType::F32
        && b.dtype() == DType::F32
        && x.is_contiguous()
        && b.is_contiguous()
        && x.dim(1)? == b.dim(0)?;
    if fits {
        x.apply_op2(b, BiasAdd)
    } else {
        x.broadcast_add(b)
    }
}

/// `f(x + b)` on every row of `x` (rows of `b.len()`), in one pass: one
/// loop per `f` (a closure, so each activation of the fused sampling
/// passes compiles to its own vectorised loop), each row's `extend` of
/// known length, so no capacity checks.
pub(super) fn biased(x: &[f32], b: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(b.len().max(1)) {
        out.extend(row.iter().zip(b).map(|(x, b)| f(x + b)));
    }
    out
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = l1.shape().dims2()?;
        let op = self.name();
        let (x, b) = (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?);
        if b.len() != width {
            return Err(candle_core::Error::Msg(format!(
                "bias-add: rows of {width} and a bias of {}",
                b.len()
            )));
        }
        Ok((
            CpuStorage::F32(biased(x, b, |v| v)),
            Shape::from((rows, width)),
        ))
    }

    /// ∂/∂x is the gradient itself; ∂/∂b its sum over the rows.
    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let width = b.dim(0)?;
        let grad = grad_res.contiguous()?;
        let sums = {
            let (storage, layout) = grad.storage_and_layout();
            let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
                (&*storage, layout.contiguous_offsets())
            else {
                return Err(candle_core::Error::Msg(
                    "bias-add backward needs an f32 CPU gradient".into(),
                ));
            };
            let mut sums = vec![0f32; width];
            for row in values[start..end].chunks_exact(width.max(1)) {
                sums.iter_mut().zip(row).for_each(|(s, g)| *s += g);
            }
            sums
        };
        let db = Tensor::from_vec(sums, width, b.device())?;
        Ok((Some(grad), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::add_bias;

    /// Same value and same gradients for x and b as `broadcast_add`
    /// (tolerance 1e-5 relative: sums in another order), on a strided x
    /// too (which falls back to `broadcast_add`).
    #[test]
    fn bias_add_matches_broadcast_add() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (300, 17), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 17, &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (300, 17), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let y = f(x.as_tensor(), b.as_tensor());
            let grads = (&y * &weights)
                .and_then(|p| p.sum_all())
                .and_then(|p| p.backward())
                .unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                flat(&y),
                flat(grads.get(x.as_tensor()).unwrap()),
                flat(grads.get(b.as_tensor()).unwrap()),
            )
        };
        let ours = run(&|x, b| add_bias(x, b).unwrap());
        let candle = run(&|x, b| x.broadcast_add(b).unwrap());
        for (name, a, c) in [
            ("y", &ours.0, &candle.0),
            ("dx", &ours.1, &candle.1),
            ("db", &ours.2, &candle.2),
        ] {
            let scale = c.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
            for (p, q) in a.iter().zip(c) {
                assert!((p - q).abs() <= 1e-5 * scale, "{name}: {p} vs {q}");
            }
        }
        // A strided x (a transposed view) takes the fallback, same values.
        let xt = Tensor::randn(0f32, 1.0, (17, 300), &dev)
            .unwrap()
            .t()
            .unwrap();
        let y = add_bias(&xt, b.as_tensor()).unwrap();
        let z = xt.broadcast_add(b.as_tensor()).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            z.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
