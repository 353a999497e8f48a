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

/// `dst = lhs x rhs`, or `dst += lhs x rhs` with `accumulate`; `dst` is
/// row-major and contiguous. Single-threaded: callers split the work by image.
pub(super) fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, accumulate: bool) {
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
    // SAFETY: `Mat::new` checked that each view's last element, at
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
            gemm::Parallelism::None,
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
        matmul(&mut c, Mat::new(&a, 2, 3), Mat::new(&b, 3, 4), false);
        assert_eq!(c, naive(&a, &b, 2, 3, 4));
        // (b^T a^T)^T = a b: read both operands transposed.
        let mut ct = vec![0.0; 8];
        let bt: Vec<f32> = (0..12).map(|i| b[(i % 3) * 4 + i / 3]).collect(); // 4x3
        let at: Vec<f32> = (0..6).map(|i| a[(i % 2) * 3 + i / 2]).collect(); // 3x2
        matmul(&mut ct, Mat::new(&at, 3, 2).t(), Mat::new(&bt, 4, 3).t(), false);
        assert_eq!(ct, c);
        matmul(&mut c, Mat::new(&a, 2, 3), Mat::new(&b, 3, 4), true);
        assert_eq!(c, ct.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "needs 12 values")]
    fn a_view_larger_than_its_slice_is_refused() {
        Mat::new(&[0.0; 11], 3, 4);
    }
}
