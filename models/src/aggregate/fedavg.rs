//! Federated Averaging (McMahan et al. 2017): the sample-weighted mean of the
//! hospitals' deltas added to the global model.

use super::kernels::weighted_mean_step;
use super::{Strategy, WeightedDelta};
use crate::error::Result;
use crate::params::Params;

#[derive(Debug, Default, Clone, Copy)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(*self)
    }

    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        let values = weighted_mean_step("FedAvg", global.as_slice(), global, updates)?;
        Params::new(global.layout().clone(), values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(values: Vec<f32>) -> Params {
        Params::single("w", values).unwrap()
    }

    #[test]
    fn hand_computed_example() {
        // global [1, 1, 1]; deltas [2, 0, -2] from 10 examples and [4, 4, 4] from 30:
        // mean delta = 0.25*[2,0,-2] + 0.75*[4,4,4] = [3.5, 3, 2.5]
        let global = params(vec![1.0, 1.0, 1.0]);
        let a = params(vec![2.0, 0.0, -2.0]);
        let b = params(vec![4.0, 4.0, 4.0]);
        let next = FedAvg
            .aggregate_train(
                1,
                &global,
                &[
                    WeightedDelta {
                        delta: &a,
                        num_examples: 10,
                    },
                    WeightedDelta {
                        delta: &b,
                        num_examples: 30,
                    },
                ],
            )
            .unwrap();
        assert_eq!(next.as_slice(), &[4.5, 4.0, 3.5]);
    }

    #[test]
    fn blocks_cover_lengths_that_are_not_a_multiple() {
        let n = super::super::kernels::BLOCK * 2 + 17;
        let global = params(vec![0.0; n]);
        let a = params((0..n).map(|i| i as f32).collect());
        let next = FedAvg
            .aggregate_train(
                1,
                &global,
                &[WeightedDelta {
                    delta: &a,
                    num_examples: 3,
                }],
            )
            .unwrap();
        assert_eq!(next.as_slice(), a.as_slice());
    }

    #[test]
    fn empty_or_mismatched_updates_are_errors() {
        let global = params(vec![0.0; 3]);
        assert!(FedAvg.aggregate_train(1, &global, &[]).is_err());
        let wrong = params(vec![0.0; 4]);
        assert!(FedAvg
            .aggregate_train(
                1,
                &global,
                &[WeightedDelta {
                    delta: &wrong,
                    num_examples: 1
                }]
            )
            .is_err());
    }
}
