//! MLflow tracking: a typed client of MLflow's REST API (`client`), the
//! batching its limits need (`batch`), and what a federation's events become
//! in MLflow with the queue that holds them (`ops`). (In progress, issue
//! 18: the executor and its wiring into `run`/`serve` are not in yet.)

pub mod batch;
pub mod client;
pub mod ops;

pub use client::{Auth, Client, MlflowError, Retry, RunStatus};
