//! 2-D convolutions of one image in CHW layout (a square kernel, a stride,
//! zero padding), as GEMMs over an im2col matrix, with the two gradients
//! training needs.

use super::gemm::{matmul, Mat};

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

/// `out[x] = src[x + dx]` (zero where that is outside `src`), or
/// `out[x] += src[x + dx]` with `add`; `out` and `src` have one length.
#[inline]
fn shifted_row(out: &mut [f32], src: &[f32], dx: isize, add: bool) {
    let w = out.len();
    let d = dx.unsigned_abs().min(w);
    let (o, s) = if dx < 0 {
        (&mut out[d..], &src[..w - d])
    } else {
        (&mut out[..w - d], &src[d..])
    };
    if add {
        o.iter_mut().zip(s).for_each(|(o, s)| *o += s);
    } else {
        o.copy_from_slice(s);
        if dx < 0 {
            out[..d].fill(0.0);
        } else {
            out[w - d..].fill(0.0);
        }
    }
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

    /// Stride 1 and an output as wide as the input: each im2col row is the
    /// input row shifted, copied in one go.
    fn shifts_rows(&self) -> bool {
        self.stride == 1 && self.out_w() == self.w
    }

    /// `col[(ci*k*k + ky*k + kx), oy*out_w + ox] = input[ci, oy*stride + ky
    /// - pad, ox*stride + kx - pad]`, zero outside the image.
    pub fn im2col(&self, input: &[f32], col: &mut [f32]) {
        let (w, out_w, out_hw) = (self.w, self.out_w(), self.out_hw());
        self.for_each_tap(|tap_row, plane_index, dy, dx| {
            let plane = &input[plane_index * self.in_hw()..][..self.in_hw()];
            let row = &mut col[tap_row * out_hw..][..out_hw];
            for (oy, out) in row.chunks_exact_mut(out_w).enumerate() {
                let Some(sy) = self.source(oy, dy, self.h) else {
                    out.fill(0.0);
                    continue;
                };
                let src = &plane[sy * w..][..w];
                if self.shifts_rows() {
                    shifted_row(out, src, dx, false);
                } else {
                    for (ox, o) in out.iter_mut().enumerate() {
                        *o = self.source(ox, dx, w).map_or(0.0, |sx| src[sx]);
                    }
                }
            }
        });
    }

    /// The adjoint of `im2col`: adds each row of `dcol` back onto the plane
    /// position it was read from (`grad` is added to, not overwritten).
    pub fn col2im(&self, dcol: &[f32], grad: &mut [f32]) {
        let (w, out_w, out_hw, in_hw) = (self.w, self.out_w(), self.out_hw(), self.in_hw());
        self.for_each_tap(|tap_row, plane_index, dy, dx| {
            let row = &dcol[tap_row * out_hw..][..out_hw];
            let plane = &mut grad[plane_index * in_hw..][..in_hw];
            for (oy, src) in row.chunks_exact(out_w).enumerate() {
                let Some(sy) = self.source(oy, dy, self.h) else {
                    continue;
                };
                let dst = &mut plane[sy * w..][..w];
                if self.shifts_rows() {
                    // Input x+dx received output x: the shift by -dx.
                    shifted_row(dst, src, -dx, true);
                } else {
                    for (ox, &g) in src.iter().enumerate() {
                        if let Some(sx) = self.source(ox, dx, w) {
                            dst[sx] += g;
                        }
                    }
                }
            }
        });
    }

    /// The input coordinate that output coordinate `o` reads at tap offset
    /// `d` (padding included), if it lies inside the `len` input values.
    #[inline]
    fn source(&self, o: usize, d: isize, len: usize) -> Option<usize> {
        let s = (o * self.stride) as isize + d;
        (s >= 0 && s < len as isize).then_some(s as usize)
    }

    /// Calls `f(im2col row, input plane, dy, dx)` for every tap, where
    /// (dy, dx) is the tap's offset from the output position times the
    /// stride, padding included.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, isize, isize)) {
        let (k, pad) = (self.kernel, self.pad as isize);
        for ci in 0..self.cin {
            for ky in 0..k {
                for kx in 0..k {
                    f((ci * k + ky) * k + kx, ci, ky as isize - pad, kx as isize - pad);
                }
            }
        }
    }

    /// Pre-activations `out[co, hw] = bias[co] + weight[co, :] . col[:, hw]`
    /// (`weight` is `[cout, cin, kernel, kernel]`, the `Params` layout).
    pub fn forward(&self, weight: &[f32], bias: &[f32], col: &[f32], out: &mut [f32]) {
        let hw = self.out_hw();
        for (plane, &b) in out.chunks_exact_mut(hw).zip(bias) {
            plane.fill(b);
        }
        matmul(
            out,
            Mat::new(weight, self.cout, self.k()),
            Mat::new(col, self.k(), hw),
            true,
        );
    }

    /// `dweight += dout x col^T` and `dbias += the rows' sums`, for the
    /// pre-activation gradient `dout` `[cout, hw]`.
    pub fn add_param_grads(&self, dout: &[f32], col: &[f32], dweight: &mut [f32], dbias: &mut [f32]) {
        let hw = self.out_hw();
        matmul(
            dweight,
            Mat::new(dout, self.cout, hw),
            Mat::new(col, self.k(), hw).t(),
            true,
        );
        for (b, plane) in dbias.iter_mut().zip(dout.chunks_exact(hw)) {
            *b += plane.iter().sum::<f32>();
        }
    }

    /// `dcol = weight^T x dout`: the im2col matrix's gradient (`col2im` turns
    /// it into the input's).
    pub fn input_grad_col(&self, weight: &[f32], dout: &[f32], dcol: &mut [f32]) {
        matmul(
            dcol,
            Mat::new(weight, self.cout, self.k()).t(),
            Mat::new(dout, self.cout, self.out_hw()),
            false,
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
            conv.im2col(&input, &mut col);
            let mut out = vec![f32::NAN; conv.cout * conv.out_hw()];
            conv.forward(&weight, &bias, &col, &mut out);
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
            conv.im2col(&x, &mut col);
            let mut back = vec![0.0; x.len()];
            conv.col2im(&d, &mut back);
            let lhs: f64 = col.iter().zip(&d).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{conv:?}: {lhs} vs {rhs}"
            );
        }
    }
}
