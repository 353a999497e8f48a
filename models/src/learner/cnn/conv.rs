//! 2-D convolutions of one image in CHW layout (a square kernel, a stride,
//! zero padding), as GEMMs over an im2col matrix, with the two gradients
//! training needs.

use rayon::prelude::*;

use super::gemm::{matmul, Mat, Threads};

/// One convolution layer's shape: `cin` planes of `h x w` in, `cout` planes
/// of `out_h() x out_w()` out, a `kernel x kernel` window moved by `stride`
/// over the input padded with `pad` zeros on every side.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

/// `row[o] = src[o + shift]` where `o + shift` lies in `src` (the rest of
/// `row` is left as it is); `row` and `src` have one length.
fn copy_shifted(row: &mut [f32], src: &[f32], shift: isize) {
    let len = row.len();
    let s = shift.unsigned_abs().min(len);
    if shift >= 0 {
        row[..len - s].copy_from_slice(&src[s..]);
    } else {
        row[s..].copy_from_slice(&src[..len - s]);
    }
}

/// `dst[o + shift] += row[o]` where `o + shift` lies in `dst`: the adjoint
/// of `copy_shifted`.
fn add_shifted(dst: &mut [f32], row: &[f32], shift: isize) {
    let len = row.len();
    let s = shift.unsigned_abs().min(len);
    let (d, r) = if shift >= 0 {
        (&mut dst[s..], &row[..len - s])
    } else {
        (&mut dst[..len - s], &row[s..])
    };
    d.iter_mut().zip(r).for_each(|(d, r)| *d += r);
}

impl Conv2d {
    /// A 3x3 convolution with stride 1 and padding 1: the output has the
    /// input's size.
    pub fn same3x3(cin: usize, cout: usize, h: usize, w: usize) -> Self {
        Self {
            cin,
            cout,
            h,
            w,
            kernel: 3,
            stride: 1,
            pad: 1,
        }
    }

    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kernel) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// Rows of the im2col matrix: one per input plane and tap.
    pub fn k(&self) -> usize {
        self.cin * self.kernel * self.kernel
    }

    pub fn in_hw(&self) -> usize {
        self.h * self.w
    }

    pub fn out_hw(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Stride 1 and an output the input's size: a tap's im2col row over
    /// the batch is the channel's planes (adjacent in CNHW) shifted by
    /// `dy * w + dx`, one contiguous copy (ResNet's 16x16 maps would
    /// otherwise be 16-value copies), then the values that crossed a row or
    /// image edge zeroed.
    fn keeps_size(&self) -> bool {
        self.stride == 1 && self.out_w() == self.w && self.out_h() == self.h
    }

    /// The flat offset of tap (dy, dx) when `keeps_size`.
    fn shift(&self, dy: isize, dx: isize) -> isize {
        dy * self.w as isize + dx
    }

    /// Zeroes the entries of a `keeps_size` tap row (one plane per image)
    /// whose source pixel lies outside their image: the padding.
    fn zero_outside(&self, row: &mut [f32], dy: isize, dx: isize) {
        let (h, w) = (self.h, self.w);
        let (ry, rx) = (dy.unsigned_abs().min(h), dx.unsigned_abs().min(w));
        // Lines follow each other across the images too, so a column is one
        // strided walk (per-line fills would be a memset call per value).
        let first = if dx < 0 { 0 } else { w - rx };
        for column in first..first + rx {
            row.iter_mut().skip(column).step_by(w).for_each(|v| *v = 0.0);
        }
        for plane in row.chunks_exact_mut(h * w) {
            if dy < 0 {
                plane[..ry * w].fill(0.0);
            } else {
                plane[(h - ry) * w..].fill(0.0);
            }
        }
    }

    /// `col[(ci*k*k + ky*k + kx), b*out_hw + oy*out_w + ox] = input[ci, b,
    /// oy*stride + ky - pad, ox*stride + kx - pad]`, zero outside the image:
    /// the im2col matrix of `batch` images in CNHW layout (plane (ci, b) at
    /// `(ci*batch + b) * h*w`; one image is plain CHW). Rows in parallel
    /// with `Threads::All`.
    pub fn im2col(&self, input: &[f32], batch: usize, col: &mut [f32], threads: Threads) {
        let row_len = batch * self.out_hw();
        let fill = |(tap_row, row): (usize, &mut [f32])| {
            let (ci, dy, dx) = self.tap(tap_row);
            if self.keeps_size() {
                copy_shifted(row, &input[ci * row_len..][..row_len], self.shift(dy, dx));
                self.zero_outside(row, dy, dx);
                return;
            }
            for (b, out) in row.chunks_exact_mut(self.out_hw()).enumerate() {
                let plane = &input[(ci * batch + b) * self.in_hw()..][..self.in_hw()];
                self.gather_plane(plane, out, dy, dx);
            }
        };
        let col = &mut col[..self.k() * row_len];
        if threads.parallel(col.len()) {
            col.par_chunks_mut(row_len).enumerate().for_each(fill);
        } else {
            col.chunks_mut(row_len).enumerate().for_each(fill);
        }
    }

    /// One tap's im2col row of one plane.
    fn gather_plane(&self, plane: &[f32], row: &mut [f32], dy: isize, dx: isize) {
        let w = self.w;
        for (oy, out) in row.chunks_exact_mut(self.out_w()).enumerate() {
            let Some(sy) = self.source(oy, dy, self.h) else {
                out.fill(0.0);
                continue;
            };
            let src = &plane[sy * w..][..w];
            for (ox, o) in out.iter_mut().enumerate() {
                *o = self.source(ox, dx, w).map_or(0.0, |sx| src[sx]);
            }
        }
    }

    /// The adjoint of `im2col`: adds each row of `dcol` back onto the plane
    /// position it was read from (`grad`, CNHW like the input, is added to,
    /// not overwritten). `dcol` is scratch: its entries that read padding
    /// are zeroed on the way. Input channels in parallel with `Threads::All`.
    pub fn col2im(&self, dcol: &mut [f32], batch: usize, grad: &mut [f32], threads: Threads) {
        let (taps, row_len, in_hw) = (self.kernel * self.kernel, batch * self.out_hw(), self.in_hw());
        let scatter = |(ci, (planes, rows)): (usize, (&mut [f32], &mut [f32]))| {
            for (tap, row) in rows.chunks_exact_mut(row_len).enumerate() {
                let (_, dy, dx) = self.tap(ci * taps + tap);
                if self.keeps_size() {
                    self.zero_outside(row, dy, dx);
                    add_shifted(planes, row, self.shift(dy, dx));
                    continue;
                }
                for (src, plane) in row
                    .chunks_exact(self.out_hw())
                    .zip(planes.chunks_exact_mut(in_hw))
                {
                    self.scatter_plane(src, plane, dy, dx);
                }
            }
        };
        let grad = &mut grad[..self.cin * batch * in_hw];
        let dcol = &mut dcol[..self.k() * row_len];
        if threads.parallel(dcol.len()) {
            grad.par_chunks_mut(batch * in_hw)
                .zip(dcol.par_chunks_mut(taps * row_len))
                .enumerate()
                .for_each(scatter);
        } else {
            grad.chunks_mut(batch * in_hw)
                .zip(dcol.chunks_mut(taps * row_len))
                .enumerate()
                .for_each(scatter);
        }
    }

    /// One tap's im2col row added back onto one plane.
    fn scatter_plane(&self, row: &[f32], plane: &mut [f32], dy: isize, dx: isize) {
        let w = self.w;
        for (oy, src) in row.chunks_exact(self.out_w()).enumerate() {
            let Some(sy) = self.source(oy, dy, self.h) else {
                continue;
            };
            let dst = &mut plane[sy * w..][..w];
            for (ox, &g) in src.iter().enumerate() {
                if let Some(sx) = self.source(ox, dx, w) {
                    dst[sx] += g;
                }
            }
        }
    }

    /// The input coordinate that output coordinate `o` reads at tap offset
    /// `d` (padding included), if it lies inside the `len` input values.
    #[inline]
    fn source(&self, o: usize, d: isize, len: usize) -> Option<usize> {
        let s = (o * self.stride) as isize + d;
        (s >= 0 && s < len as isize).then_some(s as usize)
    }

    /// The input plane of im2col row `tap_row` and the tap's offset
    /// (dy, dx) from the output position times the stride, padding included.
    fn tap(&self, tap_row: usize) -> (usize, isize, isize) {
        let (k, pad) = (self.kernel, self.pad as isize);
        let (ci, ky, kx) = (tap_row / (k * k), tap_row % (k * k) / k, tap_row % k);
        (ci, ky as isize - pad, kx as isize - pad)
    }

    /// Outputs `out[co, n] = bias[co] + weight[co, :] . col[:, n]` for the
    /// `batch` images' columns (`weight` is `[cout, cin, kernel, kernel]`,
    /// the `Params` layout); no bias: ResNet's convolutions, whose norm
    /// layer adds one.
    pub fn forward(
        &self,
        weight: &[f32],
        bias: Option<&[f32]>,
        col: &[f32],
        batch: usize,
        out: &mut [f32],
        threads: Threads,
    ) {
        let n = batch * self.out_hw();
        if let Some(bias) = bias {
            for (plane, &b) in out.chunks_exact_mut(n).zip(bias) {
                plane.fill(b);
            }
        }
        matmul(
            out,
            Mat::new(weight, self.cout, self.k()),
            Mat::new(col, self.k(), n),
            bias.is_some(),
            threads,
        );
    }

    /// `dweight += dout x col^T` (and `dbias += the rows' sums`), for the
    /// output gradient `dout` `[cout, batch * out_hw]`.
    pub fn add_param_grads(
        &self,
        dout: &[f32],
        col: &[f32],
        batch: usize,
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        threads: Threads,
    ) {
        let n = batch * self.out_hw();
        matmul(
            dweight,
            Mat::new(dout, self.cout, n),
            Mat::new(col, self.k(), n).t(),
            true,
            threads,
        );
        if let Some(dbias) = dbias {
            for (b, plane) in dbias.iter_mut().zip(dout.chunks_exact(n)) {
                *b += plane.iter().sum::<f32>();
            }
        }
    }

    /// `dcol = weight^T x dout`: the im2col matrix's gradient (`col2im` turns
    /// it into the input's).
    pub fn input_grad_col(
        &self,
        weight: &[f32],
        dout: &[f32],
        batch: usize,
        dcol: &mut [f32],
        threads: Threads,
    ) {
        matmul(
            dcol,
            Mat::new(weight, self.cout, self.k()).t(),
            Mat::new(dout, self.cout, batch * self.out_hw()),
            false,
            threads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time.
    fn direct(conv: &Conv2d, input: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let (h, w, k) = (conv.h as isize, conv.w as isize, conv.kernel);
        let mut out = vec![0.0; conv.cout * conv.out_hw()];
        for co in 0..conv.cout {
            for oy in 0..conv.out_h() {
                for ox in 0..conv.out_w() {
                    let mut acc = bias[co];
                    for ci in 0..conv.cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let sy = (oy * conv.stride + ky) as isize - conv.pad as isize;
                                let sx = (ox * conv.stride + kx) as isize - conv.pad as isize;
                                if sy >= 0 && sy < h && sx >= 0 && sx < w {
                                    acc += weight[((co * conv.cin + ci) * k + ky) * k + kx]
                                        * input[(ci * conv.h + sy as usize) * conv.w + sx as usize];
                                }
                            }
                        }
                    }
                    out[co * conv.out_hw() + oy * conv.out_w() + ox] = acc;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The shapes the networks use, on non-square images: the small CNN's
    /// 3x3 "same" convolution, and ResNet's 7x7 stride-2 stem, 3x3 stride-2
    /// convolution and 1x1 stride-2 shortcut.
    fn shapes() -> [Conv2d; 4] {
        let conv = |kernel, stride, pad| Conv2d {
            cin: 3,
            cout: 4,
            h: 9,
            w: 12,
            kernel,
            stride,
            pad,
        };
        [
            Conv2d::same3x3(3, 4, 5, 7),
            conv(7, 2, 3),
            conv(3, 2, 1),
            conv(1, 2, 0),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for conv in shapes() {
            let input = values(conv.cin * conv.in_hw(), 1);
            let (weight, bias) = (values(conv.cout * conv.k(), 2), values(conv.cout, 3));
            let mut col = vec![f32::NAN; conv.k() * conv.out_hw()];
            conv.im2col(&input, 1, &mut col, Threads::One);
            let mut out = vec![f32::NAN; conv.cout * conv.out_hw()];
            conv.forward(&weight, Some(&bias), &col, 1, &mut out, Threads::One);
            for (a, b) in out.iter().zip(direct(&conv, &input, &weight, &bias)) {
                assert!((a - b).abs() < 1e-5, "{conv:?}: {a} vs {b}");
            }
        }
        assert_eq!((shapes()[1].out_h(), shapes()[1].out_w()), (5, 6));
    }

    /// <im2col(x), d> = <x, col2im(d)> for all x and d: col2im is the adjoint.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for conv in shapes() {
            let x = values(conv.cin * conv.in_hw(), 5);
            let d = values(conv.k() * conv.out_hw(), 6);
            let mut col = vec![0.0; d.len()];
            conv.im2col(&x, 1, &mut col, Threads::One);
            let mut back = vec![0.0; x.len()];
            conv.col2im(&mut d.clone(), 1, &mut back, Threads::One);
            let lhs: f64 = col.iter().zip(&d).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{conv:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// A batch in CNHW layout, in parallel, gives each image's own outputs
    /// (CHW, one at a time), and col2im's batched adjoint each image's own.
    #[test]
    fn a_batch_is_its_images_side_by_side() {
        let batch = 3;
        for conv in shapes() {
            let images: Vec<Vec<f32>> = (0..batch)
                .map(|b| values(conv.cin * conv.in_hw(), 10 + b as u32))
                .collect();
            // CNHW: channel-major, then image.
            let mut cnhw = vec![0.0; batch * conv.cin * conv.in_hw()];
            for (b, image) in images.iter().enumerate() {
                for (ci, plane) in image.chunks_exact(conv.in_hw()).enumerate() {
                    cnhw[(ci * batch + b) * conv.in_hw()..][..conv.in_hw()].copy_from_slice(plane);
                }
            }
            let weight = values(conv.cout * conv.k(), 2);
            let n = conv.out_hw();
            let mut col = vec![f32::NAN; conv.k() * batch * n];
            conv.im2col(&cnhw, batch, &mut col, Threads::All);
            let mut out = vec![f32::NAN; conv.cout * batch * n];
            conv.forward(&weight, None, &col, batch, &mut out, Threads::All);
            let mut back = vec![0.0; cnhw.len()];
            conv.col2im(&mut col.clone(), batch, &mut back, Threads::All);
            for (b, image) in images.iter().enumerate() {
                let want = direct(&conv, image, &weight, &vec![0.0; conv.cout]);
                for co in 0..conv.cout {
                    let got = &out[(co * batch + b) * n..][..n];
                    for (g, w) in got.iter().zip(&want[co * n..][..n]) {
                        assert!((g - w).abs() < 1e-5, "{conv:?} image {b}: {g} vs {w}");
                    }
                }
                let mut one_col = vec![0.0; conv.k() * n];
                conv.im2col(image, 1, &mut one_col, Threads::One);
                let mut one_back = vec![0.0; image.len()];
                conv.col2im(&mut one_col, 1, &mut one_back, Threads::One);
                for (ci, plane) in one_back.chunks_exact(conv.in_hw()).enumerate() {
                    assert_eq!(plane, &back[(ci * batch + b) * conv.in_hw()..][..conv.in_hw()]);
                }
            }
        }
    }
}
