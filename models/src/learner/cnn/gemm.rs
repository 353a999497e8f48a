//! Bounds-checked matrix products over the `gemm` crate (the GEMM candle's
//! CPU backend uses). A view's strides make transposes free, so every
//! product of the CNN's layers runs without copying an operand.

use rayon::prelude::*;

/// A read-only matrix: element (r, c) at `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows x cols` matrix at the start of `data`.
    pub(super) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "a {rows}x{cols} matrix needs {} values",
            rows * cols
        );
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// `rows x cols` at the start of `data`, each row `row_stride` values
    /// after the one before (one image's columns of a batch's matrix).
    pub(super) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            cols <= row_stride || rows <= 1,
            "rows of {cols} values overlap at stride {row_stride}"
        );
        let needed = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * row_stride + cols
        };
        assert!(
            data.len() >= needed,
            "a {rows}x{cols} matrix at stride {row_stride} needs {needed} values"
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose (the same values).
    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// How many threads a product or a layer may use: `One` where the caller
/// already splits the work (by image), `All` for a whole batch's product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Threads {
    One,
    All,
}

impl Threads {
    /// Whether `values` of element-wise work are worth spreading over the
    /// threads (below ~64k, the fork costs more than it saves).
    pub(super) fn parallel(self, values: usize) -> bool {
        self == Threads::All && values >= 1 << 16
    }
}

/// `dst = lhs x rhs`, or `dst += lhs x rhs` with `accumulate`; `dst` is
/// row-major and contiguous. With `Threads::All`, the gemm crate's own
/// threading, except for products of few rows (<= 64), wide, with a short
/// inner dimension, which are cut into one block of `dst` columns per
/// thread, each a single-threaded GEMM: gemm's threading measured 37-50
/// GFLOP/s on ResNet's layer1 forward product (64 x 8192 x 576, 2 threads),
/// one thread alone 62, the two halves side by side ~96.
pub(super) fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, accumulate: bool, threads: Threads) {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    let (m, n) = (lhs.rows, rhs.cols);
    assert!(dst.len() >= m * n, "the product needs {} values", m * n);
    let parts = match threads {
        Threads::One => 1,
        Threads::All => rayon::current_num_threads().max(1),
    };
    if splits_inner(m, n, lhs.cols) {
        return matmul_inner_blocks(dst, lhs, rhs, accumulate, threads);
    }
    if parts == 1 {
        return matmul_one(
            &mut dst[..m * n],
            n,
            lhs,
            rhs,
            accumulate,
            gemm::Parallelism::None,
        );
    }
    if m > 64 || n < 8 * lhs.cols || n < 64 * parts {
        // gemm's own threading does best on every other product.
        return matmul_one(
            &mut dst[..m * n],
            n,
            lhs,
            rhs,
            accumulate,
            gemm::Parallelism::Rayon(0),
        );
    }
    // Column blocks: dst's columns [j0, j1) from rhs's.
    let width = n.div_ceil(parts);
    assert!(
        lhs.fits() && rhs.fits(),
        "an operand view reaches past its values"
    );
    let dst = DstPtr(dst.as_mut_ptr());
    (0..n.div_ceil(width)).into_par_iter().for_each(|p| {
        let (j0, j1) = (p * width, ((p + 1) * width).min(n));
        // SAFETY: dst holds m*n values (asserted above) and each block,
        // columns [j0, j1) of every row, ends at (m-1)*n + j1-1 inside
        // them; the blocks are disjoint, so no two threads write one
        // value, and no reference to dst's values exists meanwhile.
        unsafe {
            gemm_raw(
                dst.at(j0),
                n,
                lhs,
                rhs.columns(j0, j1),
                accumulate,
                gemm::Parallelism::None,
            )
        };
    });
}

/// Inner-dimension block of `matmul_inner_blocks`.
const INNER_BLOCK: usize = 4096;

/// Whether an `m x n` product over `k` is cut along `k`: a weight
/// gradient's (`dout x col^T`: a few hundred rows and columns, an inner
/// dimension of batch x pixels).
fn splits_inner(m: usize, n: usize, k: usize) -> bool {
    k >= 2 * INNER_BLOCK && k >= 4 * m.max(n)
}

/// `lhs x rhs` as the sum of products over fixed blocks of the inner
/// dimension, one single-threaded GEMM per block (in parallel with
/// `Threads::All`), added in block order: the sum is the same whatever the
/// thread count. gemm's own threading splits only rows and columns, of
/// which these products have few: ResNet's layer1 weight gradient at
/// 128x128 (64 x 576 over 32 images x 1,024 pixels) ran at 50-60 GFLOP/s
/// on 2 threads, 130 in blocks; the whole network's weight gradients in
/// 358 -> 219 ms per 32 images.
fn matmul_inner_blocks(dst: &mut [f32], lhs: Mat, rhs: Mat, accumulate: bool, threads: Threads) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    let blocks = k.div_ceil(INNER_BLOCK);
    let mut partial = vec![0.0f32; blocks * m * n];
    let block = |(b, out): (usize, &mut [f32])| {
        let (k0, k1) = (b * INNER_BLOCK, ((b + 1) * INNER_BLOCK).min(k));
        matmul_one(
            out,
            n,
            lhs.columns(k0, k1),
            rhs.rows(k0, k1),
            false,
            gemm::Parallelism::None,
        );
    };
    match threads {
        Threads::All => partial.par_chunks_mut(m * n).enumerate().for_each(block),
        Threads::One => partial.chunks_mut(m * n).enumerate().for_each(block),
    }
    let add = |(r, row): (usize, &mut [f32])| {
        for (j, d) in row.iter_mut().enumerate() {
            let sum = partial[r * n + j..].iter().step_by(m * n).sum::<f32>();
            *d = if accumulate { *d + sum } else { sum };
        }
    };
    match threads {
        Threads::All => dst[..m * n].par_chunks_mut(n).enumerate().for_each(add),
        Threads::One => dst[..m * n].chunks_mut(n).enumerate().for_each(add),
    }
}

/// dst's base pointer, shared by the threads that write disjoint blocks.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: used only to hand each thread a block no other thread touches.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the slice it was taken from.
        unsafe { self.0.add(offset) }
    }
}

impl<'a> Mat<'a> {
    /// Columns [c0, c1) of this matrix.
    fn columns(self, c0: usize, c1: usize) -> Self {
        let offset = if c1 > c0 { c0 * self.col_stride } else { 0 };
        Self {
            data: &self.data[offset..],
            cols: c1 - c0,
            ..self
        }
    }

    /// Rows [r0, r1) of this matrix.
    fn rows(self, r0: usize, r1: usize) -> Self {
        self.t().columns(r0, r1).t()
    }

    /// Whether the last element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// One GEMM into `dst`, whose rows are `dst_stride` apart, on `threads`
/// of gemm's own.
fn matmul_one(
    dst: &mut [f32],
    dst_stride: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    threads: gemm::Parallelism,
) {
    let (m, n) = (lhs.rows, rhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() > (m - 1) * dst_stride + n - 1,
        "the product's block does not fit"
    );
    assert!(
        lhs.fits() && rhs.fits(),
        "an operand view reaches past its values"
    );
    // SAFETY: checked just above: the block and both views lie inside
    // their slices, and `dst` is a unique borrow that cannot alias them.
    unsafe { gemm_raw(dst.as_mut_ptr(), dst_stride, lhs, rhs, accumulate, threads) }
}

/// The gemm crate's product into the `lhs.rows x rhs.cols` block at `dst`
/// (rows `dst_stride` apart), on `threads` of gemm's own.
///
/// # Safety
/// The block must lie inside one allocation that nothing else reads or
/// writes meanwhile, and both views must `fit`.
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_stride: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    threads: gemm::Parallelism,
) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: row r's n values lie inside the block (caller).
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_stride), n).fill(0.0) };
            }
        }
        return;
    }
    // SAFETY: the caller's contract: dst's block and the views are in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n)
            .map(|i| (0..k).map(|j| a[i / n * k + j] * b[j * n + i % n]).sum())
            .collect()
    }

    #[test]
    fn products_and_transposed_views_match_the_definition() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 2x3
        let b: Vec<f32> = (0..12).map(|v| (v as f32) * 0.5 - 2.0).collect(); // 3x4
        let mut c = vec![0.0; 8];
        matmul(
            &mut c,
            Mat::new(&a, 2, 3),
            Mat::new(&b, 3, 4),
            false,
            Threads::One,
        );
        assert_eq!(c, naive(&a, &b, 2, 3, 4));
        // (b^T a^T)^T = a b: read both operands transposed.
        let mut ct = vec![0.0; 8];
        let bt: Vec<f32> = (0..12).map(|i| b[(i % 3) * 4 + i / 3]).collect(); // 4x3
        let at: Vec<f32> = (0..6).map(|i| a[(i % 2) * 3 + i / 2]).collect(); // 3x2
        matmul(
            &mut ct,
            Mat::new(&at, 3, 2).t(),
            Mat::new(&bt, 4, 3).t(),
            false,
            Threads::All,
        );
        assert_eq!(ct, c);
        matmul(&mut c, Mat::new(&a, 2, 3), Mat::new(&b, 3, 4), true, Threads::One);
        // A strided view: the 2x2 corner of the 3x4 b, and of a with stride 3.
        let mut corner = vec![0.0; 4];
        matmul(
            &mut corner,
            Mat::strided(&a, 2, 2, 3),
            Mat::strided(&b, 2, 2, 4),
            false,
            Threads::One,
        );
        assert_eq!(
            corner,
            naive(&[0.0, 1.0, 3.0, 4.0], &[-2.0, -1.5, 0.0, 0.5], 2, 2, 2)
        );
        assert_eq!(c, ct.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    }

    /// Every path of `matmul`: one thread, gemm's threads, the column
    /// blocks of a few-rows, wide, short-inner product, and the inner
    /// blocks of a long-inner one (accumulating too).
    #[test]
    fn threaded_products_match_the_definition() {
        assert!(splits_inner(2, 3, 2 * INNER_BLOCK + 5));
        for (m, k, n) in [(3, 4, 300), (80, 5, 90), (2, 50, 70), (2, 2 * INNER_BLOCK + 5, 3)] {
            let a: Vec<f32> = (0..m * k).map(|v| (v % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..k * n).map(|v| (v % 5) as f32 * 0.5).collect();
            let want = naive(&a, &b, m, k, n);
            for threads in [Threads::One, Threads::All] {
                let mut c = vec![1.0; m * n];
                matmul(&mut c, Mat::new(&a, m, k), Mat::new(&b, k, n), false, threads);
                assert_eq!(c, want, "{m}x{k}x{n} {threads:?}");
                matmul(&mut c, Mat::new(&a, m, k), Mat::new(&b, k, n), true, threads);
                assert_eq!(c, want.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    #[should_panic(expected = "needs 12 values")]
    fn a_view_larger_than_its_slice_is_refused() {
        Mat::new(&[0.0; 11], 3, 4);
    }
}
