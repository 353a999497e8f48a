//! Differential privacy: clipping, the Gaussian and Laplace mechanisms, an
//! RDP accountant for the Poisson-subsampled Gaussian mechanism, and the
//! per-hospital ledger that enforces budgets where the data lives.

pub mod bounds;
pub mod ledger;
pub mod mechanisms;
pub mod rdp;
pub mod special;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    #[error("{0}")]
    Invalid(String),
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
    #[error("privacy ledger {path}: {message}")]
    Ledger { path: String, message: String },
}
