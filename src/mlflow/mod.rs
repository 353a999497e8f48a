//! MLflow tracking: a typed client of MLflow's REST API (`client`) and the
//! batching its limits need (`batch`). (In progress, issue 18: what a run
//! logs is not wired in yet.)

pub mod batch;
pub mod client;

pub use client::{Auth, Client, MlflowError, Retry, RunStatus};
