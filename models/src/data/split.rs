//! The held-out test split: stratified by label, seeded.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Dataset;
use crate::error::{ModelError, Result};

/// Split into `(train, test)`, keeping each class's share in both parts.
/// Each class contributes `round(fraction * class_size)` rows to the test set.
pub fn stratified_split(data: &Dataset, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(ModelError::Invalid(format!(
            "test fraction must be in (0, 1), got {test_fraction}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for class in [false, true] {
        let mut idx: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] == class).collect();
        idx.shuffle(&mut rng);
        let n_test = (test_fraction * idx.len() as f64).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    if train.is_empty() || test.is_empty() {
        return Err(ModelError::Data(format!(
            "a {test_fraction} test split of {} rows leaves an empty part",
            data.len()
        )));
    }
    // Keep file order inside each part so results do not depend on class order.
    train.sort_unstable();
    test.sort_unstable();
    Ok((data.select(&train), data.select(&test)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let data = gaussian_blobs(1000, 4, 0.3, 1.0, 7);
        let (train, test) = stratified_split(&data, 0.2, 1).unwrap();
        assert_eq!(train.len() + test.len(), 1000);
        let pos = data.positives() as f64;
        assert_eq!(test.positives(), (0.2 * pos).round() as usize);
        let (_, test2) = stratified_split(&data, 0.2, 1).unwrap();
        assert_eq!(test, test2);
        let (_, test3) = stratified_split(&data, 0.2, 2).unwrap();
        assert_ne!(test, test3);
        assert!(stratified_split(&data, 1.0, 1).is_err());
    }
}
