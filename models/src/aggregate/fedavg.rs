//! Federated Averaging (McMahan et al. 2017): the sample-weighted mean of the
//! hospitals' deltas added to the global model.

use super::{Strategy, WeightedDelta};
use crate::error::{ModelError, Result};
use crate::params::Params;

/// Elements per block: small enough that one output block stays in L1 while
/// every update streams through it once.
const BLOCK: usize = 4096;

#[derive(Debug, Default, Clone, Copy)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn aggregate(&mut self, global: &Params, updates: &[WeightedDelta<'_>]) -> Result<Params> {
        let total: usize = updates.iter().map(|u| u.num_examples).sum();
        if updates.is_empty() || total == 0 {
            return Err(ModelError::Invalid(
                "FedAvg needs at least one update with examples".into(),
            ));
        }
        for (i, u) in updates.iter().enumerate() {
            if !u.delta.same_layout(global) {
                return Err(ModelError::Params(format!(
                    "update {i} does not match the global model's tensors"
                )));
            }
        }
        let weights: Vec<f32> = updates
            .iter()
            .map(|u| (u.num_examples as f64 / total as f64) as f32)
            .collect();
        let slices: Vec<&[f32]> = updates.iter().map(|u| u.delta.as_slice()).collect();
        let mut next = global.clone();
        weighted_sum_into(next.as_mut_slice(), &slices, &weights);
        Ok(next)
    }
}

/// `out[i] += sum_k weights[k] * inputs[k][i]`, block by block.
pub fn weighted_sum_into(out: &mut [f32], inputs: &[&[f32]], weights: &[f32]) {
    debug_assert_eq!(inputs.len(), weights.len());
    for (b, out_block) in out.chunks_mut(BLOCK).enumerate() {
        let start = b * BLOCK;
        for (input, &w) in inputs.iter().zip(weights) {
            let in_block = &input[start..start + out_block.len()];
            for (o, x) in out_block.iter_mut().zip(in_block) {
                *o += w * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Layout, TensorSpec};
    use std::sync::Arc;

    fn params(values: Vec<f32>) -> Params {
        let layout = Arc::new(Layout::new(vec![TensorSpec::new("w", &[values.len()])]).unwrap());
        Params::new(layout, values).unwrap()
    }

    #[test]
    fn hand_computed_example() {
        // global [1, 1, 1]; deltas [2, 0, -2] from 10 examples and [4, 4, 4] from 30:
        // mean delta = 0.25*[2,0,-2] + 0.75*[4,4,4] = [3.5, 3, 2.5]
        let global = params(vec![1.0, 1.0, 1.0]);
        let a = params(vec![2.0, 0.0, -2.0]);
        let b = params(vec![4.0, 4.0, 4.0]);
        let next = FedAvg
            .aggregate(
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
        let n = BLOCK * 2 + 17;
        let global = params(vec![0.0; n]);
        let a = params((0..n).map(|i| i as f32).collect());
        let next = FedAvg
            .aggregate(
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
        assert!(FedAvg.aggregate(&global, &[]).is_err());
        let wrong = params(vec![0.0; 4]);
        assert!(FedAvg
            .aggregate(
                &global,
                &[WeightedDelta {
                    delta: &wrong,
                    num_examples: 1
                }]
            )
            .is_err());
    }
}
