//! ReLU fused with the max poolings that follow it. ReLU and max commute
//! (relu(max(window)) = max(relu(window))), so the pooled value is
//! max(0, max of the pre-activations), and the gradient reaches the
//! pre-activation that held the maximum only when that maximum is positive
//! (ReLU's derivative at 0 taken as 0, as PyTorch takes it). And ResNet's
//! stem pooling, on planes already through ReLU.

use rayon::prelude::*;

/// ReLU then 2x2 max pooling with stride 2 of `c` planes of `h x w`
/// pre-activations (a trailing odd row or column is dropped, as floor
/// pooling does). `arg[c, j]` is the plane index that held the maximum
/// (the first one on ties, in row-major order).
pub(super) fn relu_max_pool2(input: &[f32], c: usize, h: usize, w: usize, out: &mut [f32], arg: &mut [u32]) {
    let (ph, pw) = (h / 2, w / 2);
    for ch in 0..c {
        let plane = &input[ch * h * w..][..h * w];
        let (o, a) = (
            &mut out[ch * ph * pw..][..ph * pw],
            &mut arg[ch * ph * pw..][..ph * pw],
        );
        for py in 0..ph {
            let top = &plane[2 * py * w..][..w];
            let bottom = &plane[(2 * py + 1) * w..][..w];
            for px in 0..pw {
                let at = [
                    (top[2 * px], 2 * py * w + 2 * px),
                    (top[2 * px + 1], 2 * py * w + 2 * px + 1),
                    (bottom[2 * px], (2 * py + 1) * w + 2 * px),
                    (bottom[2 * px + 1], (2 * py + 1) * w + 2 * px + 1),
                ];
                let (mut best, mut best_at) = at[0];
                for &(v, i) in &at[1..] {
                    if v > best {
                        (best, best_at) = (v, i);
                    }
                }
                o[py * pw + px] = best.max(0.0);
                a[py * pw + px] = best_at as u32;
            }
        }
    }
}

/// The pre-activations' gradient from the pooled values' `dout`:
/// `dinput` (all `c` planes of `plane` values) is overwritten, non-zero only
/// at the maxima that were positive.
pub(super) fn relu_max_pool_backward(
    dout: &[f32],
    pooled: &[f32],
    arg: &[u32],
    c: usize,
    plane: usize,
    dinput: &mut [f32],
) {
    dinput[..c * plane].fill(0.0);
    let per_plane = dout.len() / c.max(1);
    for ch in 0..c {
        let base = ch * plane;
        let range = ch * per_plane..(ch + 1) * per_plane;
        for ((&d, &p), &a) in dout[range.clone()]
            .iter()
            .zip(&pooled[range.clone()])
            .zip(&arg[range])
        {
            if p > 0.0 {
                dinput[base + a as usize] = d;
            }
        }
    }
}

/// ReLU then the maximum over each of `c` planes of `plane` values (global
/// max pooling): `out[c]` and the index that held it.
pub(super) fn relu_global_max(input: &[f32], c: usize, plane: usize, out: &mut [f32], arg: &mut [u32]) {
    for ch in 0..c {
        let values = &input[ch * plane..][..plane];
        let (mut best, mut best_at) = (values[0], 0);
        for (i, &v) in values.iter().enumerate().skip(1) {
            if v > best {
                (best, best_at) = (v, i);
            }
        }
        out[ch] = best.max(0.0);
        arg[ch] = best_at as u32;
    }
}

/// Output side of ResNet's stem pooling (3x3 window, stride 2, padding 1).
pub(super) fn pooled_side(side: usize) -> usize {
    (side + 2 - 3) / 2 + 1
}

/// 3x3 max pooling with stride 2 and padding 1 (ResNet's stem) of every
/// `h x w` plane of `input`; the padding never wins (PyTorch pads with
/// -inf). `arg` holds the plane index of each maximum (the first on ties).
pub(super) fn max_pool3s2(input: &[f32], h: usize, w: usize, out: &mut [f32], arg: &mut [u32]) {
    let (oh, ow) = (pooled_side(h), pooled_side(w));
    input
        .par_chunks(h * w)
        .zip(out.par_chunks_mut(oh * ow))
        .zip(arg.par_chunks_mut(oh * ow))
        .for_each(|((plane, out), arg)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut best_at) = (f32::NEG_INFINITY, 0);
                    for y in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                        for x in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                            if plane[y * w + x] > best {
                                (best, best_at) = (plane[y * w + x], y * w + x);
                            }
                        }
                    }
                    out[oy * ow + ox] = best;
                    arg[oy * ow + ox] = best_at as u32;
                }
            }
        });
}

/// `max_pool3s2`'s input gradient (overwritten): each output's gradient
/// added at its maximum (windows overlap, so a pixel can get several).
pub(super) fn max_pool3s2_backward(dout: &[f32], arg: &[u32], in_plane: usize, dinput: &mut [f32]) {
    let out_plane = dout.len() / (dinput.len() / in_plane).max(1);
    dinput
        .par_chunks_mut(in_plane)
        .zip(dout.par_chunks(out_plane))
        .zip(arg.par_chunks(out_plane))
        .for_each(|((dinput, dout), arg)| {
            dinput.fill(0.0);
            for (&d, &a) in dout.iter().zip(arg) {
                dinput[a as usize] += d;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_takes_the_positive_maximum_and_routes_the_gradient_to_it() {
        // One 3x4 plane: the odd last row is dropped.
        let x = [1.0, -2.0, -1.0, -3.0, 4.0, 0.5, -5.0, -0.5, 9.0, 9.0, 9.0, 9.0];
        let (mut out, mut arg) = ([0.0; 2], [0u32; 2]);
        relu_max_pool2(&x, 1, 3, 4, &mut out, &mut arg);
        assert_eq!(out, [4.0, 0.0]); // max(1, -2, 4, 0.5); relu(max(-1, -3, -5, -0.5))
        assert_eq!(arg, [4, 7]);
        let mut dx = [f32::NAN; 12];
        relu_max_pool_backward(&[10.0, 20.0], &out, &arg, 1, 12, &mut dx);
        let mut want = [0.0; 12];
        want[4] = 10.0; // the second window's maximum was negative: no gradient
        assert_eq!(dx, want);
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        let (mut out, mut arg) = ([0.0; 1], [0u32; 1]);
        relu_max_pool2(&[2.0, 2.0, 2.0, 2.0], 1, 2, 2, &mut out, &mut arg);
        assert_eq!((out[0], arg[0]), (2.0, 0));
        let (mut g, mut ga) = ([0.0; 2], [0u32; 2]);
        relu_global_max(&[1.0, 3.0, 3.0, -1.0, -2.0, -3.0], 2, 3, &mut g, &mut ga);
        assert_eq!((g, ga), ([3.0, 0.0], [1, 0]));
    }

    #[test]
    fn stem_pooling_takes_3x3_windows_at_stride_2_and_routes_overlaps() {
        // One 4x4 plane: outputs 2x2, windows rows/cols {0,1}, {1,2,3}.
        let x: Vec<f32> = [1, 5, 2, 0, 3, 4, 9, 1, 0, 8, 2, 6, 7, 1, 0, 2]
            .map(|v| v as f32)
            .to_vec();
        let (mut out, mut arg) = ([0.0; 4], [0u32; 4]);
        max_pool3s2(&x, 4, 4, &mut out, &mut arg);
        assert_eq!(out, [5.0, 9.0, 8.0, 9.0]);
        assert_eq!(arg, [1, 6, 9, 6]);
        let mut dx = [f32::NAN; 16];
        max_pool3s2_backward(&[1.0, 2.0, 3.0, 4.0], &arg, 16, &mut dx);
        let mut want = [0.0; 16];
        (want[1], want[6], want[9]) = (1.0, 6.0, 3.0);
        assert_eq!(dx, want);
        assert_eq!((pooled_side(32), pooled_side(7)), (16, 4));
    }
}
