//! Partitioning training rows into hospitals: IID, sorted (the original
//! platform's non-IID scheme) and Dirichlet label skew.

use std::collections::BinaryHeap;

use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase", deny_unknown_fields)]
pub enum Partition {
    /// Shuffle, then cut into K near-equal shards.
    Iid,
    /// Sort by one feature and cut into K contiguous shards.
    Sorted { feature: String },
    /// Per class, shares drawn from Dirichlet(alpha): smaller alpha, more skew.
    Dirichlet { alpha: f64 },
}

/// Rows a Dirichlet shard is topped up to (fewer when there are not enough
/// rows for that many per hospital).
const DIRICHLET_FLOOR: usize = 10;

/// Whether every shard must hold at least one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    /// Training data: a hospital without rows cannot train.
    NonEmpty,
    /// Local test splits: a hospital may have none (it declines federated
    /// evaluation).
    MayBeEmpty,
}

impl Partition {
    pub fn name(&self) -> &'static str {
        match self {
            Partition::Iid => "iid",
            Partition::Sorted { .. } => "sorted",
            Partition::Dirichlet { .. } => "dirichlet",
        }
    }

    /// Row indices of each of `k` shards of `data`, each non-empty. Every
    /// row lands in exactly one shard.
    pub fn split(&self, data: &Dataset, k: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
        self.split_with(data, k, seed, Shards::NonEmpty)
    }

    pub fn split_with(&self, data: &Dataset, k: usize, seed: u64, shards: Shards) -> Result<Vec<Vec<usize>>> {
        match self {
            Partition::Sorted { feature } => {
                check_count(data.len(), k, shards)?;
                let col = data.feature_index(feature)?;
                let mut idx: Vec<usize> = (0..data.len()).collect();
                // Stable sort: ties keep file order, so the result is deterministic.
                idx.sort_by(|&a, &b| data.features[[a, col]].total_cmp(&data.features[[b, col]]));
                Ok(contiguous_shards(&idx, k))
            }
            _ => self.split_labels_with(&data.labels, k, seed, shards),
        }
    }

    /// Partition examples known only by their labels (e.g. images), each
    /// shard non-empty: IID or Dirichlet label skew. `Sorted` needs a
    /// feature column and is refused.
    pub fn split_labels(&self, labels: &[bool], k: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
        self.split_labels_with(labels, k, seed, Shards::NonEmpty)
    }

    pub fn split_labels_with(
        &self,
        labels: &[bool],
        k: usize,
        seed: u64,
        shards: Shards,
    ) -> Result<Vec<Vec<usize>>> {
        check_count(labels.len(), k, shards)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match self {
            Partition::Iid => {
                let mut idx: Vec<usize> = (0..labels.len()).collect();
                idx.shuffle(&mut rng);
                Ok(contiguous_shards(&idx, k))
            }
            Partition::Sorted { feature } => Err(ModelError::Invalid(format!(
                "a sorted partition needs the feature column '{feature}'; these examples have labels only"
            ))),
            Partition::Dirichlet { alpha } => {
                // Up to DIRICHLET_FLOOR rows each while there are enough;
                // a held-out share may be empty only when rows are fewer than hospitals.
                let floor = match shards {
                    Shards::NonEmpty => DIRICHLET_FLOOR.min(labels.len() / k).max(1),
                    Shards::MayBeEmpty => DIRICHLET_FLOOR.min(labels.len() / k),
                };
                dirichlet(labels, k, *alpha, floor, &mut rng)
            }
        }
    }
}

fn check_count(n: usize, k: usize, shards: Shards) -> Result<()> {
    if k == 0 {
        return Err(ModelError::Invalid("hospital count must be at least 1".into()));
    }
    if n < k && shards == Shards::NonEmpty {
        return Err(ModelError::Invalid(format!(
            "{n} rows cannot give each of {k} hospitals a row"
        )));
    }
    Ok(())
}

fn contiguous_shards(order: &[usize], k: usize) -> Vec<Vec<usize>> {
    let n = order.len();
    (0..k)
        .map(|i| order[i * n / k..(i + 1) * n / k].to_vec())
        .collect()
}

/// Per class, shares drawn from Dirichlet(alpha); then every shard below
/// `floor` rows takes rows from the largest shards until it has `floor`
/// (one draw, no retries: it works for any hospital count with enough rows).
fn dirichlet(
    labels: &[bool],
    k: usize,
    alpha: f64,
    floor: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(ModelError::Invalid(format!(
            "dirichlet alpha must be a positive number, got {alpha}"
        )));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|e| ModelError::Invalid(e.to_string()))?;
    let classes: Vec<Vec<usize>> = [false, true]
        .iter()
        .map(|&c| (0..labels.len()).filter(|&i| labels[i] == c).collect())
        .collect();
    let mut shards = vec![Vec::new(); k];
    for class_rows in &classes {
        let mut rows = class_rows.clone();
        rows.shuffle(rng);
        let draws: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
        let total: f64 = draws.iter().sum();
        let mut start = 0usize;
        let mut acc = 0.0;
        for (h, d) in draws.iter().enumerate() {
            acc += d / total;
            let end = if h + 1 == k {
                rows.len()
            } else {
                ((acc * rows.len() as f64).round() as usize).clamp(start, rows.len())
            };
            shards[h].extend_from_slice(&rows[start..end]);
            start = end;
        }
    }
    top_up(&mut shards, floor, rng);
    for s in &mut shards {
        s.sort_unstable();
    }
    Ok(shards)
}

/// Move rows, each drawn at random (a shard holds its negatives before its
/// positives), from the largest shards to those below `floor` (the caller
/// ensures `floor * shards <= rows`, so there is always a donor).
fn top_up(shards: &mut [Vec<usize>], floor: usize, rng: &mut ChaCha8Rng) {
    // (size, shard); an entry whose size is no longer the shard's is stale.
    let mut largest: BinaryHeap<(usize, usize)> =
        shards.iter().enumerate().map(|(i, s)| (s.len(), i)).collect();
    for needy in 0..shards.len() {
        while shards[needy].len() < floor {
            let Some((len, donor)) = largest.pop() else {
                return;
            };
            if len != shards[donor].len() {
                continue;
            }
            if len <= floor {
                return; // no shard has a row to spare
            }
            let row = shards[donor].swap_remove(rng.random_range(0..len));
            shards[needy].push(row);
            largest.push((len - 1, donor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;

    fn covers_every_row_once(shards: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = shards.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    fn positive_share(data: &Dataset, shard: &[usize]) -> f64 {
        shard.iter().filter(|&&i| data.labels[i]).count() as f64 / shard.len() as f64
    }

    #[test]
    fn iid_shards_are_near_equal_and_balanced() {
        let data = gaussian_blobs(1003, 3, 0.4, 1.0, 1);
        let shards = Partition::Iid.split(&data, 5, 9).unwrap();
        covers_every_row_once(&shards, 1003);
        for s in &shards {
            assert!(s.len() == 200 || s.len() == 201);
            assert!((positive_share(&data, s) - 0.4).abs() < 0.1);
        }
    }

    #[test]
    fn sorted_shards_are_contiguous_in_the_feature() {
        let data = gaussian_blobs(500, 3, 0.4, 3.0, 1);
        let p = Partition::Sorted { feature: "x0".into() };
        let shards = p.split(&data, 5, 0).unwrap();
        covers_every_row_once(&shards, 500);
        for pair in shards.windows(2) {
            let max_left = pair[0]
                .iter()
                .map(|&i| data.features[[i, 0]])
                .fold(f64::MIN, f64::max);
            let min_right = pair[1]
                .iter()
                .map(|&i| data.features[[i, 0]])
                .fold(f64::MAX, f64::min);
            assert!(max_left <= min_right);
            assert_eq!(pair[0].len(), 100);
        }
        // The feature separates the classes, so the shards are label-skewed.
        assert!(positive_share(&data, &shards[0]) < 0.1);
        assert!(positive_share(&data, &shards[4]) > 0.9);
        let missing = Partition::Sorted {
            feature: "nope".into(),
        };
        assert!(missing
            .split(&data, 5, 0)
            .unwrap_err()
            .to_string()
            .contains("'nope'"));
    }

    #[test]
    fn dirichlet_skews_labels_more_for_small_alpha() {
        let data = gaussian_blobs(2000, 3, 0.5, 1.0, 3);
        let spread = |alpha: f64| {
            let shards = Partition::Dirichlet { alpha }.split(&data, 5, 4).unwrap();
            covers_every_row_once(&shards, 2000);
            assert!(shards.iter().all(|s| s.len() >= DIRICHLET_FLOOR));
            let shares: Vec<f64> = shards.iter().map(|s| positive_share(&data, s)).collect();
            shares.iter().cloned().fold(f64::MIN, f64::max) - shares.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(spread(0.1) > spread(100.0));
        assert!(spread(100.0) < 0.15);
        assert_eq!(
            Partition::Dirichlet { alpha: 0.5 }.split(&data, 5, 4).unwrap(),
            Partition::Dirichlet { alpha: 0.5 }.split(&data, 5, 4).unwrap()
        );
        assert!(Partition::Dirichlet { alpha: 0.0 }.split(&data, 5, 4).is_err());
    }

    #[test]
    fn too_many_hospitals_is_an_error_that_says_so() {
        let data = gaussian_blobs(3, 2, 0.5, 1.0, 0);
        let e = Partition::Iid.split(&data, 4, 0).unwrap_err().to_string();
        assert!(e.contains("3 rows cannot give each of 4 hospitals a row"), "{e}");
        assert!(Partition::Iid.split(&data, 0, 0).is_err());
        // Local test splits may leave hospitals without rows.
        let shards = Partition::Iid
            .split_with(&data, 4, 0, Shards::MayBeEmpty)
            .unwrap();
        covers_every_row_once(&shards, 3);
        assert_eq!(shards.iter().filter(|s| s.is_empty()).count(), 1);
    }

    #[test]
    fn dirichlet_gives_every_hospital_rows_whatever_the_count() {
        // About the breast-cancer training set's size, into 9 hospitals
        // at alpha 0.5 once needed more than 1000 redraws; and far more hospitals.
        let data = gaussian_blobs(455, 3, 0.37, 1.0, 5);
        for (k, floor) in [(9, 10), (100, 4), (455, 1)] {
            let shards = Partition::Dirichlet { alpha: 0.5 }.split(&data, k, 42).unwrap();
            covers_every_row_once(&shards, 455);
            let smallest = shards.iter().map(Vec::len).min().unwrap();
            assert!(smallest >= floor, "k {k}: smallest shard {smallest}");
        }
        let e = Partition::Dirichlet { alpha: 0.5 }
            .split(&data, 456, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("455 rows cannot give each of 456 hospitals a row"),
            "{e}"
        );
        // Held-out shares keep the floor while there are rows enough, and
        // may be empty only when there are fewer rows than hospitals.
        let shares = Partition::Dirichlet { alpha: 0.5 }
            .split_with(&data, 45, 1, Shards::MayBeEmpty)
            .unwrap();
        assert!(shares.iter().all(|s| s.len() >= 10));
        let shares = Partition::Dirichlet { alpha: 0.5 }
            .split_with(&data, 1000, 1, Shards::MayBeEmpty)
            .unwrap();
        covers_every_row_once(&shares, 455);
    }

    #[test]
    fn topped_up_rows_are_drawn_from_both_classes() {
        // alpha 0.05 leaves most of 100 hospitals short: they are topped up
        // to 10 rows, and those rows must not all be positives.
        let data = gaussian_blobs(2000, 3, 0.5, 1.0, 8);
        let shards = Partition::Dirichlet { alpha: 0.05 }.split(&data, 100, 3).unwrap();
        covers_every_row_once(&shards, 2000);
        let topped: Vec<&Vec<usize>> = shards.iter().filter(|s| s.len() == 10).collect();
        assert!(topped.len() > 20, "{} shards at the floor", topped.len());
        let rows = topped.iter().map(|s| s.len()).sum::<usize>() as f64;
        let positives = topped
            .iter()
            .flat_map(|s| s.iter())
            .filter(|&&i| data.labels[i])
            .count() as f64;
        let share = positives / rows;
        assert!(
            (0.3..0.7).contains(&share),
            "positive share of topped-up rows {share}"
        );
    }
}
