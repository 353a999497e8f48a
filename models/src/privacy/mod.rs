//! Differential privacy: clipping and the Gaussian mechanisms (the only
//! makers of `Noised` releases), an RDP accountant for the Poisson-subsampled
//! Gaussian mechanism, data fingerprints, and the per-dataset ledger that
//! enforces budgets where the data lives.

pub mod bounds;
pub mod fingerprint;
pub mod ledger;
pub mod mechanisms;
pub mod rdp;
pub mod special;

/// The neighbouring relation of DP-SGD's (and the record count's) guarantee.
pub const RECORD_RELATION: &str = "add/remove one record";
/// The neighbouring relation of update-level DP's guarantee.
pub const DATASET_RELATION: &str = "replace the whole local dataset";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    #[error("{0}")]
    Invalid(String),
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
    #[error("privacy ledger {path}: {message}")]
    Ledger { path: String, message: String },
}
