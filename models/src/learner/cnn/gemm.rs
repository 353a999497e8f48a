//! Bounds-checked matrix products over the `gemm` crate (the GEMM candle's
//! CPU backend uses). A view's strides make transposes free, so every
//! product of the CNN's layers runs without copying an operand.

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
/// row-major and contiguous.
pub(super) fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, accumulate: bool, threads: Threads) {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert!(dst.len() >= m * n, "the product needs {} values", m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: `Mat::new` and `Mat::strided` checked that each view's last element, at
    // (rows-1)*row_stride + (cols-1)*col_stride, lies inside its slice
    // (a transpose swaps both), `dst` holds m*n values, and `dst` is a
    // unique borrow that cannot alias the shared operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
            match threads {
                Threads::One => gemm::Parallelism::None,
                Threads::All => gemm::Parallelism::Rayon(0),
            },
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

    #[test]
    #[should_panic(expected = "needs 12 values")]
    fn a_view_larger_than_its_slice_is_refused() {
        Mat::new(&[0.0; 11], 3, 4);
    }
}
