//! ResNet-18 (He et al. 2016) for one-channel images, as torchvision builds
//! it — 7x7/2 stem, 3x3/2 max pooling, four stages of two basic blocks
//! (64, 128, 256, 512 channels; 1x1/2 projection shortcuts), global average
//! pooling — with a single logit and GroupNorm (32 groups) in place of
//! BatchNorm: no running statistics to federate, and each image's gradient
//! is its own, which DP-SGD's per-example clipping needs. Parameter names
//! are torchvision's (`layer2.0.downsample.0.weight`, `bn1.weight` for the
//! norm's scale), so converted ImageNet weights load by name.
//!
//! A batch goes through every layer at once (activations in CNHW layout, so
//! a convolution is one GEMM whose N dimension is batch x pixels): per-image
//! products of layer4, 2x2 pixels at 64x64 inputs, would read its 9 MB
//! weights once per image. DP-SGD clips without materialising per-example
//! gradients (11M values each): the backward pass computes each image's
//! gradient norm layer by layer (Gram matrices where the layer's pixels are
//! few, the image's own weight gradient where they are many), then a second
//! backward pass over the same activations, with each image's loss scaled
//! by its clipping factor, gives the clipped sum ("ghost clipping",
//! Goodfellow 2015; Li et al. 2022).

use std::ops::Range;
use std::sync::Mutex;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use rayon::prelude::*;

use super::conv::Conv2d;
use super::gemm::{matmul, Mat, Threads};
use super::group_norm::{GroupNorm, NormGrads};
use super::pool::{max_pool3s2, max_pool3s2_backward, pooled_side};
use super::target;
use crate::data::images::ImageSet;
use crate::learner::logistic::{example_loss, sigmoid};
use crate::params::TensorSpec;

/// GroupNorm's groups (Wu & He's choice for ResNets).
const GROUPS: usize = 32;
/// Stage widths.
const WIDTHS: [usize; 4] = [64, 128, 256, 512];
/// Images per pass: bounds the activations held (~20 MB per 224x224 image).
const PASS: usize = 32;
/// Smallest input side: layer4 still has one pixel.
pub(super) const MIN_SIZE: usize = 32;
/// Values of im2col matrices a pass keeps from the forward pass for the
/// backward passes (512 MiB), instead of rebuilding them: units in forward
/// order while they fit (32 images per pass: all of them at 64x64, 134 MiB;
/// at 128x128 all but three of layer4's, 510 of 537 MiB).
const KEPT_COL_VALUES: usize = 128 << 20;

/// The tensors in torchvision's `state_dict` order.
pub(super) fn layout_specs() -> Vec<TensorSpec> {
    let mut specs = vec![
        TensorSpec::new("conv1.weight", &[64, 1, 7, 7]),
        TensorSpec::new("bn1.weight", &[64]),
        TensorSpec::new("bn1.bias", &[64]),
    ];
    let mut cin = 64;
    for (stage, &width) in WIDTHS.iter().enumerate() {
        for block in 0..2 {
            let p = format!("layer{}.{block}", stage + 1);
            let block_in = if block == 0 { cin } else { width };
            specs.push(TensorSpec::new(
                format!("{p}.conv1.weight"),
                &[width, block_in, 3, 3],
            ));
            specs.push(TensorSpec::new(format!("{p}.bn1.weight"), &[width]));
            specs.push(TensorSpec::new(format!("{p}.bn1.bias"), &[width]));
            specs.push(TensorSpec::new(
                format!("{p}.conv2.weight"),
                &[width, width, 3, 3],
            ));
            specs.push(TensorSpec::new(format!("{p}.bn2.weight"), &[width]));
            specs.push(TensorSpec::new(format!("{p}.bn2.bias"), &[width]));
            if block == 0 && stage > 0 {
                specs.push(TensorSpec::new(
                    format!("{p}.downsample.0.weight"),
                    &[width, cin, 1, 1],
                ));
                specs.push(TensorSpec::new(format!("{p}.downsample.1.weight"), &[width]));
                specs.push(TensorSpec::new(format!("{p}.downsample.1.bias"), &[width]));
            }
        }
        cin = width;
    }
    specs.push(TensorSpec::new("fc.weight", &[1, 512]));
    specs.push(TensorSpec::new("fc.bias", &[1]));
    specs
}

/// torchvision's initialisation from `seed`: convolutions He-normal over
/// their fan-out, norm scales 1 and shifts 0, the linear layer uniform in
/// +-1/sqrt(fan-in).
pub(super) fn init_values(specs: &[TensorSpec], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(specs.iter().map(TensorSpec::numel).sum());
    for spec in specs {
        let n = spec.numel();
        if spec.shape.len() == 4 {
            let fan_out = (spec.shape[0] * spec.shape[2] * spec.shape[3]) as f64;
            let normal = Normal::new(0.0, (2.0 / fan_out).sqrt()).expect("a positive deviation");
            values.extend((0..n).map(|_| normal.sample(&mut rng) as f32));
        } else if spec.name.starts_with("fc.") {
            let bound = 1.0 / 512f64.sqrt();
            let uniform = Uniform::new(-bound, bound).expect("a non-empty range");
            values.extend((0..n).map(|_| uniform.sample(&mut rng) as f32));
        } else {
            let one = if spec.name.ends_with(".weight") { 1.0 } else { 0.0 };
            values.extend(std::iter::repeat_n(one, n));
        }
    }
    values
}

/// A convolution and the group norm after it, with where their tensors lie
/// in the flat parameter vector.
struct Unit {
    conv: Conv2d,
    norm: GroupNorm,
    weight: Range<usize>,
    /// The norm's scale then shift, adjacent.
    affine: Range<usize>,
}

impl Unit {
    fn out_len(&self, batch: usize) -> usize {
        self.conv.cout * batch * self.conv.out_hw()
    }

    /// Values of the convolution's im2col matrix for `batch` images.
    fn col_len(&self, batch: usize) -> usize {
        self.conv.k() * batch * self.conv.out_hw()
    }
}

struct Block {
    conv1: Unit,
    conv2: Unit,
    down: Option<Unit>,
}

/// What the forward pass keeps of a unit: its convolution's output, the
/// norm's statistics, and the unit's output (after ReLU where it has one;
/// for a block's second unit, the block's output); and its im2col matrix
/// where the budget allows (`KEPT_COL_VALUES`).
#[derive(Default)]
struct UnitTape {
    y: Vec<f32>,
    stats: Vec<[f32; 2]>,
    out: Vec<f32>,
    /// Whether `col` holds this pass's im2col matrix.
    kept: bool,
    col: Vec<f32>,
}

impl UnitTape {
    /// Sized for `batch` images; `budget` is the im2col values still free
    /// to keep, and what this unit keeps is taken from it.
    fn sized(&mut self, unit: &Unit, batch: usize, budget: &mut usize) {
        self.y.resize(unit.out_len(batch), 0.0);
        self.out.resize(unit.out_len(batch), 0.0);
        self.stats.resize(GROUPS * batch, [0.0; 2]);
        let col = unit.col_len(batch);
        self.kept = col <= *budget;
        if self.kept {
            *budget -= col;
            self.col.resize(col, 0.0);
        } else {
            self.col = Vec::new();
        }
    }
}

/// A batch's activations and the backward pass's buffers, reused across
/// batches.
#[derive(Default)]
struct Tape {
    batch: usize,
    input: Vec<f32>,
    stem: UnitTape,
    pooled: Vec<f32>,
    arg: Vec<u32>,
    blocks: Vec<[UnitTape; 3]>,
    feat: Vec<f32>,
    logits: Vec<f32>,
    /// Each image's loss derivative in its logit (as the last backward used it).
    dz: Vec<f32>,
    /// im2col scratch for the units that keep no matrix of their own.
    col: Vec<f32>,
    dcol: Vec<f32>,
    /// Activation-gradient buffers, rotated through the blocks.
    work: [Vec<f32>; 5],
    /// The norm gradients' destination when only their norms are wanted.
    spare: Vec<f32>,
}

/// What a backward pass produces.
enum Pass<'a> {
    /// The parameter gradient of the summed losses, added to.
    Sum(&'a mut [f32]),
    /// Each image's squared gradient norm, added to.
    Norms(&'a mut [f64]),
}

pub(super) struct ResNet18 {
    stem: Unit,
    blocks: Vec<Block>,
    fc_weight: Range<usize>,
    fc_bias: usize,
    dim: usize,
    /// im2col values a pass may keep (`KEPT_COL_VALUES`).
    col_budget: usize,
    tape: Mutex<Tape>,
}

impl ResNet18 {
    /// The network for `size x size` inputs (at least `MIN_SIZE`).
    pub fn new(size: usize) -> Self {
        let specs = layout_specs();
        let mut ranges = Vec::with_capacity(specs.len());
        let mut at = 0;
        for spec in &specs {
            ranges.push(at..at + spec.numel());
            at += spec.numel();
        }
        let mut next = ranges.into_iter();
        let mut unit = |cin: usize, cout: usize, side: usize, kernel: usize, stride: usize| {
            let weight = next.next().expect("a convolution's tensor");
            let (gamma, beta) = (next.next().expect("a scale"), next.next().expect("a shift"));
            Unit {
                conv: Conv2d {
                    cin,
                    cout,
                    h: side,
                    w: side,
                    kernel,
                    stride,
                    pad: kernel / 2,
                },
                norm: GroupNorm {
                    channels: cout,
                    groups: GROUPS,
                },
                weight,
                affine: gamma.start..beta.end,
            }
        };
        let stem = unit(1, 64, size, 7, 2);
        let mut side = pooled_side(stem.conv.out_h());
        let mut blocks = Vec::with_capacity(8);
        let mut cin = 64;
        for (stage, &width) in WIDTHS.iter().enumerate() {
            for block in 0..2 {
                let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                let conv1 = unit(if block == 0 { cin } else { width }, width, side, 3, stride);
                let out_side = conv1.conv.out_h();
                let conv2 = unit(width, width, out_side, 3, 1);
                let down = (stride == 2).then(|| unit(cin, width, side, 1, 2));
                blocks.push(Block { conv1, conv2, down });
                side = out_side;
            }
            cin = width;
        }
        let fc_weight = next.next().expect("fc.weight");
        let fc_bias = next.next().expect("fc.bias").start;
        Self {
            stem,
            blocks,
            fc_weight,
            fc_bias,
            dim: at,
            col_budget: KEPT_COL_VALUES,
            tape: Mutex::new(Tape::default()),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Floating-point operations to train on one image: 3x the forward
    /// pass's 2 x multiply-adds (the convolutions; the rest is negligible).
    pub fn training_flops_per_image(&self) -> f64 {
        let units = self.units();
        let forward: f64 = units
            .map(|u| 2.0 * (u.conv.cout * u.conv.k() * u.conv.out_hw()) as f64)
            .sum();
        3.0 * forward
    }

    fn tape(&self) -> std::sync::MutexGuard<'_, Tape> {
        // A panic mid-pass leaves buffers that the next pass overwrites anyway.
        self.tape.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The forward pass of `batch` (at most `PASS` images) into `tape`.
    fn forward(&self, params: &[f32], images: &ImageSet, batch: &[usize], tape: &mut Tape) {
        let n = batch.len();
        tape.batch = n;
        tape.input.clear();
        for &i in batch {
            tape.input.extend_from_slice(images.image(i));
        }
        let mut budget = self.col_budget;
        let budget = &mut budget;
        tape.stem.sized(&self.stem, n, budget);
        unit_forward(
            &self.stem,
            params,
            &tape.input,
            n,
            true,
            &mut tape.col,
            &mut tape.stem,
        );
        let (sh, pooled) = (self.stem.conv.out_h(), pooled_side(self.stem.conv.out_h()));
        tape.pooled.resize(64 * n * pooled * pooled, 0.0);
        tape.arg.resize(tape.pooled.len(), 0);
        max_pool3s2(&tape.stem.out, sh, sh, &mut tape.pooled, &mut tape.arg);
        tape.blocks.resize_with(self.blocks.len(), Default::default);
        for (k, block) in self.blocks.iter().enumerate() {
            let (before, rest) = tape.blocks.split_at_mut(k);
            let x: &[f32] = match before.last() {
                Some(previous) => &previous[1].out,
                None => &tape.pooled,
            };
            let [t1, t2, td] = &mut rest[0];
            t1.sized(&block.conv1, n, budget);
            t2.sized(&block.conv2, n, budget);
            unit_forward(&block.conv1, params, x, n, true, &mut tape.col, t1);
            unit_forward(&block.conv2, params, &t1.out, n, false, &mut tape.col, t2);
            let shortcut: &[f32] = match &block.down {
                Some(down) => {
                    td.sized(down, n, budget);
                    unit_forward(down, params, x, n, false, &mut tape.col, td);
                    &td.out
                }
                None => x,
            };
            t2.out
                .par_iter_mut()
                .zip(shortcut.par_iter())
                .for_each(|(o, &s)| *o = (*o + s).max(0.0));
        }
        // Global average pooling and the linear head.
        let last = &tape.blocks[self.blocks.len() - 1][1].out;
        let hw = self.blocks[self.blocks.len() - 1].conv2.conv.out_hw();
        tape.feat.clear();
        tape.feat
            .extend(last.chunks_exact(hw).map(|p| p.iter().sum::<f32>() / hw as f32));
        let w = &params[self.fc_weight.clone()];
        tape.logits.clear();
        tape.logits.extend((0..n).map(|b| {
            params[self.fc_bias]
                + w.iter()
                    .enumerate()
                    .map(|(c, w)| w * tape.feat[c * n + b])
                    .sum::<f32>()
        }));
    }

    fn units(&self) -> impl Iterator<Item = &Unit> {
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| {
            [Some(&b.conv1), Some(&b.conv2), b.down.as_ref()]
                .into_iter()
                .flatten()
        }))
    }

    /// The backward pass of the batch in `tape`, each image's loss weighted
    /// by `tape.dz` (the loss's derivative in its logit).
    fn backward(&self, params: &[f32], tape: &mut Tape, mut pass: Pass) {
        let n = tape.batch;
        let act_len = self.units().map(|u| u.out_len(n)).max().unwrap_or(0);
        let mut work = std::mem::take(&mut tape.work);
        for w in &mut work {
            w.resize(act_len, 0.0);
        }
        let col_len = self.units().map(|u| u.col_len(n)).max().unwrap_or(0);
        tape.dcol.resize(col_len, 0.0);
        let [g_out, gm, t1, t2, g_in] = &mut work;
        // The head: dfeat[c, b] = dz_b w_c, spread evenly over layer4's pixels.
        let w = &params[self.fc_weight.clone()];
        match &mut pass {
            Pass::Sum(grad) => {
                for (c, gw) in grad[self.fc_weight.clone()].iter_mut().enumerate() {
                    *gw += (0..n).map(|b| tape.dz[b] * tape.feat[c * n + b]).sum::<f32>();
                }
                grad[self.fc_bias] += tape.dz[..n].iter().sum::<f32>();
            }
            Pass::Norms(sq) => {
                for (b, sq) in sq.iter_mut().enumerate() {
                    let feat: f64 = (0..512).map(|c| f64::from(tape.feat[c * n + b]).powi(2)).sum();
                    *sq += f64::from(tape.dz[b]).powi(2) * (feat + 1.0);
                }
            }
        }
        let last = self.blocks.len() - 1;
        let hw = self.blocks[last].conv2.conv.out_hw();
        for (i, g) in g_out[..512 * n * hw].iter_mut().enumerate() {
            let (c, b) = (i / (n * hw), i / hw % n);
            *g = tape.dz[b] * w[c] / hw as f32;
        }
        for (k, block) in self.blocks.iter().enumerate().rev() {
            let x: &[f32] = match k {
                0 => &tape.pooled,
                _ => &tape.blocks[k - 1][1].out,
            };
            let [ta, tb, td] = &tape.blocks[k];
            let len2 = block.conv2.out_len(n);
            // Through the final ReLU: both branches get the masked gradient.
            gm[..len2]
                .par_iter_mut()
                .zip(g_out[..len2].par_iter())
                .zip(tb.out.par_iter())
                .for_each(|((m, &g), &o)| *m = if o > 0.0 { g } else { 0.0 });
            let buffers = &mut (&mut tape.col, &mut tape.dcol, &mut tape.spare);
            let in_len = block.conv1.conv.cin * n * block.conv1.conv.in_hw();
            g_in[..in_len].fill(0.0);
            t2[..block.conv1.out_len(n)].fill(0.0);
            unit_backward(
                &block.conv2,
                params,
                &ta.out,
                tb,
                &gm[..len2],
                None,
                t1,
                Some(&mut t2[..]),
                buffers,
                &mut pass,
                n,
            );
            unit_backward(
                &block.conv1,
                params,
                x,
                ta,
                &t2[..block.conv1.out_len(n)],
                Some(&ta.out),
                t1,
                Some(&mut g_in[..]),
                buffers,
                &mut pass,
                n,
            );
            match &block.down {
                Some(down) => {
                    unit_backward(
                        down,
                        params,
                        x,
                        td,
                        &gm[..len2],
                        None,
                        t1,
                        Some(&mut g_in[..]),
                        buffers,
                        &mut pass,
                        n,
                    );
                }
                None => g_in[..in_len]
                    .par_iter_mut()
                    .zip(gm[..len2].par_iter())
                    .for_each(|(g, &m)| *g += m),
            }
            std::mem::swap(g_out, g_in);
        }
        // The stem pooling, then the stem (the images need no gradient).
        let stem = &self.stem;
        let stem_len = stem.out_len(n);
        max_pool3s2_backward(
            &g_out[..tape.pooled.len()],
            &tape.arg,
            stem.conv.out_hw(),
            &mut t2[..stem_len],
        );
        let buffers = &mut (&mut tape.col, &mut tape.dcol, &mut tape.spare);
        unit_backward(
            stem,
            params,
            &tape.input,
            &tape.stem,
            &t2[..stem_len],
            Some(&tape.stem.out),
            t1,
            None,
            buffers,
            &mut pass,
            n,
        );
        tape.work = work;
    }

    /// The mean loss of `batch` and its gradient into `grad` (overwritten).
    pub fn mean_loss_and_gradient(
        &self,
        params: &[f32],
        images: &ImageSet,
        batch: &[usize],
        grad: &mut [f32],
    ) -> f64 {
        grad.fill(0.0);
        let count = batch.len().max(1) as f64;
        let mut guard = self.tape();
        let tape = &mut *guard;
        let mut loss = 0.0;
        for part in batch.chunks(PASS) {
            self.forward(params, images, part, tape);
            tape.dz.clear();
            for (&i, &z) in part.iter().zip(&tape.logits) {
                let z = f64::from(z);
                loss += example_loss(z, images.labels[i]);
                tape.dz.push(((sigmoid(z) - target(images, i)) / count) as f32);
            }
            self.backward(params, tape, Pass::Sum(grad));
        }
        loss / count
    }

    /// Image `batch[j]`'s own loss gradient into row `j` of `out`
    /// (overwritten), one image per pass (the reference the clipped sum is
    /// tested against; DP-SGD itself uses `example_norms`).
    pub fn example_gradients(&self, params: &[f32], images: &ImageSet, batch: &[usize], out: &mut [f32]) {
        for (row, &i) in out.chunks_exact_mut(self.dim).zip(batch) {
            self.mean_loss_and_gradient(params, images, &[i], row);
        }
    }

    /// Each image's gradient norm (squared, into `sq`), keeping the pass's
    /// activations for `add_weighted_gradients`. At most `PASS` images.
    pub fn example_norms(&self, params: &[f32], images: &ImageSet, batch: &[usize], sq: &mut [f64]) {
        assert!(batch.len() <= PASS, "at most {PASS} images per pass");
        let mut guard = self.tape();
        let tape = &mut *guard;
        self.forward(params, images, batch, tape);
        tape.dz.clear();
        for (&i, &z) in batch.iter().zip(&tape.logits) {
            tape.dz.push((sigmoid(f64::from(z)) - target(images, i)) as f32);
        }
        sq[..batch.len()].fill(0.0);
        self.backward(params, tape, Pass::Norms(&mut sq[..batch.len()]));
    }

    /// `grad += sum_j weights[j] x (image j's gradient)` for the batch of
    /// the last `example_norms`, from its kept activations.
    pub fn add_weighted_gradients(&self, params: &[f32], weights: &[f64], grad: &mut [f32]) {
        let mut guard = self.tape();
        let tape = &mut *guard;
        for (dz, &w) in tape.dz.iter_mut().zip(weights) {
            *dz = (f64::from(*dz) * w) as f32;
        }
        self.backward(params, tape, Pass::Sum(grad));
    }

    /// The images' logits.
    pub fn logits(&self, params: &[f32], images: &ImageSet, batch: &[usize]) -> Vec<f32> {
        let mut guard = self.tape();
        let tape = &mut *guard;
        let mut logits = Vec::with_capacity(batch.len());
        for part in batch.chunks(PASS) {
            self.forward(params, images, part, tape);
            logits.extend_from_slice(&tape.logits);
        }
        logits
    }

    /// Pass sizes for DP-SGD's clipped sums.
    pub fn pass_size(&self) -> usize {
        PASS
    }
}

/// A unit's forward pass from its input `x` (CNHW, `n` images).
fn unit_forward(
    unit: &Unit,
    params: &[f32],
    x: &[f32],
    n: usize,
    relu: bool,
    col: &mut Vec<f32>,
    tape: &mut UnitTape,
) {
    let conv = &unit.conv;
    // Scratch for the units that keep none (the backward pass rebuilds
    // theirs in it), as large as the largest of them.
    let col = if tape.kept {
        &mut tape.col[..]
    } else {
        if col.len() < unit.col_len(n) {
            col.resize(unit.col_len(n), 0.0);
        }
        &mut col[..]
    };
    conv.im2col(x, n, col, Threads::All);
    conv.forward(
        &params[unit.weight.clone()],
        None,
        col,
        n,
        &mut tape.y,
        Threads::All,
    );
    let (gamma, beta) = params[unit.affine.clone()].split_at(conv.cout);
    unit.norm.forward(
        &tape.y,
        n,
        conv.out_hw(),
        (gamma, beta),
        relu,
        &mut tape.out,
        &mut tape.stats,
    );
}

/// A unit's backward pass from the gradient of its output `dout` (masked
/// by `relu_out > 0` if the unit ends in ReLU): its parameters' share of
/// `pass`, and its input's gradient added to `dx` when given. `dy` is
/// scratch for the convolution's output gradient.
#[allow(clippy::too_many_arguments)]
fn unit_backward(
    unit: &Unit,
    params: &[f32],
    x: &[f32],
    tape: &UnitTape,
    dout: &[f32],
    relu_out: Option<&[f32]>,
    dy: &mut [f32],
    dx: Option<&mut [f32]>,
    (col, dcol, spare): &mut (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    pass: &mut Pass,
    n: usize,
) {
    let conv = &unit.conv;
    let dy = &mut dy[..unit.out_len(n)];
    let hw = conv.out_hw();
    let gamma = &params[unit.affine.start..unit.affine.start + conv.cout];
    let (affine, example_sq) = match pass {
        Pass::Sum(grad) => (&mut grad[unit.affine.clone()], None),
        Pass::Norms(sq) => {
            spare.clear();
            spare.resize(2 * conv.cout, 0.0);
            (&mut spare[..], Some(&mut **sq))
        }
    };
    let (dgamma, dbeta) = affine.split_at_mut(conv.cout);
    unit.norm.backward(
        &tape.y,
        n,
        hw,
        gamma,
        &tape.stats,
        dout,
        relu_out,
        dy,
        NormGrads {
            dgamma,
            dbeta,
            example_sq,
        },
    );
    let col: &[f32] = if tape.kept {
        &tape.col
    } else {
        conv.im2col(x, n, col, Threads::All);
        col
    };
    match pass {
        Pass::Sum(grad) => {
            conv.add_param_grads(dy, col, n, &mut grad[unit.weight.clone()], None, Threads::All)
        }
        Pass::Norms(sq) => add_conv_example_norms(conv, dy, col, n, sq),
    }
    if let Some(dx) = dx {
        conv.input_grad_col(&params[unit.weight.clone()], dy, n, dcol, Threads::All);
        conv.col2im(dcol, n, dx, Threads::All);
    }
}

/// Adds each image's squared norm of its own weight gradient
/// `dy_b x col_b^T` to `sq[b]`: directly where the layer has many pixels,
/// and where it has few, as the sum of the Gram matrices' product
/// <col_b^T col_b, dy_b^T dy_b> (pixels^2 values instead of the weights').
fn add_conv_example_norms(conv: &Conv2d, dy: &[f32], col: &[f32], n: usize, sq: &mut [f64]) {
    let (hw, k, cout) = (conv.out_hw(), conv.k(), conv.cout);
    let gram = hw * hw * (k + cout) < cout * k * hw;
    let norms: Vec<f64> = (0..n)
        .into_par_iter()
        .map_init(Vec::new, |scratch: &mut Vec<f32>, b| {
            let dy_b = Mat::strided(&dy[b * hw..], cout, hw, n * hw);
            let col_b = Mat::strided(&col[b * hw..], k, hw, n * hw);
            if gram {
                scratch.resize(2 * hw * hw, 0.0);
                let (gc, gd) = scratch.split_at_mut(hw * hw);
                matmul(gc, col_b.t(), col_b, false, Threads::One);
                matmul(gd, dy_b.t(), dy_b, false, Threads::One);
                gc.iter().zip(gd.iter()).map(|(a, b)| f64::from(a * b)).sum()
            } else {
                scratch.resize(cout * k, 0.0);
                matmul(scratch, dy_b, col_b.t(), false, Threads::One);
                scratch.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
            }
        })
        .collect();
    sq.iter_mut().zip(norms).for_each(|(s, v)| *s += v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::images::synth::{generate, SynthSpec};

    fn images(count: usize, size: usize, seed: u64) -> ImageSet {
        generate(&SynthSpec {
            count,
            size,
            seed,
            pneumonia_share: 0.5,
        })
        .unwrap()
    }

    /// The im2col matrices kept from the forward pass give exactly what
    /// rebuilding them in the backward pass gives: with none kept, with
    /// the first units' only, and with all of them.
    #[test]
    fn kept_and_rebuilt_im2col_matrices_give_the_same_gradients() {
        let set = images(3, 32, 8);
        let p = params(9);
        let batch = [0, 1, 2];
        let run = |budget: usize| {
            let mut net = ResNet18::new(32);
            net.col_budget = budget;
            let mut grad = vec![0.0; net.dim()];
            let loss = net.mean_loss_and_gradient(&p, &set, &batch, &mut grad);
            let mut sq = vec![0.0; 3];
            net.example_norms(&p, &set, &batch, &mut sq);
            (loss, grad, sq)
        };
        let all = run(KEPT_COL_VALUES);
        let stem = ResNet18::new(32).stem.conv;
        for budget in [0, stem.k() * 3 * stem.out_hw() + 1] {
            assert!(run(budget) == all, "budget {budget}");
        }
    }

    fn params(seed: u64) -> Vec<f32> {
        let mut p = init_values(&layout_specs(), seed);
        // Norm shifts and scales away from 0 and 1, so their gradients
        // are not special cases.
        let mut at = 0;
        for spec in layout_specs() {
            if spec.shape.len() == 1 && !spec.name.starts_with("fc") {
                for (j, v) in p[at..at + spec.numel()].iter_mut().enumerate() {
                    *v += 0.1 * ((j % 7) as f32 - 3.0) / 3.0;
                }
            }
            at += spec.numel();
        }
        p
    }

    /// torchvision's ResNet-18 has 11,689,512 parameters with a 3-channel
    /// stem and 1000 classes; one channel (-6,272) and one logit (-512,487)
    /// leave 11,170,753, under torchvision's names.
    #[test]
    fn the_layout_is_torchvisions_resnet18_with_one_channel_and_one_logit() {
        let specs = layout_specs();
        assert_eq!(specs.iter().map(TensorSpec::numel).sum::<usize>(), 11_170_753);
        assert_eq!(ResNet18::new(64).dim(), 11_170_753);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        for name in [
            "conv1.weight",
            "bn1.bias",
            "layer1.1.bn2.weight",
            "layer3.0.downsample.0.weight",
            "layer4.1.conv2.weight",
            "fc.bias",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        assert!(!names.contains(&"layer1.0.downsample.0.weight"));
        let at = |n: &str| specs.iter().find(|s| s.name == n).unwrap().shape.clone();
        assert_eq!(at("layer2.0.downsample.0.weight"), vec![128, 64, 1, 1]);
        assert_eq!(at("layer4.0.conv1.weight"), vec![512, 256, 3, 3]);
        // torchvision's init: unit scales, zero shifts, He-normal over fan-out.
        let p = init_values(&specs, 1);
        assert_eq!(p[3136..3200], [1.0; 64]);
        assert_eq!(p[3200..3264], [0.0; 64]);
        let stem = &p[..3136];
        let var = stem.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 3136.0;
        assert!((var / (2.0 / (64.0 * 49.0)) - 1.0).abs() < 0.1, "{var}");
    }

    /// The batch gradient against central differences of the mean loss, at
    /// the largest-gradient coordinate of a spread of tensors (stem, norms,
    /// a 3x3 convolution, a projection shortcut, the head).
    #[test]
    fn gradients_match_finite_differences() {
        let net = ResNet18::new(32);
        let set = images(3, 32, 4);
        let p = params(5);
        let batch = [0, 1, 2];
        let mut grad = vec![0.0; net.dim()];
        net.mean_loss_and_gradient(&p, &set, &batch, &mut grad);
        let mut scratch = vec![0.0; net.dim()];
        let specs = layout_specs();
        let mut at = 0;
        for spec in &specs {
            let range = at..at + spec.numel();
            at += spec.numel();
            if ![
                "conv1.weight",
                "bn1.weight",
                "layer1.0.conv2.weight",
                "layer2.0.downsample.0.weight",
                "layer3.1.bn1.bias",
                "layer4.1.conv1.weight",
                "fc.weight",
            ]
            .contains(&spec.name.as_str())
            {
                continue;
            }
            let i = range
                .clone()
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .unwrap();
            let h = 1e-2 * p[i].abs().max(0.1);
            let loss_at = |v: f32, scratch: &mut Vec<f32>| {
                let mut q = p.clone();
                q[i] = v;
                net.mean_loss_and_gradient(&q, &set, &batch, scratch)
            };
            let fd =
                (loss_at(p[i] + h, &mut scratch) - loss_at(p[i] - h, &mut scratch)) / (2.0 * f64::from(h));
            let g = f64::from(grad[i]);
            assert!(
                (fd - g).abs() <= 5e-2 * g.abs() + 1e-4,
                "{} [{}]: {g} vs {fd}",
                spec.name,
                i - range.start
            );
        }
    }

    fn close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tolerance * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }

    /// GroupNorm keeps images apart: a batch's summed gradient is its
    /// images' own gradients added, and ghost clipping's norms and weighted
    /// sum are those of the per-image gradient vectors.
    #[test]
    fn ghost_clipping_matches_clipped_rows() {
        let net = ResNet18::new(32);
        let set = images(4, 32, 6);
        let p = params(2);
        let batch = [3, 0, 2, 1];
        let dim = net.dim();
        let mut rows = vec![0.0; batch.len() * dim];
        net.example_gradients(&p, &set, &batch, &mut rows);
        // A batch of one is the mean over one image: each row is that
        // image's gradient; their sum is 4x the batch mean's gradient.
        let mut mean = vec![0.0; dim];
        net.mean_loss_and_gradient(&p, &set, &batch, &mut mean);
        let summed: Vec<f32> = (0..dim)
            .map(|j| rows.chunks(dim).map(|r| r[j]).sum::<f32>() / 4.0)
            .collect();
        close("batch gradient", &mean, &summed, 1e-4);
        let mut sq = vec![0.0; batch.len()];
        net.example_norms(&p, &set, &batch, &mut sq);
        let weights = [0.5, 1.0, 0.25, 2.0];
        let mut weighted = vec![0.0; dim];
        net.add_weighted_gradients(&p, &weights, &mut weighted);
        let mut worst = 0f64;
        for (row, &s) in rows.chunks(dim).zip(&sq) {
            let norm = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
            worst = worst.max((s.sqrt() / norm.sqrt() - 1.0).abs());
        }
        assert!(
            worst < 1e-5,
            "ghost norms differ from the rows' by {worst:e} (relative)"
        );
        let want: Vec<f32> = (0..dim)
            .map(|j| {
                rows.chunks(dim)
                    .zip(&weights)
                    .map(|(r, &w)| r[j] * w as f32)
                    .sum()
            })
            .collect();
        close("weighted sum", &weighted, &want, 1e-4);
    }
}
