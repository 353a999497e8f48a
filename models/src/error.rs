//! Errors of the math layer. Every variant names the thing that was wrong.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Csv { path: String, message: String },
    /// A Parquet file (or a row group or column of one) that cannot be
    /// used; `origin` names the file and, where known, the place in it.
    #[error("{origin}: {message}")]
    Parquet { origin: String, message: String },
    #[error("dataset: {0}")]
    Data(String),
    #[error("parameters: {0}")]
    Params(String),
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("training: {0}")]
    Training(String),
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// A hospital declines: the release would exceed its privacy budget.
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
