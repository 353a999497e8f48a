//! The row-hash split of a table into training rows and local test rows:
//! each row's side is a function of its content and a seed, so that it is
//! decided while streaming (no pass to shuffle, no index kept) and no row —
//! nor any exact duplicate of it — is ever on both sides.

use serde::{Deserialize, Serialize};

use super::table::RowBlock;
use crate::error::{ModelError, Result};

/// Which side of the split a view keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Train,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HashSplit {
    seed: u64,
    /// Rows whose hash falls below this (of 2^53) are test rows.
    threshold: u64,
    keep: Side,
}

impl HashSplit {
    /// A `test_fraction` in [0, 1) of rows (in expectation) on the test side.
    pub fn new(seed: u64, test_fraction: f64, keep: Side) -> Result<Self> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(ModelError::Invalid(format!(
                "the test fraction must be in [0, 1), got {test_fraction}"
            )));
        }
        Ok(Self {
            seed,
            threshold: (test_fraction * (1u64 << 53) as f64) as u64,
            keep,
        })
    }

    /// The other side of the same split.
    pub fn other(self) -> Self {
        Self {
            keep: match self.keep {
                Side::Train => Side::Test,
                Side::Test => Side::Train,
            },
            ..self
        }
    }

    pub fn is_test(&self, row: &[f64], label: bool) -> bool {
        let mut h = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        for v in row {
            // +0.0 and -0.0 are the same value: one side for both.
            let bits = if *v == 0.0 { 0 } else { v.to_bits() };
            h = mix(h ^ bits);
        }
        h = mix(h ^ u64::from(label));
        (h >> 11) < self.threshold
    }

    pub fn keeps(&self, row: &[f64], label: bool) -> bool {
        self.is_test(row, label) == (self.keep == Side::Test)
    }

    /// The rows of `block` this side keeps, into `out` (reused).
    pub fn select(&self, block: &RowBlock, out: &mut RowBlock) {
        select(&[RowFilter::Split(*self)], block, out);
    }
}

/// A condition on rows that a table view keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowFilter {
    /// One side of a row-hash split.
    Split(HashSplit),
    /// Rows whose feature `feature` (an index into the table's features)
    /// lies in `[lo, hi)`: a hospital's share of a table sorted by a column.
    Range { feature: usize, lo: f64, hi: f64 },
}

impl RowFilter {
    pub fn keeps(&self, row: &[f64], label: bool) -> bool {
        match self {
            RowFilter::Split(split) => split.keeps(row, label),
            RowFilter::Range { feature, lo, hi } => (*lo..*hi).contains(&row[*feature]),
        }
    }
}

/// The rows of `block` every filter keeps, into `out` (reused).
pub fn select(filters: &[RowFilter], block: &RowBlock, out: &mut RowBlock) {
    out.n_features = block.n_features;
    out.features.clear();
    out.labels.clear();
    for (row, label) in block.rows() {
        if filters.iter().all(|f| f.keeps(row, label)) {
            out.features.extend_from_slice(row);
            out.labels.push(label);
        }
    }
}

/// Cut points splitting `values` into `k` ranges of about equal size:
/// `k + 1` bounds from -inf to +inf for `RowFilter::Range` (ties at a cut
/// all go to the upper range). Sorts `values`.
pub fn quantile_cuts(values: &mut [f64], k: usize) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let mut cuts = Vec::with_capacity(k + 1);
    cuts.push(f64::NEG_INFINITY);
    for i in 1..k {
        let at = (i * values.len() / k).min(values.len().saturating_sub(1));
        cuts.push(values.get(at).copied().unwrap_or(f64::INFINITY));
    }
    cuts.push(f64::INFINITY);
    cuts
}

/// splitmix64's finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(rows: usize) -> RowBlock {
        let mut b = RowBlock {
            n_features: 2,
            ..RowBlock::default()
        };
        for i in 0..rows {
            b.features.extend_from_slice(&[i as f64, (i % 7) as f64 * 0.5]);
            b.labels.push(i % 3 == 0);
        }
        b
    }

    #[test]
    fn the_two_sides_partition_the_rows_at_about_the_fraction() {
        let data = block(20_000);
        let train = HashSplit::new(5, 0.2, Side::Train).unwrap();
        let (mut a, mut b) = (RowBlock::default(), RowBlock::default());
        train.select(&data, &mut a);
        train.other().select(&data, &mut b);
        assert_eq!(a.len() + b.len(), data.len());
        let share = b.len() as f64 / data.len() as f64;
        // Binomial(20000, 0.2): sd 0.0028; 5 sd.
        assert!((share - 0.2).abs() < 0.015, "{share}");
        for (row, label) in b.rows() {
            assert!(train.is_test(row, label));
        }
        // Another seed, another split; the same seed, the same split.
        let other_seed = HashSplit::new(6, 0.2, Side::Test).unwrap();
        let mut c = RowBlock::default();
        other_seed.select(&data, &mut c);
        assert_ne!(c, b);
        let mut again = RowBlock::default();
        HashSplit::new(5, 0.2, Side::Test)
            .unwrap()
            .select(&data, &mut again);
        assert_eq!(again, b);
    }

    #[test]
    fn quantile_cuts_make_equal_ranges_and_ranges_partition_the_rows() {
        let mut values: Vec<f64> = (0..100).rev().map(f64::from).collect();
        let cuts = quantile_cuts(&mut values, 4);
        assert_eq!(cuts, [f64::NEG_INFINITY, 25.0, 50.0, 75.0, f64::INFINITY]);
        let data = block(1_000);
        let mut col: Vec<f64> = data.rows().map(|(r, _)| r[1]).collect();
        let cuts = quantile_cuts(&mut col, 3);
        let mut total = 0;
        for w in cuts.windows(2) {
            let mut out = RowBlock::default();
            select(
                &[RowFilter::Range {
                    feature: 1,
                    lo: w[0],
                    hi: w[1],
                }],
                &data,
                &mut out,
            );
            total += out.len();
        }
        assert_eq!(total, data.len());
    }

    #[test]
    fn duplicates_and_signed_zeros_land_on_one_side_and_fractions_are_checked() {
        let s = HashSplit::new(1, 0.5, Side::Train).unwrap();
        for i in 0..200 {
            let row = [i as f64, 0.0];
            assert_eq!(s.is_test(&row, true), s.is_test(&[i as f64, -0.0], true));
        }
        assert!(HashSplit::new(1, 1.0, Side::Train).is_err());
        assert!(HashSplit::new(1, f64::NAN, Side::Train).is_err());
        let none = HashSplit::new(1, 0.0, Side::Test).unwrap();
        assert!(!none.is_test(&[1.0, 2.0], false));
    }
}
