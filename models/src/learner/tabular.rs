//! A tabular dataset together with its standardised copy, recomputed only
//! when the federated standardizer changes.

use std::sync::Arc;

use ndarray::Array2;

use crate::data::{Dataset, MomentSums, Standardizer};
use crate::error::{ModelError, Result};

/// The smallest feature scale a hospital accepts from the coordinator. A
/// scale near zero would blow one extreme record's features up to infinity
/// and make the update's finiteness reveal whether that record was sampled.
pub const MIN_SCALE: f64 = 1e-6;

pub struct StandardizedData {
    raw: Dataset,
    cached: Option<(Option<Arc<Standardizer>>, Array2<f64>)>,
}

impl StandardizedData {
    pub fn new(raw: Dataset) -> Self {
        Self { raw, cached: None }
    }

    pub fn raw(&self) -> &Dataset {
        &self.raw
    }

    pub fn moment_sums(&self) -> MomentSums {
        MomentSums::of(&self.raw.features)
    }

    /// Features scaled by `standardizer` (raw features when there is none).
    pub fn features(&mut self, standardizer: Option<&Arc<Standardizer>>) -> Result<&Array2<f64>> {
        let fresh = match &self.cached {
            Some((cached, _)) => cached.as_deref() != standardizer.map(|s| s.as_ref()),
            None => true,
        };
        if fresh {
            if let Some(s) = standardizer {
                check_standardizer(&self.raw.feature_names, s)?;
            }
            let matrix = match standardizer {
                Some(s) => s.apply(&self.raw.features)?,
                None => self.raw.features.clone(),
            };
            self.cached = Some((standardizer.cloned(), matrix));
        }
        Ok(&self.cached.as_ref().expect("filled above").1)
    }
}

/// Refuse a standardizer for other features, or with a non-finite centre
/// or a non-finite or near-zero scale, naming the feature.
pub fn check_standardizer(names: &[String], s: &Standardizer) -> Result<()> {
    if s.mean.len() != names.len() || s.std.len() != names.len() {
        return Err(ModelError::Data(format!(
            "the feature scaler has {} features, this hospital has {}",
            s.mean.len(),
            names.len()
        )));
    }
    for ((name, &m), &sd) in names.iter().zip(&s.mean).zip(&s.std) {
        if !m.is_finite() || !sd.is_finite() || sd < MIN_SCALE {
            return Err(ModelError::Invalid(format!(
                "refusing the coordinator's feature scaler: feature '{name}' has centre {m} and \
                 scale {sd} (the scale must be finite and at least {MIN_SCALE})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;

    #[test]
    fn a_scaler_with_a_tiny_or_non_finite_scale_is_refused_naming_the_feature() {
        let data = gaussian_blobs(20, 3, 0.5, 2.0, 1);
        let name = data.feature_names[1].clone();
        let mut d = StandardizedData::new(data);
        for (mean, std) in [
            (0.0, 1e-9),
            (0.0, f64::NAN),
            (f64::INFINITY, 1.0),
            (0.0, f64::INFINITY),
            (0.0, 0.0),
        ] {
            let s = Arc::new(Standardizer {
                mean: vec![0.0, mean, 0.0],
                std: vec![1.0, std, 1.0],
            });
            let e = d.features(Some(&s)).unwrap_err().to_string();
            assert!(e.contains(&format!("feature '{name}'")), "{e}");
        }
        let fine = Arc::new(Standardizer {
            mean: vec![0.0; 3],
            std: vec![0.01; 3],
        });
        assert!(d.features(Some(&fine)).is_ok());
    }
}
