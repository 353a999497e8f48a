//! Federated standardisation. Each hospital releases only per-feature counts,
//! sums and sums of squares of its own rows; the coordinator adds them up.
//! No pooled data is ever used to fit the scaler.

use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Sufficient statistics for mean and variance of each feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MomentSums {
    pub count: f64,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

impl MomentSums {
    pub fn of(features: &Array2<f64>) -> Self {
        Self {
            count: features.nrows() as f64,
            sum: features.sum_axis(Axis(0)).to_vec(),
            sum_sq: features.mapv(|v| v * v).sum_axis(Axis(0)).to_vec(),
        }
    }

    pub fn n_features(&self) -> usize {
        self.sum.len()
    }

    /// Add the sums of several hospitals.
    pub fn combine<'a>(parts: impl IntoIterator<Item = &'a MomentSums>) -> Result<MomentSums> {
        let mut iter = parts.into_iter();
        let mut total = iter
            .next()
            .cloned()
            .ok_or_else(|| ModelError::Data("no feature statistics to combine".into()))?;
        for part in iter {
            if part.n_features() != total.n_features() {
                return Err(ModelError::Data(format!(
                    "feature statistics disagree: {} vs {} features",
                    part.n_features(),
                    total.n_features()
                )));
            }
            total.count += part.count;
            for (t, p) in total.sum.iter_mut().zip(&part.sum) {
                *t += p;
            }
            for (t, p) in total.sum_sq.iter_mut().zip(&part.sum_sq) {
                *t += p;
            }
        }
        let finite = total.count.is_finite() && total.sum.iter().chain(&total.sum_sq).all(|v| v.is_finite());
        if !finite {
            return Err(ModelError::Data(
                "the combined feature statistics overflow".into(),
            ));
        }
        Ok(total)
    }
}

/// Per-feature mean and (population) standard deviation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardizer {
    pub fn from_sums(sums: &MomentSums) -> Result<Self> {
        if sums.count.is_nan() || sums.count < 1.0 {
            return Err(ModelError::Data(format!(
                "feature statistics cover {} rows; at least 1 is needed",
                sums.count
            )));
        }
        let n = sums.count;
        let mean: Vec<f64> = sums.sum.iter().map(|s| s / n).collect();
        let std = sums
            .sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| {
                let var = (sq / n - m * m).max(0.0);
                // A constant feature keeps its scale instead of dividing by zero.
                if var > 0.0 {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { mean, std })
    }

    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    pub fn apply(&self, features: &Array2<f64>) -> Result<Array2<f64>> {
        if features.ncols() != self.n_features() {
            return Err(ModelError::Data(format!(
                "standardizer has {} features, data has {}",
                self.n_features(),
                features.ncols()
            )));
        }
        let mut out = features.clone();
        for (j, mut col) in out.axis_iter_mut(Axis(1)).enumerate() {
            let (m, s) = (self.mean[j], self.std[j]);
            col.mapv_inplace(|v| (v - m) / s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::csv::{load_csv, CsvSpec};
    use crate::data::Partition;

    /// Two-pass mean and population std of the pooled matrix: the reference.
    fn pooled(features: &Array2<f64>) -> (Vec<f64>, Vec<f64>) {
        let n = features.nrows() as f64;
        let mean: Vec<f64> = features.sum_axis(Axis(0)).iter().map(|s| s / n).collect();
        let std = features
            .axis_iter(Axis(1))
            .zip(&mean)
            .map(|(col, m)| (col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt())
            .collect();
        (mean, std)
    }

    #[test]
    fn federated_equals_pooled_on_breast_cancer() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/breast_cancer_wisconsin.csv");
        let spec = CsvSpec {
            label_column: "diagnosis".into(),
            positive_class: "M".into(),
        };
        let data = load_csv(&path, &spec).unwrap();
        let shards = Partition::Sorted {
            feature: "mean_radius".into(),
        }
        .split(&data, 5, 0)
        .unwrap();
        // Each hospital computes its sums on its own rows only.
        let parts: Vec<MomentSums> = shards
            .iter()
            .map(|s| MomentSums::of(&data.select(s).features))
            .collect();
        let fed = Standardizer::from_sums(&MomentSums::combine(&parts).unwrap()).unwrap();
        let (mean, std) = pooled(&data.features);
        for j in 0..30 {
            assert!(
                (fed.mean[j] - mean[j]).abs() <= 1e-9 * mean[j].abs().max(1.0),
                "mean {j}"
            );
            assert!(
                (fed.std[j] - std[j]).abs() <= 1e-9 * std[j].abs().max(1.0),
                "std {j}"
            );
        }
        let z = fed.apply(&data.features).unwrap();
        let (zm, zs) = pooled(&z);
        assert!(zm.iter().all(|m| m.abs() < 1e-9));
        assert!(zs.iter().all(|s| (s - 1.0).abs() < 1e-9));
    }

    #[test]
    fn hand_computed_example_and_errors() {
        let a = Array2::from_shape_vec((2, 2), vec![1.0, 5.0, 3.0, 5.0]).unwrap();
        let s = Standardizer::from_sums(&MomentSums::of(&a)).unwrap();
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]); // second feature constant: scale kept
        let wrong = Array2::zeros((1, 3));
        assert!(s.apply(&wrong).is_err());
        assert!(MomentSums::combine(std::iter::empty()).is_err());
    }
}
