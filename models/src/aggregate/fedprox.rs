//! FedProx (Li et al. 2020): hospitals train with the proximal term
//! `mu/2 * ||w - w_global||^2`, which keeps local models near the global one
//! on heterogeneous data; the server averages as FedAvg. `mu` reaches the
//! hospitals in each round's plan (Flower's `proximal_mu`).

use super::{FedAvg, Strategy, WeightedDelta};
use crate::error::Result;
use crate::learner::TrainPlan;
use crate::params::Params;

#[derive(Debug, Clone, Copy)]
pub struct FedProx {
    pub mu: f64,
}

impl Strategy for FedProx {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(*self)
    }

    fn name(&self) -> &'static str {
        "fedprox"
    }

    fn configure_train(
        &self,
        _round: u32,
        base: &TrainPlan,
        hospitals: &[String],
    ) -> Vec<(String, TrainPlan)> {
        let plan = TrainPlan {
            proximal_mu: self.mu,
            ..base.clone()
        };
        hospitals.iter().map(|h| (h.clone(), plan.clone())).collect()
    }

    /// The server side is FedAvg's.
    fn aggregate_train(
        &mut self,
        round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        FedAvg.aggregate_train(round, global, updates)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::aggregate;
    use super::*;

    #[test]
    fn asks_for_the_term_and_averages_like_fedavg() {
        let base = TrainPlan {
            round: 3,
            attempt: 0,
            local_epochs: 2,
            batch_size: 8,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 9,
            proximal_mu: 0.0,
            privacy: None,
        };
        let asked = FedProx { mu: 0.01 }.configure_train(3, &base, &["a".into(), "b".into()]);
        assert_eq!(asked.len(), 2);
        assert!(asked.iter().all(|(_, p)| p.proximal_mu == 0.01 && p.round == 3));
        // As FedAvg: global 1 + (0.25 * 2 + 0.75 * 4) = 4.5.
        let next = aggregate(&mut FedProx { mu: 0.01 }, &[1.0], &[(&[2.0], 10), (&[4.0], 30)]);
        assert_eq!(next, vec![4.5]);
    }
}
