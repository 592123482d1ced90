//! The conditional U-Net denoiser for fields, every weight generated.
//!
//! ```text
//! [x_t ‖ y] ─conv─► res(l=0) ─down─► res(l=1) ─down─► … res(L−1) ─► mid: res·attn·res
//!                     │skip             │skip              │skip
//!   out ◄─conv◄─ res(‖skip0) ◄─up─ res(‖skip1) ◄─up─ … res(‖skipL−1) ◄┘
//! ```
//! Residual blocks add a projection of the time embedding; self-attention
//! runs at the lowest resolution; the condition y enters by channel
//! concatenation. Inputs of any H×W are edge-padded to a multiple of
//! 2^(L−1) and the output cropped back.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use super::PrimaryNetwork;
use crate::embedding::timestep_embedding;
use crate::error::{CandleContext, HyperdmError, Result};
use crate::layout::{ParamId, ParamLayout, Params};

/// Shape of the U-Net.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Channels of x (1: t2m).
    pub channels: usize,
    /// Channels of the condition y (1: t2m at the previous step).
    pub cond_channels: usize,
    /// Width of the first level (paper: 16).
    pub base: usize,
    /// Width multiplier per level (paper: 1, 2, 4, 8).
    pub mults: Vec<usize>,
    /// Diffusion steps T (for the embedding's scale).
    pub steps: usize,
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            channels: 1,
            cond_channels: 1,
            base: 16,
            mults: vec![1, 2, 4, 8],
            steps: 100,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Conv {
    w: ParamId,
    b: ParamId,
    pad: usize,
    stride: usize,
}

#[derive(Debug, Clone, Copy)]
struct Norm {
    g: ParamId,
    b: ParamId,
    groups: usize,
}

#[derive(Debug, Clone, Copy)]
struct Dense {
    w: ParamId,
    b: ParamId,
}

#[derive(Debug, Clone, Copy)]
struct Res {
    norm1: Norm,
    conv1: Conv,
    time: Dense,
    norm2: Norm,
    conv2: Conv,
    skip: Option<Conv>,
}

#[derive(Debug, Clone, Copy)]
struct Attention {
    norm: Norm,
    qkv: Conv,
    proj: Conv,
}

/// The U-Net's parameter layout and wiring.
#[derive(Debug, Clone)]
pub struct PrimaryUnet {
    config: UnetConfig,
    layout: ParamLayout,
    time: (Dense, Dense),
    conv_in: Conv,
    down: Vec<(Res, Option<Conv>)>,
    mid: (Res, Attention, Res),
    up: Vec<(Res, Option<Conv>)>,
    norm_out: Norm,
    conv_out: Conv,
}

fn groups_for(c: usize) -> usize {
    [8, 4, 2, 1]
        .into_iter()
        .find(|g| c.is_multiple_of(*g))
        .unwrap_or(1)
}

struct Builder {
    layout: ParamLayout,
}

impl Builder {
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, stride: usize) -> Conv {
        let w = self
            .layout
            .weight(format!("{name}.weight"), &[cout, cin, k, k]);
        let b = self.layout.bias(format!("{name}.bias"), &[cout]);
        Conv {
            w,
            b,
            pad: k / 2,
            stride,
        }
    }
    fn norm(&mut self, name: &str, c: usize) -> Norm {
        let g = self.layout.scale(format!("{name}.weight"), &[c]);
        let b = self.layout.bias(format!("{name}.bias"), &[c]);
        Norm {
            g,
            b,
            groups: groups_for(c),
        }
    }
    fn dense(&mut self, name: &str, cin: usize, cout: usize) -> Dense {
        Dense {
            w: self.layout.weight(format!("{name}.weight"), &[cout, cin]),
            b: self.layout.bias(format!("{name}.bias"), &[cout]),
        }
    }
    fn res(&mut self, name: &str, cin: usize, cout: usize, tdim: usize) -> Res {
        Res {
            norm1: self.norm(&format!("{name}.norm1"), cin),
            conv1: self.conv(&format!("{name}.conv1"), cin, cout, 3, 1),
            time: self.dense(&format!("{name}.time"), tdim, cout),
            norm2: self.norm(&format!("{name}.norm2"), cout),
            conv2: self.conv(&format!("{name}.conv2"), cout, cout, 3, 1),
            skip: (cin != cout).then(|| self.conv(&format!("{name}.skip"), cin, cout, 1, 1)),
        }
    }
}

impl PrimaryUnet {
    pub fn new(config: &UnetConfig) -> Result<Self> {
        if config.mults.is_empty() || config.base == 0 || config.channels == 0 {
            return Err(HyperdmError::Config {
                field: "unet",
                problem: "needs base > 0, channels > 0 and at least one level".into(),
            });
        }
        let mut b = Builder {
            layout: ParamLayout::default(),
        };
        let tdim = config.base * 4;
        let time = (
            b.dense("time.0", config.base, tdim),
            b.dense("time.1", tdim, tdim),
        );
        let conv_in = b.conv(
            "conv_in",
            config.channels + config.cond_channels,
            config.base,
            3,
            1,
        );
        let widths: Vec<usize> = config.mults.iter().map(|m| m * config.base).collect();
        let last = widths.len() - 1;
        let mut down = Vec::new();
        let mut prev = config.base;
        for (l, &w) in widths.iter().enumerate() {
            let res = b.res(&format!("down{l}"), prev, w, tdim);
            let sample = (l < last).then(|| b.conv(&format!("down{l}.downsample"), w, w, 3, 2));
            down.push((res, sample));
            prev = w;
        }
        let mid = (
            b.res("mid.res0", prev, prev, tdim),
            Attention {
                norm: b.norm("mid.attn.norm", prev),
                qkv: b.conv("mid.attn.qkv", prev, 3 * prev, 1, 1),
                proj: b.conv("mid.attn.proj", prev, prev, 1, 1),
            },
            b.res("mid.res1", prev, prev, tdim),
        );
        let mut up = Vec::new();
        for l in (0..widths.len()).rev() {
            let res = b.res(&format!("up{l}"), prev + widths[l], widths[l], tdim);
            let sample =
                (l > 0).then(|| b.conv(&format!("up{l}.upsample"), widths[l], widths[l], 3, 1));
            up.push((res, sample));
            prev = widths[l];
        }
        let norm_out = b.norm("norm_out", prev);
        let conv_out = b.conv("conv_out", prev, config.channels, 3, 1);
        Ok(Self {
            config: config.clone(),
            layout: b.layout,
            time,
            conv_in,
            down,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    /// Spatial sizes must be multiples of this (inputs are padded to it).
    pub fn multiple(&self) -> usize {
        1 << (self.config.mults.len() - 1)
    }
}

fn conv(p: &Params, c: Conv, x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, w) = (p.get(c.b), p.get(c.w));
    let (_, _, kh, kw) = w.dims4()?;
    // The U-Net's 3×3 convolutions on the CPU go through im2col + GEMM
    // (see `im2col.rs` for why), 1×1 ones are a matmul on any device, and
    // the rest (stride-2 downsampling; 3×3 on a GPU) go through candle.
    let y = if x.device().is_cpu() && (kh, kw, c.pad, c.stride) == (3, 3, 1, 1) {
        super::im2col::conv3x3(x, w)?
    } else if (kh, kw, c.pad, c.stride) == (1, 1, 0, 1) {
        super::im2col::conv1x1(x, w)?
    } else {
        x.conv2d(w, c.pad, c.stride, 1, 1)?
    };
    y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
}

fn norm(p: &Params, n: Norm, x: &Tensor) -> candle_core::Result<Tensor> {
    let (bsz, c, h, w) = x.dims4()?;
    let g = x.reshape((bsz, n.groups, c / n.groups * h * w))?;
    let mean = g.mean_keepdim(D::Minus1)?;
    let centred = g.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred
        .broadcast_div(&(var + 1e-5)?.sqrt()?)?
        .reshape((bsz, c, h, w))?;
    normed
        .broadcast_mul(&p.get(n.g).reshape((1, c, 1, 1))?)?
        .broadcast_add(&p.get(n.b).reshape((1, c, 1, 1))?)
}

fn dense(p: &Params, d: Dense, x: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&p.get(d.w).t()?)?.broadcast_add(p.get(d.b))
}

fn res(p: &Params, r: Res, x: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
    let h = conv(p, r.conv1, &norm(p, r.norm1, x)?.silu()?)?;
    let t = dense(p, r.time, temb)?;
    let h = h.broadcast_add(&t.reshape((t.dim(0)?, t.dim(1)?, 1, 1))?)?;
    let h = conv(p, r.conv2, &norm(p, r.norm2, &h)?.silu()?)?;
    let skip = match r.skip {
        Some(s) => conv(p, s, x)?,
        None => x.clone(),
    };
    h + skip
}

fn attention(p: &Params, a: Attention, x: &Tensor) -> candle_core::Result<Tensor> {
    let (bsz, c, h, w) = x.dims4()?;
    let qkv = conv(p, a.qkv, &norm(p, a.norm, x)?)?.reshape((bsz, 3, c, h * w))?;
    let q = qkv
        .narrow(1, 0, 1)?
        .squeeze(1)?
        .transpose(1, 2)?
        .contiguous()?;
    let k = qkv.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
    let v = qkv.narrow(1, 2, 1)?.squeeze(1)?.contiguous()?;
    let weights = candle_nn::ops::softmax_last_dim(&(q.matmul(&k)? / (c as f64).sqrt())?)?;
    let out = v
        .matmul(&weights.t()?.contiguous()?)?
        .reshape((bsz, c, h, w))?;
    x + conv(p, a.proj, &out)?
}

impl PrimaryUnet {
    fn run(
        &self,
        p: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, _, height, width) = x_t.dims4()?;
        let m = self.multiple();
        let (ph, pw) = (
            height.div_ceil(m) * m - height,
            width.div_ceil(m) * m - width,
        );
        let x = Tensor::cat(&[x_t, cond], 1)?;
        let x = if ph > 0 {
            x.pad_with_same(2, 0, ph)?
        } else {
            x
        };
        let x = if pw > 0 {
            x.pad_with_same(3, 0, pw)?
        } else {
            x
        };

        let emb = timestep_embedding(steps, self.config.steps, self.config.base, x.device())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let temb = dense(p, self.time.1, &dense(p, self.time.0, &emb)?.silu()?)?.silu()?;

        let mut h = conv(p, self.conv_in, &x)?;
        let mut skips = Vec::with_capacity(self.down.len());
        for &(r, sample) in &self.down {
            h = res(p, r, &h, &temb)?;
            skips.push(h.clone());
            if let Some(s) = sample {
                h = conv(p, s, &h)?;
            }
        }
        h = res(
            p,
            self.mid.2,
            &attention(p, self.mid.1, &res(p, self.mid.0, &h, &temb)?)?,
            &temb,
        )?;
        for &(r, sample) in &self.up {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("U-Net skip stack underflow".into()))?;
            h = res(p, r, &Tensor::cat(&[&h, &skip], 1)?, &temb)?;
            if let Some(s) = sample {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv(p, s, &h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        let out = conv(p, self.conv_out, &norm(p, self.norm_out, &h)?.silu()?)?;
        out.narrow(2, 0, height)?.narrow(3, 0, width)
    }
}

impl PrimaryNetwork for PrimaryUnet {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn forward(
        &self,
        params: &Params,
        x_t: &Tensor,
        steps: &[usize],
        cond: &Tensor,
    ) -> Result<Tensor> {
        let expect = |what: &'static str, t: &Tensor, c: usize| -> Result<()> {
            match t.dims() {
                [_, ch, _, _] if *ch == c => Ok(()),
                d => Err(HyperdmError::Shape {
                    what,
                    expected: format!("[batch, {c}, H, W]"),
                    found: format!("{d:?}"),
                }),
            }
        };
        expect("x_t", x_t, self.config.channels)?;
        expect("condition", cond, self.config.cond_channels)?;
        self.run(params, x_t, steps, cond).ctx("U-Net forward")
    }

    fn sample_input_like(&self, cond: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = cond.dims4().ctx("U-Net input")?;
        Tensor::zeros((b, self.config.channels, h, w), cond.dtype(), cond.device())
            .ctx("U-Net input")
    }

    fn config(&self) -> super::PrimaryConfig {
        super::PrimaryConfig::Unet(self.config.clone())
    }
}
