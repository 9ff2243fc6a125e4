//! In-place epilogues for the 1x1 convolutions' matrix products: the folded batch-norm bias, then
//! ReLU6 or the residual add, in one pass over the product.
//!
//! As candle ops, `broadcast_add` then `clamp` (or `+ x`) allocate and walk the output two or
//! three times; these write into the product's own storage once, one rayon task per few channels.
//! CUDA keeps the candle ops (see [`crate::efficientnet`]).

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout};
use rayon::prelude::*;

/// Below this many floats a rayon task costs more than it saves.
const MIN_TASK: usize = 16 * 1024;

/// `y = clamp(y + bias[c], 0, 6)` (or without the clamp) on a contiguous `(N, C, ...)` tensor,
/// or `(..., C)` when `channels_last`.
#[derive(Debug)]
pub struct BiasRelu6<'a> {
    /// One value per channel.
    pub bias: &'a [f32],
    /// Whether ReLU6 follows the bias.
    pub relu6: bool,
    /// Channels are the last dimension (a matrix product's `(pixels, channels)` output).
    pub channels_last: bool,
}

/// `y = y + bias[c] + residual` on contiguous `(..., C)` tensors of the same shape (channels
/// last: the 1x1 projection's output, see [`crate::efficientnet`]).
#[derive(Debug)]
pub struct BiasResidual<'a> {
    /// One value per channel.
    pub bias: &'a [f32],
}

/// The f32 slice of a contiguous channels-last layout.
fn channels_last<'s>(
    name: &str,
    storage: &'s mut CpuStorage,
    layout: &Layout,
    channels: usize,
) -> candle_core::Result<&'s mut [f32]> {
    let dims = layout.dims();
    if dims.last() != Some(&channels) {
        candle_core::bail!("{name}: shape {dims:?} does not end in {channels} channels");
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: input must be contiguous");
    };
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("{name}: only f32 is supported");
    };
    Ok(&mut v[start..end])
}

/// Per-pixel bias (and ReLU6) over channels-last rows, as a unit of SIMD dispatch.
struct Rows<'a> {
    data: &'a mut [f32],
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu6: bool,
}

impl pulp::WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let c = self.bias.len();
        match self.residual {
            Some(res) => {
                for (px, r) in self.data.chunks_exact_mut(c).zip(res.chunks_exact(c)) {
                    for ((v, b), r) in px.iter_mut().zip(self.bias).zip(r) {
                        *v += b + r;
                    }
                }
            }
            None if self.relu6 => {
                for px in self.data.chunks_exact_mut(c) {
                    for (v, b) in px.iter_mut().zip(self.bias) {
                        *v = (*v + b).clamp(0.0, 6.0);
                    }
                }
            }
            None => {
                for px in self.data.chunks_exact_mut(c) {
                    for (v, b) in px.iter_mut().zip(self.bias) {
                        *v += b;
                    }
                }
            }
        }
    }
}

/// The f32 slice of a contiguous layout, and its plane length (elements per channel).
fn planes<'s>(
    name: &str,
    storage: &'s mut CpuStorage,
    layout: &Layout,
    channels: usize,
) -> candle_core::Result<(&'s mut [f32], usize)> {
    let dims = layout.dims();
    if dims.len() < 2 || dims[1] != channels {
        candle_core::bail!("{name}: shape {dims:?} does not have {channels} channels at dim 1");
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: input must be contiguous");
    };
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("{name}: only f32 is supported");
    };
    let plane = dims[2..].iter().product::<usize>();
    Ok((&mut v[start..end], plane))
}

fn min_planes(plane: usize) -> usize {
    (MIN_TASK / plane.max(1)).max(1)
}

impl InplaceOp1 for BiasRelu6<'_> {
    fn name(&self) -> &'static str {
        "bias-relu6"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let c = self.bias.len();
        let arch = pulp::Arch::new();
        if self.channels_last {
            let data = channels_last(self.name(), storage, layout, c)?;
            data.par_chunks_mut(c * min_planes(c)).for_each(|data| {
                arch.dispatch(Rows {
                    data,
                    bias: self.bias,
                    residual: None,
                    relu6: self.relu6,
                })
            });
            return Ok(());
        }
        let (data, plane) = planes(self.name(), storage, layout, c)?;
        data.par_chunks_mut(plane)
            .with_min_len(min_planes(plane))
            .enumerate()
            .for_each(|(i, p)| {
                let b = self.bias[i % c];
                // compiled for the widest SIMD the CPU has, chosen at run time
                arch.dispatch(|| {
                    if self.relu6 {
                        p.iter_mut().for_each(|v| *v = (*v + b).clamp(0.0, 6.0));
                    } else {
                        p.iter_mut().for_each(|v| *v += b);
                    }
                });
            });
        Ok(())
    }
}

impl InplaceOp2 for BiasResidual<'_> {
    fn name(&self) -> &'static str {
        "bias-residual"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let c = self.bias.len();
        if src_l.dims() != dst_l.dims() {
            candle_core::bail!(
                "bias-residual: shapes {:?} and {:?} differ",
                dst_l.dims(),
                src_l.dims()
            );
        }
        let Some((start, end)) = src_l.contiguous_offsets() else {
            candle_core::bail!("bias-residual: the residual must be contiguous");
        };
        let residual = &src.as_slice::<f32>()?[start..end];
        let data = channels_last(self.name(), dst, dst_l, c)?;
        let arch = pulp::Arch::new();
        let task = c * min_planes(c);
        data.par_chunks_mut(task)
            .zip(residual.par_chunks(task))
            .for_each(|(data, r)| {
                arch.dispatch(Rows {
                    data,
                    bias: self.bias,
                    residual: Some(r),
                    relu6: false,
                })
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn bias_relu6_adds_per_channel_and_clamps() {
        let t = Tensor::new(&[[[-1f32, 2.0], [5.0, 0.5]]], &Device::Cpu).expect("tensor");
        t.inplace_op1(&BiasRelu6 {
            bias: &[0.5, 2.0],
            relu6: true,
            channels_last: false,
        })
        .expect("op");
        let v: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(v, vec![0.0, 2.5, 6.0, 2.5]);
    }

    #[test]
    fn bias_residual_matches_candles_ops_channels_last() {
        let y = Tensor::randn(0f32, 1f32, (1, 4, 5, 3), &Device::Cpu).expect("y");
        let x = Tensor::randn(0f32, 1f32, (1, 4, 5, 3), &Device::Cpu).expect("x");
        let bias = [0.1f32, -0.2, 0.3];
        let want = y
            .broadcast_add(&Tensor::new(&bias, &Device::Cpu).expect("b"))
            .and_then(|t| t + &x)
            .expect("want");
        let got = y.copy().expect("copy");
        got.inplace_op2(&x, &BiasResidual { bias: &bias })
            .expect("op");
        let d: f32 = (got - want)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
            .expect("diff");
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn bias_relu6_channels_last_adds_along_the_last_dimension() {
        let t = Tensor::new(&[[-1f32, 2.0], [5.0, 0.5]], &Device::Cpu).expect("tensor");
        t.inplace_op1(&BiasRelu6 {
            bias: &[0.5, 2.0],
            relu6: true,
            channels_last: true,
        })
        .expect("op");
        let v: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(v, vec![0.0, 4.0, 5.5, 2.5]);
    }
}
