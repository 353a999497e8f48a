//! An in-memory tabular dataset: a feature matrix and binary labels.

use ndarray::{Array2, Axis};

use crate::error::{ModelError, Result};

/// Why `found` (a hospital's model inputs) cannot train with `expected`
/// (the federation's), naming the columns; `None` when they are the same
/// columns, in the same order when `ordered` (the order of a model's
/// weights; a table read by column names may list them in any order).
pub fn feature_mismatch(found: &[String], expected: &[String], ordered: bool) -> Option<String> {
    let same_set = found.len() == expected.len() && found.iter().all(|f| expected.contains(f));
    if found == expected || (!ordered && same_set) {
        return None;
    }
    let missing: Vec<&str> = expected
        .iter()
        .filter(|e| !found.contains(e))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = found
        .iter()
        .filter(|f| !expected.contains(f))
        .map(String::as_str)
        .collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("lacks the feature columns {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!(
            "has feature columns the federation does not use: {}",
            extra.join(", ")
        ));
    }
    if parts.is_empty() {
        parts.push(format!(
            "has the federation's features in another order ({})",
            found.join(", ")
        ));
    }
    Some(format!(
        "{} (the federation's features: {})",
        parts.join("; "),
        expected.join(", ")
    ))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub feature_names: Vec<String>,
    /// One row per record, one column per feature.
    pub features: Array2<f64>,
    /// `true` is the positive class (e.g. malignant).
    pub labels: Vec<bool>,
}

impl Dataset {
    pub fn new(feature_names: Vec<String>, features: Array2<f64>, labels: Vec<bool>) -> Result<Self> {
        if features.nrows() != labels.len() {
            return Err(ModelError::Data(format!(
                "{} feature rows but {} labels",
                features.nrows(),
                labels.len()
            )));
        }
        if features.ncols() != feature_names.len() {
            return Err(ModelError::Data(format!(
                "{} feature columns but {} feature names",
                features.ncols(),
                feature_names.len()
            )));
        }
        Ok(Self {
            feature_names,
            features,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The same rows with the columns named `order`, in that order.
    pub fn with_columns(self, order: &[String]) -> Result<Dataset> {
        let index = order
            .iter()
            .map(|name| {
                self.feature_names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| ModelError::Data(format!("no column '{name}'")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let features = self.features.select(ndarray::Axis(1), &index);
        Dataset::new(order.to_vec(), features, self.labels)
    }

    pub fn n_features(&self) -> usize {
        self.features.ncols()
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l).count()
    }

    pub fn feature_index(&self, name: &str) -> Result<usize> {
        self.feature_names.iter().position(|n| n == name).ok_or_else(|| {
            ModelError::Data(format!(
                "no feature named '{name}' (features: {})",
                self.feature_names.join(", ")
            ))
        })
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            feature_names: self.feature_names.clone(),
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}
