//! CSV loading: numeric feature columns plus one label column.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::error::{ModelError, Result};

/// How to read a labelled CSV file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvSpec {
    /// Column holding the class label.
    pub label_column: String,
    /// Label value of the positive class; every other value is negative.
    pub positive_class: String,
}

pub fn load_csv(path: &Path, spec: &CsvSpec) -> Result<Dataset> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: shown.clone(),
        source,
    })?;
    read_csv(file, &shown, spec)
}

/// Parse CSV from any reader; `origin` names it in errors.
pub fn read_csv(reader: impl std::io::Read, origin: &str, spec: &CsvSpec) -> Result<Dataset> {
    parse(reader, origin, Some(spec))
}

/// With `spec`, its label column is the label; without, every column is a
/// feature and the labels are all `false` (records to score).
fn parse(reader: impl std::io::Read, origin: &str, spec: Option<&CsvSpec>) -> Result<Dataset> {
    let csv_err = |message: String| ModelError::Csv {
        path: origin.to_string(),
        message,
    };
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(reader);
    let headers = rdr
        .headers()
        .map_err(|e| csv_err(format!("cannot read the header row: {e}")))?
        .clone();
    let label_idx = match spec {
        Some(spec) => Some(
            headers
                .iter()
                .position(|h| h == spec.label_column)
                .ok_or_else(|| {
                    csv_err(format!(
                        "no label column '{}' in the header ({} columns)",
                        spec.label_column,
                        headers.len()
                    ))
                })?,
        ),
        None => None,
    };
    let feature_names: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != label_idx)
        .map(|(_, h)| h.to_string())
        .collect();
    if feature_names.is_empty() {
        return Err(csv_err("no feature columns besides the label".into()));
    }

    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut label_values: Vec<String> = Vec::new();
    let positive = spec.map(|s| s.positive_class.as_str());
    for (row, record) in rdr.records().enumerate() {
        // Data rows are numbered from 2: the header is line 1.
        let line = row + 2;
        let record = record.map_err(|e| csv_err(format!("line {line}: {e}")))?;
        if record.len() != headers.len() {
            return Err(csv_err(format!(
                "line {line}: {} fields, header has {}",
                record.len(),
                headers.len()
            )));
        }
        if label_idx.is_none() {
            labels.push(false);
        }
        for (i, field) in record.iter().enumerate() {
            if Some(i) == label_idx {
                if !label_values.iter().any(|v| v == field) {
                    label_values.push(field.to_string());
                }
                labels.push(Some(field) == positive);
                continue;
            }
            let value: f64 = field.parse().map_err(|_| {
                csv_err(format!(
                    "line {line}, column '{}': '{field}' is not a number",
                    &headers[i]
                ))
            })?;
            if !value.is_finite() {
                return Err(csv_err(format!(
                    "line {line}, column '{}': value is not finite",
                    &headers[i]
                )));
            }
            values.push(value);
        }
    }
    if labels.is_empty() {
        return Err(csv_err("no data rows".into()));
    }
    let Some(spec) = spec else {
        let features = Array2::from_shape_vec((labels.len(), feature_names.len()), values)
            .map_err(|e| csv_err(e.to_string()))?;
        return Dataset::new(feature_names, features, labels);
    };
    if label_values.len() > 2 {
        return Err(csv_err(format!(
            "label column '{}' has {} distinct values ({}); a binary label is expected",
            spec.label_column,
            label_values.len(),
            label_values.join(", ")
        )));
    }
    if !label_values.contains(&spec.positive_class) {
        return Err(csv_err(format!(
            "positive class '{}' never occurs in column '{}' (values: {})",
            spec.positive_class,
            spec.label_column,
            label_values.join(", ")
        )));
    }
    let features = Array2::from_shape_vec((labels.len(), feature_names.len()), values)
        .map_err(|e| csv_err(e.to_string()))?;
    Dataset::new(feature_names, features, labels)
}

/// Records to score: every column is a feature (no label column); the
/// returned labels are all `false` and mean nothing.
pub fn load_unlabelled_csv(path: &Path) -> Result<Dataset> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: shown.clone(),
        source,
    })?;
    parse(file, &shown, None)
}

/// The column names of a CSV's header row.
pub fn csv_header(path: &Path) -> Result<Vec<String>> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file);
    let headers = rdr.headers().map_err(|e| ModelError::Csv {
        path: shown,
        message: format!("cannot read the header row: {e}"),
    })?;
    Ok(headers.iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CsvSpec {
        CsvSpec {
            label_column: "diagnosis".into(),
            positive_class: "M".into(),
        }
    }

    #[test]
    fn reads_features_and_labels() {
        let text = "a,diagnosis,b\n1.5,M,2\n3,B,4\n";
        let ds = read_csv(text.as_bytes(), "t.csv", &spec()).unwrap();
        assert_eq!(ds.feature_names, vec!["a", "b"]);
        assert_eq!(ds.features.row(1).to_vec(), vec![3.0, 4.0]);
        assert_eq!(ds.labels, vec![true, false]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = read_csv("a,b\n1,2\n".as_bytes(), "t.csv", &spec()).unwrap_err();
        assert!(e.to_string().contains("no label column 'diagnosis'"), "{e}");
        let e = read_csv("a,diagnosis\nx,M\n".as_bytes(), "t.csv", &spec()).unwrap_err();
        assert!(
            e.to_string().contains("line 2, column 'a': 'x' is not a number"),
            "{e}"
        );
        let e = read_csv("a,diagnosis\n1,M\n2,B\n3,C\n".as_bytes(), "t.csv", &spec()).unwrap_err();
        assert!(e.to_string().contains("3 distinct values"), "{e}");
        let e = read_csv("a,diagnosis\n1,X\n".as_bytes(), "t.csv", &spec()).unwrap_err();
        assert!(e.to_string().contains("positive class 'M' never occurs"), "{e}");
        let e = read_csv("a,diagnosis\n1,M,3\n".as_bytes(), "t.csv", &spec()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn shipped_breast_cancer_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/breast_cancer_wisconsin.csv");
        let ds = load_csv(&path, &spec()).unwrap();
        assert_eq!(ds.len(), 569);
        assert_eq!(ds.n_features(), 30);
        assert_eq!(ds.positives(), 212);
    }
}
