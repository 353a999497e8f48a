//! The `small` network's forward and backward passes, written out layer by
//! layer for one image at a time. A batch's images are split across the
//! cores; each image's parameter gradient is either added into its thread's
//! batch gradient or kept on its own row — DP-SGD's per-example gradients
//! come from the same single backward pass, not one pass per image.
//!
//! Why not candle's autograd: on 64x64 images, batch 32, 2 cores, candle
//! 0.11 trained 270 images/s (`cargo bench --bench cnn_training`); a
//! profile put most of the time outside its GEMMs — element-wise kernels
//! allocating a fresh tensor per op (page faults on every 4 MB activation),
//! the max-pool backward built from upsample/compare/avg-pool ops, and
//! direct-loop convolution backwards. Here a step allocates nothing, the
//! pooling backward is a gather of the saved argmax, and the global max
//! pool's one-pixel-per-channel gradient makes conv3's backward sparse.
//! candle 0.11's max-pool backward also scales the gradient by (ties in the
//! window)/4 — 1/4 for a unique maximum — where the derivative is 1: its
//! conv1 and conv2 gradients were 1/16 and 1/4 of the true ones (see the
//! reference-fixture test in `mod.rs`).

use std::ops::Range;
use std::sync::Mutex;

use rayon::prelude::*;

use super::conv::Conv2d;
use super::gemm::Threads;
use super::pool::{relu_global_max, relu_max_pool2, relu_max_pool_backward};
use super::target;
use super::CnnConfig;
use crate::data::images::ImageSet;
use crate::learner::logistic::{example_loss, sigmoid};

/// The tensors of the `Params` layout, in order.
const W1: usize = 0;
const B1: usize = 1;
const W2: usize = 2;
const B2: usize = 3;
const W3: usize = 4;
const B3: usize = 5;
const FC_W: usize = 6;
const FC_B: usize = 7;

pub(super) struct SmallNet {
    conv: [Conv2d; 3],
    /// Where each tensor of the layout lies in the flat parameter vector.
    at: [Range<usize>; 8],
    /// Per-thread buffers, reused across batches (a step allocates nothing).
    spare: Mutex<Vec<Scratch>>,
}

/// One thread's activations and gradients for the image it is on.
struct Scratch {
    col: Vec<f32>,
    pre: Vec<f32>,
    dpre: Vec<f32>,
    dcol: Vec<f32>,
    dp: Vec<f32>,
    p1: Vec<f32>,
    arg1: Vec<u32>,
    p2: Vec<f32>,
    arg2: Vec<u32>,
    g: Vec<f32>,
    arg3: Vec<u32>,
}

impl SmallNet {
    pub fn new(cfg: &CnnConfig) -> Self {
        let ([c1, c2, c3], s) = (cfg.channels, cfg.size);
        let conv = [
            Conv2d::same3x3(1, c1, s, s),
            Conv2d::same3x3(c1, c2, s / 2, s / 2),
            Conv2d::same3x3(c2, c3, s / 4, s / 4),
        ];
        let layout = cfg.layout();
        let mut start = 0;
        let at: Vec<Range<usize>> = layout
            .specs()
            .iter()
            .map(|spec| {
                start += spec.numel();
                start - spec.numel()..start
            })
            .collect();
        Self {
            conv,
            at: at.try_into().expect("the small CNN's layout has 8 tensors"),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// Number of parameters.
    pub fn dim(&self) -> usize {
        self.at[FC_B].end
    }

    fn scratch(&self) -> Scratch {
        if let Some(s) = self.spare.lock().ok().and_then(|mut spare| spare.pop()) {
            return s;
        }
        let [k1, k2, k3] = &self.conv;
        let cols = [k1, k2, k3].map(|k| k.k() * k.out_hw());
        let outs = [k1, k2, k3].map(|k| k.cout * k.out_hw());
        let pooled1 = k1.cout * k2.in_hw();
        let pooled2 = k2.cout * k3.in_hw();
        Scratch {
            col: vec![0.0; cols.into_iter().max().unwrap_or(0)],
            pre: vec![0.0; outs.into_iter().max().unwrap_or(0)],
            dpre: vec![0.0; outs[0].max(outs[1])],
            dcol: vec![0.0; cols[1]],
            dp: vec![0.0; pooled1.max(pooled2)],
            p1: vec![0.0; pooled1],
            arg1: vec![0; pooled1],
            p2: vec![0.0; pooled2],
            arg2: vec![0; pooled2],
            g: vec![0.0; k3.cout],
            arg3: vec![0; k3.cout],
        }
    }

    fn give_back(&self, scratch: Scratch) {
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(scratch);
        }
    }

    /// The logit of one image; leaves what the backward pass needs in `sc`.
    fn forward(&self, params: &[f32], image: &[f32], sc: &mut Scratch) -> f32 {
        let p = |t: usize| &params[self.at[t].clone()];
        let [k1, k2, k3] = &self.conv;
        k1.im2col(image, 1, &mut sc.col, Threads::One);
        k1.forward(
            p(W1),
            Some(p(B1)),
            &sc.col,
            1,
            &mut sc.pre[..k1.cout * k1.out_hw()],
            Threads::One,
        );
        relu_max_pool2(&sc.pre, k1.cout, k1.h, k1.w, &mut sc.p1, &mut sc.arg1);
        k2.im2col(&sc.p1, 1, &mut sc.col, Threads::One);
        k2.forward(
            p(W2),
            Some(p(B2)),
            &sc.col,
            1,
            &mut sc.pre[..k2.cout * k2.out_hw()],
            Threads::One,
        );
        relu_max_pool2(&sc.pre, k2.cout, k2.h, k2.w, &mut sc.p2, &mut sc.arg2);
        k3.im2col(&sc.p2, 1, &mut sc.col, Threads::One);
        k3.forward(
            p(W3),
            Some(p(B3)),
            &sc.col,
            1,
            &mut sc.pre[..k3.cout * k3.out_hw()],
            Threads::One,
        );
        relu_global_max(&sc.pre, k3.cout, k3.out_hw(), &mut sc.g, &mut sc.arg3);
        p(FC_B)[0] + p(FC_W).iter().zip(&sc.g).map(|(w, g)| w * g).sum::<f32>()
    }

    /// Adds `dz` (the loss's derivative in the logit) times the logit's
    /// gradient into `grad`, right after `forward` of the same image.
    fn backward(&self, params: &[f32], image: &[f32], dz: f32, sc: &mut Scratch, grad: &mut [f32]) {
        let p = |t: usize| &params[self.at[t].clone()];
        let [k1, k2, k3] = &self.conv;
        let [gw1, gb1, gw2, gb2, gw3, gb3, gfc_w, gfc_b] = self.split(grad);
        gfc_b[0] += dz;
        gfc_w.iter_mut().zip(&sc.g).for_each(|(gw, g)| *gw += dz * g);

        // conv3 -> global max: one pixel per channel receives a gradient, so
        // its weight and input gradients are a column of im2col (still in
        // `col` from the forward pass) and a 3x3 scatter per channel.
        let (hw3, w3, h3) = (k3.out_hw(), k3.w as isize, k3.h as isize);
        let dp2 = &mut sc.dp[..k2.cout * hw3];
        dp2.fill(0.0);
        for c in 0..k3.cout {
            if sc.g[c] <= 0.0 {
                continue;
            }
            let d = dz * p(FC_W)[c];
            gb3[c] += d;
            let pos = sc.arg3[c] as usize;
            let weights = &p(W3)[c * k3.k()..][..k3.k()];
            for (tap, (gw, w)) in gw3[c * k3.k()..][..k3.k()].iter_mut().zip(weights).enumerate() {
                *gw += d * sc.col[tap * hw3 + pos];
                let (ci, ky, kx) = (tap / 9, (tap % 9 / 3) as isize - 1, (tap % 3) as isize - 1);
                let (sy, sx) = ((pos / k3.w) as isize + ky, (pos % k3.w) as isize + kx);
                if sy >= 0 && sy < h3 && sx >= 0 && sx < w3 {
                    dp2[ci * hw3 + (sy * w3 + sx) as usize] += d * w;
                }
            }
        }

        // pool2 -> conv2.
        let dpre2 = &mut sc.dpre[..k2.cout * k2.out_hw()];
        relu_max_pool_backward(dp2, &sc.p2, &sc.arg2, k2.cout, k2.out_hw(), dpre2);
        k2.im2col(&sc.p1, 1, &mut sc.col, Threads::One);
        k2.add_param_grads(dpre2, &sc.col, 1, gw2, Some(gb2), Threads::One);
        k2.input_grad_col(p(W2), dpre2, 1, &mut sc.dcol, Threads::One);
        let dp1 = &mut sc.dp[..k1.cout * k2.in_hw()];
        dp1.fill(0.0);
        k2.col2im(&mut sc.dcol, 1, dp1, Threads::One);

        // pool1 -> conv1 (the image needs no gradient).
        let dpre1 = &mut sc.dpre[..k1.cout * k1.out_hw()];
        relu_max_pool_backward(dp1, &sc.p1, &sc.arg1, k1.cout, k1.out_hw(), dpre1);
        k1.im2col(image, 1, &mut sc.col, Threads::One);
        k1.add_param_grads(dpre1, &sc.col, 1, gw1, Some(gb1), Threads::One);
    }

    /// `grad` cut into the layout's tensors.
    fn split<'a>(&self, mut grad: &'a mut [f32]) -> [&'a mut [f32]; 8] {
        let mut parts = Vec::with_capacity(8);
        for range in &self.at {
            let (head, tail) = grad.split_at_mut(range.len());
            parts.push(head);
            grad = tail;
        }
        parts.try_into().unwrap_or_else(|_| unreachable!("eight ranges"))
    }

    /// Images per thread for a batch of `n`.
    fn per_thread(n: usize) -> usize {
        n.div_ceil(rayon::current_num_threads().max(1)).max(1)
    }

    /// The batch's mean loss, and its gradient into `grad` (overwritten).
    pub fn mean_loss_and_gradient(
        &self,
        params: &[f32],
        images: &ImageSet,
        batch: &[usize],
        grad: &mut [f32],
    ) -> f64 {
        let n = batch.len().max(1) as f64;
        let parts: Vec<(f64, Vec<f32>)> = batch
            .par_chunks(Self::per_thread(batch.len()))
            .map(|part| {
                let mut sc = self.scratch();
                let mut g = vec![0.0; self.dim()];
                let mut loss = 0.0;
                for &i in part {
                    let image = images.image(i);
                    let (z, y) = (f64::from(self.forward(params, image, &mut sc)), target(images, i));
                    loss += example_loss(z, images.labels[i]);
                    self.backward(params, image, ((sigmoid(z) - y) / n) as f32, &mut sc, &mut g);
                }
                self.give_back(sc);
                (loss, g)
            })
            .collect();
        grad.fill(0.0);
        let mut loss = 0.0;
        for (l, g) in parts {
            loss += l;
            grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        loss / n
    }

    /// Each image's own loss gradient: image `batch[j]`'s into row `j` of
    /// `out` (`batch.len() x dim`, overwritten).
    pub fn example_gradients(&self, params: &[f32], images: &ImageSet, batch: &[usize], out: &mut [f32]) {
        let dim = self.dim();
        let per_thread = Self::per_thread(batch.len());
        out[..batch.len() * dim]
            .par_chunks_mut(per_thread * dim)
            .zip(batch.par_chunks(per_thread))
            .for_each(|(rows, part)| {
                let mut sc = self.scratch();
                for (row, &i) in rows.chunks_exact_mut(dim).zip(part) {
                    row.fill(0.0);
                    let image = images.image(i);
                    let z = f64::from(self.forward(params, image, &mut sc));
                    self.backward(
                        params,
                        image,
                        (sigmoid(z) - target(images, i)) as f32,
                        &mut sc,
                        row,
                    );
                }
                self.give_back(sc);
            });
    }

    /// The logits of the images `batch`.
    pub fn logits(&self, params: &[f32], images: &ImageSet, batch: &[usize]) -> Vec<f32> {
        batch
            .par_chunks(Self::per_thread(batch.len()))
            .flat_map_iter(|part| {
                let mut sc = self.scratch();
                let z: Vec<f32> = part
                    .iter()
                    .map(|&i| self.forward(params, images.image(i), &mut sc))
                    .collect();
                self.give_back(sc);
                z
            })
            .collect()
    }
}
