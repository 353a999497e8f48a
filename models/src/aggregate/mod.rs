//! Aggregation: strategies that turn the global model plus the round's
//! updates into the next global model, and the checks an update must pass.

pub mod check;
pub mod fedadam;
pub mod fedavg;

pub use check::{RejectReason, UpdateCheck};
pub use fedadam::{FedAdam, FedAdamConfig};
pub use fedavg::FedAvg;

use crate::error::Result;
use crate::params::Params;

/// One accepted update as a strategy sees it.
#[derive(Debug, Clone, Copy)]
pub struct WeightedDelta<'a> {
    pub delta: &'a Params,
    pub num_examples: usize,
}

/// How the next global model is formed (Flower's `Strategy.aggregate_fit`).
pub trait Strategy: Send {
    fn name(&self) -> &'static str;
    fn aggregate(&mut self, global: &Params, updates: &[WeightedDelta<'_>]) -> Result<Params>;
    /// Forget any state carried between rounds (a new run starts).
    fn reset(&mut self) {}
}
