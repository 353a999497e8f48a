//! Aggregation: strategies that turn the global model plus the round's
//! updates into the next global model (`strategy`), the arithmetic they share
//! (`kernels`), and the checks an update must pass (`check`).

pub mod check;
pub mod fedadam;
pub mod fedavg;
pub mod kernels;
pub mod strategy;

pub use check::{RejectReason, UpdateCheck};
pub use fedadam::{FedAdam, FedAdamConfig};
pub use fedavg::FedAvg;
pub use strategy::{Strategy, StrategyState};

use crate::params::Params;

/// One accepted update as a strategy sees it.
#[derive(Debug, Clone, Copy)]
pub struct WeightedDelta<'a> {
    pub delta: &'a Params,
    pub num_examples: usize,
}
