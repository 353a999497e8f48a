//! Synthetic tabular data for tests and demos. SYNTHETIC: not patient data.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::Dataset;

/// Two Gaussian blobs in `dims` dimensions, features named `x0..`.
/// Positives (share `positive_share`) are shifted by `separation` along
/// every axis. Labelled synthetic; for tests and demos only.
pub fn gaussian_blobs(rows: usize, dims: usize, positive_share: f64, separation: f64, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut features = Array2::zeros((rows, dims));
    let mut labels = Vec::with_capacity(rows);
    for r in 0..rows {
        let positive = rng.random::<f64>() < positive_share;
        for d in 0..dims {
            let z: f64 = rng.sample(StandardNormal);
            features[[r, d]] = z + if positive { separation } else { 0.0 };
        }
        labels.push(positive);
    }
    let names = (0..dims).map(|d| format!("x{d}")).collect();
    Dataset::new(names, features, labels).expect("shapes are consistent by construction")
}
