//! The centralized baseline: the same logistic model fitted by linfa's
//! L-BFGS on all training rows at once, for comparison only.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

use super::logistic::Coefficients;
use crate::data::Dataset;
use crate::error::{ModelError, Result};
use crate::params::Params;

/// Fit on `(features, labels)` (already standardised) with L2 penalty `alpha`.
///
/// linfa-logistic makes the MORE FREQUENT class its positive label; the
/// result is re-oriented so that `true` is always the positive class.
pub fn fit_centralized(
    features: &Array2<f64>,
    labels: &[bool],
    alpha: f64,
    max_iterations: u64,
) -> Result<Params> {
    let targets = Array1::from_vec(labels.to_vec());
    let dataset = linfa::Dataset::new(features.clone(), targets);
    let fitted = LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(max_iterations)
        .fit(&dataset)
        .map_err(|e| ModelError::Training(format!("centralized baseline: {e}")))?;
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let coef = Coefficients {
        weight: fitted.params().iter().map(|w| sign * w).collect(),
        bias: sign * fitted.intercept(),
    };
    Ok(coef.to_params())
}

/// Convenience for a dataset whose features are already scaled.
pub fn fit_dataset(data: &Dataset, alpha: f64) -> Result<Params> {
    fit_centralized(&data.features, &data.labels, alpha, 200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;
    use crate::metrics::binary_metrics;

    #[test]
    fn orientation_is_pinned_whichever_class_is_larger() {
        for share in [0.2, 0.8] {
            let data = gaussian_blobs(300, 3, share, 2.0, 5);
            let params = fit_dataset(&data, 1e-3).unwrap();
            let coef = Coefficients::from_params(&params).unwrap();
            // Positives are shifted in +x: every weight must be positive.
            assert!(
                coef.weight.iter().all(|&w| w > 0.0),
                "share {share}: {:?}",
                coef.weight
            );
            let m = binary_metrics(&coef.probabilities(&data.features).unwrap(), &data.labels);
            assert!(m.accuracy > 0.9);
        }
    }

    #[test]
    fn single_class_data_is_a_clear_error() {
        let mut data = gaussian_blobs(20, 2, 0.5, 1.0, 1);
        data.labels.iter_mut().for_each(|l| *l = false);
        let err = fit_dataset(&data, 1.0).unwrap_err();
        assert!(err.to_string().contains("centralized baseline"), "{err}");
    }
}
