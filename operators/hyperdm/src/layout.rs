//! The primary network's parameters as one flat vector.
//!
//! A primary network declares its tensors once, in a fixed order; the
//! hyper-network emits one vector of `total()` numbers, which is sliced into
//! those tensors (every element used exactly once). A per-tensor gain keeps
//! generated weights at a fan-in-scaled magnitude from the first step.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{CandleContext, Result};

/// One declared tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    /// Multiplies the generated values (1/sqrt(fan_in) for weights).
    pub gain: f64,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Applies the gain (and the +1 of normalisation scales) to raw values.
    fn finish(&self, raw: Tensor) -> candle_core::Result<Tensor> {
        let t = (raw * self.gain)?;
        if self.name.ends_with("#plus_one") {
            t + 1.0
        } else {
            Ok(t)
        }
    }
}

/// The ordered list of a network's tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    total: usize,
}

/// Handle to a declared tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamId(usize);

impl ParamLayout {
    /// Declares a weight; its gain is 1/sqrt(fan_in), fan_in = numel / shape[0].
    pub fn weight(&mut self, name: impl Into<String>, shape: &[usize]) -> ParamId {
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        self.push(name.into(), shape, 1.0 / (fan_in as f64).sqrt())
    }

    /// Declares a bias or normalisation offset (gain 0.1: starts near zero).
    pub fn bias(&mut self, name: impl Into<String>, shape: &[usize]) -> ParamId {
        self.push(name.into(), shape, 0.1)
    }

    /// Declares a normalisation scale, generated as 1 + 0.1·h so it starts near one.
    pub fn scale(&mut self, name: impl Into<String>, shape: &[usize]) -> ParamId {
        self.push(format!("{}#plus_one", name.into()), shape, 0.1)
    }

    fn push(&mut self, name: String, shape: &[usize], gain: f64) -> ParamId {
        let spec = ParamSpec {
            name,
            shape: shape.to_vec(),
            offset: self.total,
            gain,
        };
        self.total += spec.numel();
        self.specs.push(spec);
        ParamId(self.specs.len() - 1)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Slices one member's flat vector `[total]` into its tensors.
    pub fn slice(&self, flat: &Tensor) -> Result<Params> {
        let tensors = self
            .specs
            .iter()
            .map(|s| {
                s.finish(
                    flat.narrow(0, s.offset, s.numel())?
                        .reshape(s.shape.as_slice())?,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("slicing generated parameters")?;
        Ok(Params(tensors))
    }
}

impl ParamLayout {
    /// Slices K members' flat vectors `[K, total]` at once: each tensor gets
    /// a leading member axis, `[K, shape...]`, for the networks' stacked
    /// forward ([`crate::primary::PrimaryNetwork::forward_stacked`]).
    pub fn slice_stacked(&self, flat: &Tensor) -> Result<Params> {
        self.stacked(flat, true).ctx("slicing generated parameters")
    }

    /// K members' tensors, each finished (gain, +1) where `finish` says.
    fn stacked(&self, flat: &Tensor, finish: bool) -> candle_core::Result<Params> {
        let members = flat.dim(0)?;
        let tensors = self
            .specs
            .iter()
            .map(|s| {
                let mut shape = vec![members];
                shape.extend_from_slice(&s.shape);
                let t = flat.narrow(1, s.offset, s.numel())?.reshape(shape)?;
                if finish { s.finish(t) } else { Ok(t) }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Params(tensors))
    }
}

impl ParamLayout {
    /// Applies every tensor's gain (and +1) to a flat vector of
    /// standardised values: what [`ParamLayout::slice`] does on the fly.
    /// Trained weights (the baselines) are stored this way, so an optimiser
    /// step moves each weight by the learning rate itself, as in an ordinary
    /// network, not by the learning rate times the gain.
    pub fn scaled(&self, standardised: &[f32]) -> Vec<f32> {
        let mut out = standardised.to_vec();
        for s in &self.specs {
            let plus = if s.name.ends_with("#plus_one") {
                1.0
            } else {
                0.0
            };
            for v in &mut out[s.offset..s.offset + s.numel()] {
                *v = (f64::from(*v) * s.gain + plus) as f32;
            }
        }
        out
    }

    /// Every element's gain, in flat order.
    pub fn gains(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.total];
        for s in &self.specs {
            out[s.offset..s.offset + s.numel()].fill(s.gain as f32);
        }
        out
    }

    /// Slices a flat vector of final values (see [`ParamLayout::scaled`]).
    pub fn slice_scaled(&self, flat: &Tensor) -> Result<Params> {
        let tensors = self
            .specs
            .iter()
            .map(|s| {
                flat.narrow(0, s.offset, s.numel())?
                    .reshape(s.shape.as_slice())
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("slicing trained parameters")?;
        Ok(Params(tensors))
    }

    /// As [`ParamLayout::slice_stacked`] for K members' final values
    /// `[K, total]` (see [`ParamLayout::scaled`]).
    pub fn slice_scaled_stacked(&self, flat: &Tensor) -> Result<Params> {
        self.stacked(flat, false).ctx("slicing trained parameters")
    }
}

impl ParamLayout {
    /// One network's tensors of `flat` (`[total]`) as variables of their
    /// own, for back-propagating that network alone: with `gains` the
    /// tensors are finished as [`ParamLayout::slice`] does (in the graph, so
    /// the gradients reach the raw values), without as
    /// [`ParamLayout::slice_scaled`]. Back-propagating through a slice of
    /// one flat variable instead costs a zero-filled `[total]` gradient per
    /// tensor, which made up a good part of a small network's update.
    pub fn leaves(&self, flat: &Tensor, gains: bool) -> Result<(Params, Leaves)> {
        let mut vars = Vec::with_capacity(self.specs.len());
        let mut tensors = Vec::with_capacity(self.specs.len());
        for s in &self.specs {
            let raw = flat
                .narrow(0, s.offset, s.numel())
                .and_then(|t| t.reshape(s.shape.as_slice()))
                .and_then(|t| Var::from_tensor(&t))
                .ctx("slicing parameters")?;
            let tensor = if gains {
                s.finish(raw.as_tensor().clone())
                    .ctx("slicing parameters")?
            } else {
                raw.as_tensor().clone()
            };
            vars.push(raw);
            tensors.push(tensor);
        }
        Ok((Params(tensors), Leaves(vars)))
    }
}

/// The variables of [`ParamLayout::leaves`], in layout order.
#[derive(Debug)]
pub struct Leaves(Vec<Var>);

impl Leaves {
    /// The gradient with respect to the flat vector the leaves came from:
    /// each leaf's gradient (zeros where the loss did not use it), in order.
    pub fn flat_gradient(&self, grads: &GradStore) -> Result<Tensor> {
        let parts = self
            .0
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => g.flatten_all(),
                None => v.as_tensor().zeros_like()?.flatten_all(),
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("gathering gradients")?;
        Tensor::cat(&parts, 0).ctx("gathering gradients")
    }
}

/// A member's generated tensors, indexed by [`ParamId`].
#[derive(Debug, Clone)]
pub struct Params(Vec<Tensor>);

impl Params {
    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.0[id.0]
    }

    /// Member `k` of stacked parameters ([`ParamLayout::slice_stacked`]).
    pub fn member(&self, k: usize) -> Result<Params> {
        let tensors = self
            .0
            .iter()
            .map(|t| t.get(k))
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("a member of stacked parameters")?;
        Ok(Params(tensors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn every_element_is_used_exactly_once() {
        let mut layout = ParamLayout::default();
        let w = layout.weight("w", &[3, 4]);
        let b = layout.bias("b", &[3]);
        let g = layout.scale("g", &[2, 1]);
        assert_eq!(layout.total(), 12 + 3 + 2);
        // Offsets tile [0, total) with no gap or overlap.
        let mut covered = vec![0u8; layout.total()];
        for s in layout.specs() {
            covered[s.offset..s.offset + s.numel()]
                .iter_mut()
                .for_each(|c| *c += 1);
        }
        assert!(covered.iter().all(|&c| c == 1));
        // The values land where the layout says, with their gains.
        let flat = Tensor::arange(0f32, layout.total() as f32, &Device::Cpu).unwrap();
        let p = layout.slice(&flat).unwrap();
        assert_eq!(
            p.get(w)
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[5],
            5.0 / 2.0
        );
        assert_eq!(
            p.get(b).to_vec1::<f32>().unwrap(),
            vec![12.0f32 * 0.1, 13.0 * 0.1, 14.0 * 0.1]
        );
        assert_eq!(
            p.get(g).flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0 + 1.5, 1.0 + 1.6]
        );
        // Scaling first, then slicing as is, gives the same tensors.
        let raw: Vec<f32> = flat.to_vec1().unwrap();
        let scaled = Tensor::new(layout.scaled(&raw), &Device::Cpu).unwrap();
        let q = layout.slice_scaled(&scaled).unwrap();
        for id in [w, b, g] {
            let (a, c): (Vec<f32>, Vec<f32>) = (
                p.get(id).flatten_all().unwrap().to_vec1().unwrap(),
                q.get(id).flatten_all().unwrap().to_vec1().unwrap(),
            );
            for (x, y) in a.iter().zip(&c) {
                assert!((x - y).abs() < 1e-5, "{a:?} vs {c:?}");
            }
        }
    }
}
