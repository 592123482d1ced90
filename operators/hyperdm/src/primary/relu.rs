//! ReLU whose backward pass is one loop.
//!
//! candle back-propagates `relu` as `grad · (x ≥ 0)`, built from a tensor of
//! zeros, a comparison into bytes, a conversion of those bytes to floats and
//! a product: four passes over the activation and three buffers. In a
//! training update of the pipeline's cell model (`perf`) the comparison
//! alone took 12% of the samples. Here the same product is one pass. Off the
//! CPU, for other dtypes and for non-contiguous inputs [`relu`] keeps
//! candle's op.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::cpu_values::f32_values;

/// `max(x, 0)`, back-propagated in one pass where it can be.
pub(crate) fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        x.apply_op1(Relu)
    } else {
        x.relu()
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // candle's expression, so the same bits.
        let out = f32_values(s, l, self.name())?
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(grad.apply_op2_no_bwd(&x.contiguous()?, &ReluGrad)?))
    }
}

/// `grad · (x ≥ 0 ? 1 : 0)`, the product candle forms, element by element.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (grad, x) = (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?);
        if grad.len() != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "relu backward: a gradient of {} values for {} inputs",
                grad.len(),
                x.len()
            )));
        }
        let out = (grad.iter().zip(x))
            .map(|(g, x)| g * if *x >= 0.0 { 1.0 } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::relu;

    /// The same value and gradient as candle's `relu`, to the bit, with
    /// inputs at exactly zero included; a strided input takes candle's op.
    #[test]
    fn relu_matches_candle_in_value_and_gradient() {
        let dev = Device::Cpu;
        let raw = Tensor::randn(0f32, 1.0, (300, 17), &dev).unwrap();
        // Some exact zeros, where `x ≥ 0` lets the gradient through.
        let zeros = Tensor::randn(0f32, 1.0, (300, 17), &dev)
            .unwrap()
            .ge(1.0)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let keep = zeros.affine(-1.0, 1.0).unwrap();
        let x = Var::from_tensor(&(raw * keep).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (300, 17), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let y = f(x.as_tensor());
            let grads = (&y * &weights)
                .and_then(|p| p.sum_all())
                .and_then(|p| p.backward())
                .unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                values.iter().map(|v| v.to_bits()).collect()
            };
            (bits(&y), bits(grads.get(x.as_tensor()).unwrap()))
        };
        let ours = run(&|x| relu(x).unwrap());
        let candle = run(&|x| x.relu().unwrap());
        assert_eq!(ours, candle);
        let flat = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(flat.contains(&0.0) && flat.iter().any(|v| *v < 0.0));

        let strided = Tensor::randn(0f32, 1.0, (17, 300), &dev)
            .unwrap()
            .t()
            .unwrap();
        assert_eq!(
            relu(&strided).unwrap().to_vec2::<f32>().unwrap(),
            strided.relu().unwrap().to_vec2::<f32>().unwrap()
        );
    }
}
