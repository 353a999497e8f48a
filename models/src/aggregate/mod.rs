//! Aggregation: strategies that turn the global model plus the round's
//! updates into the next global model (`strategy`), the arithmetic they share
//! (`kernels`), and the checks an update must pass (`check`).

pub mod bulyan;
pub mod check;
pub mod config;
pub mod fedavg;
pub mod fedopt;
pub mod fedprox;
pub mod kernels;
pub mod krum;
pub mod median;
pub mod strategy;
pub mod trimmed_mean;

pub use bulyan::Bulyan;
pub use check::{RejectReason, UpdateCheck};
pub use config::StrategyConfig;
pub use fedavg::FedAvg;
pub use fedopt::{FedOpt, FedOptConfig, FedOptRule};
pub use fedprox::FedProx;
pub use krum::Krum;
pub use median::Median;
pub use strategy::{Strategy, StrategyState};
pub use trimmed_mean::TrimmedMean;

use crate::params::Params;

/// One accepted update as a strategy sees it.
#[derive(Debug, Clone, Copy)]
pub struct WeightedDelta<'a> {
    pub delta: &'a Params,
    pub num_examples: usize,
}
#[cfg(test)]
mod test_support {
    use super::{Strategy, WeightedDelta};
    use crate::params::Params;

    /// One round of `strategy` from `global` over (delta, examples) pairs.
    pub fn aggregate(strategy: &mut dyn Strategy, global: &[f32], updates: &[(&[f32], usize)]) -> Vec<f32> {
        let global = Params::single("w", global.to_vec()).unwrap();
        let deltas: Vec<Params> = updates
            .iter()
            .map(|(d, _)| Params::single("w", d.to_vec()).unwrap())
            .collect();
        let weighted: Vec<WeightedDelta<'_>> = deltas
            .iter()
            .zip(updates)
            .map(|(delta, (_, n))| WeightedDelta {
                delta,
                num_examples: *n,
            })
            .collect();
        strategy
            .aggregate_train(1, &global, &weighted)
            .unwrap()
            .into_values()
    }

    /// Five hospitals' deltas, 10 examples each; the fifth attacks.
    pub fn attacked_five() -> Vec<(&'static [f32], usize)> {
        vec![
            (&[1.0, -1.0], 10),
            (&[2.0, 0.0], 10),
            (&[3.0, 1.0], 10),
            (&[4.0, 2.0], 10),
            (&[1000.0, -500.0], 10),
        ]
    }
}
