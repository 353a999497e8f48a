//! Sums over f32 slices in 16 independent lanes. A plain `iter().sum()`
//! is one dependency chain that LLVM may not reorder (it would change the
//! rounding), so it runs at one add per 4 cycles; 16 partial sums are one
//! AVX-512 register (two AVX2 ones) and vectorise. GroupNorm's statistics
//! and gradients spent most of their time in such chains.

const LANES: usize = 16;

/// `sum_i f(a[i], b[i])` for each of the `N` outputs of `f`, in lanes.
#[inline(always)]
fn fold<const N: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; N]) -> [f32; N] {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [[0.0f32; LANES]; N];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            let v = f(ca[l], cb[l]);
            for k in 0..N {
                acc[k][l] += v[k];
            }
        }
    }
    let mut out = [0.0f32; N];
    for (&x, &y) in a_tail.iter().zip(b_tail) {
        let v = f(x, y);
        for k in 0..N {
            out[k] += v[k];
        }
    }
    for k in 0..N {
        out[k] += acc[k].iter().sum::<f32>();
    }
    out
}

/// `sum(v)`.
pub(super) fn sum(v: &[f32]) -> f32 {
    fold(v, v, |x, _| [x])[0]
}

/// `sum((v - mean)^2)`.
pub(super) fn sum_sq_dev(v: &[f32], mean: f32) -> f32 {
    fold(v, v, |x, _| [(x - mean) * (x - mean)])[0]
}

/// `(sum(d * (x - mean)), sum(d))`.
pub(super) fn dot_dev_and_sum(d: &[f32], x: &[f32], mean: f32) -> (f32, f32) {
    let [dot, total] = fold(d, x, |d, x| [d * (x - mean), d]);
    (dot, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_equal_exact_sums_over_every_tail_length() {
        for len in [0, 1, 15, 16, 17, 33, 100] {
            let v: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 2.5).collect();
            let x: Vec<f32> = (0..len).map(|i| (i % 5) as f32 * 0.5).collect();
            let exact = |f: &dyn Fn(usize) -> f64| (0..len).map(f).sum::<f64>();
            assert_eq!(f64::from(sum(&v)), exact(&|i| f64::from(v[i])), "sum {len}");
            let dev = exact(&|i| (f64::from(v[i]) - 0.25).powi(2));
            assert!((f64::from(sum_sq_dev(&v, 0.25)) - dev).abs() < 1e-4, "dev {len}");
            let (dot, total) = dot_dev_and_sum(&v, &x, 1.0);
            let want = exact(&|i| f64::from(v[i]) * (f64::from(x[i]) - 1.0));
            assert!((f64::from(dot) - want).abs() < 1e-4, "dot {len}");
            assert_eq!(f64::from(total), exact(&|i| f64::from(v[i])), "total {len}");
        }
    }
}
