//! Public per-feature bounds: data-independent knowledge of each feature's
//! range (e.g. published value ranges). They give a scaler that costs no
//! privacy budget, and the clipping range of private feature statistics.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;
use serde::Deserialize;

use super::mechanisms::{release_sums, NoiseSource, Noised};
use super::PrivacyError;
use crate::data::{MomentSums, Standardizer};
use crate::error::ModelError;

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBounds {
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BoundsFile {
    bounds: BTreeMap<String, [f64; 2]>,
}

impl FeatureBounds {
    /// Read `[bounds] name = [lo, hi]` for every one of `feature_names`.
    pub fn load(path: &Path, feature_names: &[String]) -> Result<Self, PrivacyError> {
        let shown = path.display().to_string();
        let err = |message: String| PrivacyError::Invalid(format!("feature bounds {shown}: {message}"));
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: BoundsFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut lo = Vec::with_capacity(feature_names.len());
        let mut hi = Vec::with_capacity(feature_names.len());
        for name in feature_names {
            let [l, h] = file
                .bounds
                .get(name)
                .ok_or_else(|| err(format!("no bounds for feature '{name}'")))?;
            if !(l.is_finite() && h.is_finite() && h > l) {
                return Err(err(format!(
                    "bounds of '{name}' must be finite with lo < hi, got [{l}, {h}]"
                )));
            }
            lo.push(*l);
            hi.push(*h);
        }
        if let Some(extra) = file.bounds.keys().find(|k| !feature_names.contains(k)) {
            return Err(err(format!("bounds given for '{extra}', which is not a feature")));
        }
        Ok(Self { lo, hi })
    }

    /// Maps each feature's public range onto [-1, 1]. Costs no budget.
    pub fn standardizer(&self) -> Standardizer {
        Standardizer {
            mean: self.lo.iter().zip(&self.hi).map(|(l, h)| 0.5 * (l + h)).collect(),
            std: self.lo.iter().zip(&self.hi).map(|(l, h)| 0.5 * (h - l)).collect(),
        }
    }

    /// Count, sums and sums of squares of the features clipped to their
    /// bounds, released through the Gaussian mechanism. Each record moves the
    /// count by 1 and each normalised sum and sum of squares by at most 1, so
    /// the L2 sensitivity is sqrt(1 + 2d). Returned in raw feature units
    /// (post-processing of the noisy values).
    pub fn private_sums(
        &self,
        features: &Array2<f64>,
        noise_multiplier: f64,
        noise: &mut NoiseSource,
    ) -> Result<Noised<MomentSums>, ModelError> {
        let mut exact = self.clipped_sums();
        for row in features.rows() {
            self.add_clipped(row.iter().copied(), &mut exact);
        }
        self.release_clipped(exact, noise_multiplier, noise)
    }

    /// Zeroed clipped sums: [count, normalised sums (d), normalised sums of
    /// squares (d)], to fill with `add_clipped` record by record.
    pub fn clipped_sums(&self) -> Vec<f64> {
        vec![0.0; 1 + 2 * self.lo.len()]
    }

    /// Add one record, each feature clipped to its bounds and mapped to [0, 1].
    pub fn add_clipped(&self, row: impl Iterator<Item = f64>, exact: &mut [f64]) {
        let d = self.lo.len();
        exact[0] += 1.0;
        for (j, v) in row.take(d).enumerate() {
            let range = self.hi[j] - self.lo[j];
            let u = (v.clamp(self.lo[j], self.hi[j]) - self.lo[j]) / range;
            exact[1 + j] += u;
            exact[1 + d + j] += u * u;
        }
    }

    /// Release sums made by `add_clipped` through the Gaussian mechanism.
    pub fn release_clipped(
        &self,
        exact: Vec<f64>,
        noise_multiplier: f64,
        noise: &mut NoiseSource,
    ) -> Result<Noised<MomentSums>, ModelError> {
        let d = self.lo.len();
        if exact.len() != 1 + 2 * d {
            return Err(ModelError::Invalid(format!(
                "clipped sums of {} values for {d} features",
                exact.len()
            )));
        }
        let sensitivity = (1.0 + 2.0 * d as f64).sqrt();
        let released = release_sums(exact, sensitivity, noise_multiplier, noise)?;
        let (lo, hi) = (self.lo.clone(), self.hi.clone());
        Ok(released.map(move |v| {
            let count = v[0].max(1.0);
            let (su, su2) = (&v[1..=d], &v[1 + d..]);
            let mut sum = vec![0.0; d];
            let mut sum_sq = vec![0.0; d];
            for j in 0..d {
                let (l, r) = (lo[j], hi[j] - lo[j]);
                sum[j] = count * l + r * su[j];
                sum_sq[j] = count * l * l + 2.0 * l * r * su[j] + r * r * su2[j];
            }
            MomentSums { count, sum, sum_sq }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn loads_and_maps_ranges_to_unit_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[bounds]\na = [0.0, 10.0]\nb = [-1.0, 3.0]\n").unwrap();
        let b = FeatureBounds::load(&path, &names()).unwrap();
        let s = b.standardizer();
        assert_eq!(s.mean, vec![5.0, 1.0]);
        assert_eq!(s.std, vec![5.0, 2.0]);
        std::fs::write(&path, "[bounds]\na = [0.0, 10.0]\n").unwrap();
        let e = FeatureBounds::load(&path, &names()).unwrap_err();
        assert!(e.to_string().contains("no bounds for feature 'b'"), "{e}");
        std::fs::write(&path, "[bounds]\na = [1.0, 1.0]\nb = [0.0, 1.0]\n").unwrap();
        assert!(FeatureBounds::load(&path, &names()).is_err());
    }

    #[test]
    fn private_sums_are_unbiased_around_the_clipped_truth() {
        let b = FeatureBounds {
            lo: vec![0.0],
            hi: vec![10.0],
        };
        let x = Array2::from_shape_vec((4, 1), vec![1.0, 2.0, 3.0, 40.0]).unwrap();
        // Tiny noise: the clipped truth comes back (40 is clipped to 10).
        let s = b
            .private_sums(&x, 1e-9, &mut NoiseSource::seeded(1))
            .unwrap()
            .into_value();
        assert!((s.count - 4.0).abs() < 1e-6);
        assert!((s.sum[0] - 16.0).abs() < 1e-6);
        assert!((s.sum_sq[0] - (1.0 + 4.0 + 9.0 + 100.0)).abs() < 1e-6);
    }
}
