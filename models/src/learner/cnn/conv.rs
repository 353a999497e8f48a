//! 3x3 convolutions (stride 1, zero padding 1) of one image in CHW layout,
//! as GEMMs over an im2col matrix, with the two gradients training needs.

use super::gemm::{matmul, Mat};

/// One convolution layer's shape: `cin` planes of `h x w` in, `cout` out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conv3x3 {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
}

/// Copies `src` shifted by `dx` columns into `out` (zeros where it has no
/// value), or adds it with `add`.
#[inline]
fn shifted_row(out: &mut [f32], src: &[f32], dx: isize, add: bool) {
    let w = out.len();
    let (o, s) = match dx {
        -1 => (&mut out[1..], &src[..w - 1]),
        0 => (&mut out[..], src),
        _ => (&mut out[..w - 1], &src[1..]),
    };
    if add {
        o.iter_mut().zip(s).for_each(|(o, s)| *o += s);
    } else {
        o.copy_from_slice(s);
        match dx {
            -1 => out[0] = 0.0,
            1 => out[w - 1] = 0.0,
            _ => {}
        }
    }
}

impl Conv3x3 {
    /// Rows of the im2col matrix: one per input plane and tap.
    pub fn k(&self) -> usize {
        self.cin * 9
    }

    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    /// `col[(ci*9 + ky*3 + kx), y*w + x] = input[ci, y+ky-1, x+kx-1]`, zero
    /// outside the image: every row is the plane shifted by one tap.
    pub fn im2col(&self, input: &[f32], col: &mut [f32]) {
        self.for_each_tap(|tap_row, plane_index, dy, dx| {
            let plane = &input[plane_index * self.hw()..][..self.hw()];
            let row = &mut col[tap_row * self.hw()..][..self.hw()];
            for (y, out) in row.chunks_exact_mut(self.w).enumerate() {
                let sy = y as isize + dy;
                if sy < 0 || sy >= self.h as isize {
                    out.fill(0.0);
                } else {
                    shifted_row(out, &plane[sy as usize * self.w..][..self.w], dx, false);
                }
            }
        });
    }

    /// The adjoint of `im2col`: adds each row of `dcol` back onto the plane
    /// position it was read from (`grad` is added to, not overwritten).
    pub fn col2im(&self, dcol: &[f32], grad: &mut [f32]) {
        let (h, w, hw) = (self.h, self.w, self.hw());
        self.for_each_tap(|tap_row, plane_index, dy, dx| {
            let row = &dcol[tap_row * hw..][..hw];
            let plane = &mut grad[plane_index * hw..][..hw];
            // Output pixel y read input row y+dy: send its gradient there.
            for (y, src) in row.chunks_exact(w).enumerate() {
                let sy = y as isize + dy;
                if sy >= 0 && sy < h as isize {
                    // Input x+dx received output x: the shift by -dx.
                    shifted_row(&mut plane[sy as usize * w..][..w], src, -dx, true);
                }
            }
        });
    }

    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, isize, isize)) {
        for ci in 0..self.cin {
            for ky in 0..3 {
                for kx in 0..3 {
                    f(ci * 9 + ky * 3 + kx, ci, ky as isize - 1, kx as isize - 1);
                }
            }
        }
    }

    /// Pre-activations `out[co, hw] = bias[co] + weight[co, :] . col[:, hw]`
    /// (`weight` is `[cout, cin, 3, 3]`, the `Params` layout).
    pub fn forward(&self, weight: &[f32], bias: &[f32], col: &[f32], out: &mut [f32]) {
        let hw = self.hw();
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
        let hw = self.hw();
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
            Mat::new(dout, self.cout, self.hw()),
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time.
    fn direct(conv: &Conv3x3, input: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let (h, w) = (conv.h as isize, conv.w as isize);
        let mut out = vec![0.0; conv.cout * conv.hw()];
        for co in 0..conv.cout {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = bias[co];
                    for ci in 0..conv.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (y + ky - 1, x + kx - 1);
                                if sy >= 0 && sy < h && sx >= 0 && sx < w {
                                    acc += weight[((co * conv.cin + ci) * 3 + ky as usize) * 3 + kx as usize]
                                        * input[(ci as isize * h + sy) as usize * conv.w + sx as usize];
                                }
                            }
                        }
                    }
                    out[co * conv.hw() + (y * w + x) as usize] = acc;
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

    #[test]
    fn forward_matches_the_definition_on_a_non_square_image() {
        let conv = Conv3x3 {
            cin: 3,
            cout: 4,
            h: 5,
            w: 7,
        };
        let (input, weight, bias) = (values(3 * 35, 1), values(4 * 27, 2), values(4, 3));
        let mut col = vec![f32::NAN; conv.k() * conv.hw()];
        conv.im2col(&input, &mut col);
        let mut out = vec![f32::NAN; 4 * 35];
        conv.forward(&weight, &bias, &col, &mut out);
        for (a, b) in out.iter().zip(direct(&conv, &input, &weight, &bias)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// <im2col(x), d> = <x, col2im(d)> for all x and d: col2im is the adjoint.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let conv = Conv3x3 {
            cin: 2,
            cout: 1,
            h: 4,
            w: 6,
        };
        let x = values(2 * 24, 5);
        let d = values(conv.k() * conv.hw(), 6);
        let mut col = vec![0.0; d.len()];
        conv.im2col(&x, &mut col);
        let mut back = vec![0.0; x.len()];
        conv.col2im(&d, &mut back);
        let lhs: f64 = col.iter().zip(&d).map(|(a, b)| f64::from(a * b)).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
        assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
