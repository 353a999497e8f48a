//! Federated Averaging (McMahan et al. 2017): the sample-weighted mean of the
//! hospitals' deltas added to the global model.

use super::{Strategy, WeightedDelta};
use crate::error::{ModelError, Result};
use crate::params::Params;

/// Elements per block (64 KiB): the output block stays in L2 while every
/// update streams through it, and each input is read in runs long enough
/// for the hardware prefetcher (measured: 4 Ki elements was slower).
const BLOCK: usize = 16384;

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
        let values = weighted_sum(global.as_slice(), &slices, &weights);
        Params::new(global.layout().clone(), values)
    }
}

/// `base + sum_k weights[k] * inputs[k]` in one pass: each block of the
/// output is written once from `base`, then every input streams through it
/// while it sits in cache.
pub fn weighted_sum(base: &[f32], inputs: &[&[f32]], weights: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(base.len());
    for (b, base_block) in base.chunks(BLOCK).enumerate() {
        let start = b * BLOCK;
        out.extend_from_slice(base_block);
        let out_block = &mut out[start..];
        let len = out_block.len();
        let mut pairs = inputs.iter().zip(weights);
        // Two inputs per pass halve the loads and stores of the output block.
        while let (Some((x1, &w1)), Some((x2, &w2))) = (pairs.next(), pairs.next()) {
            let x1 = &x1[start..start + len];
            let x2 = &x2[start..start + len];
            for ((o, a), c) in out_block.iter_mut().zip(x1).zip(x2) {
                *o += w1 * a + w2 * c;
            }
        }
        if inputs.len() % 2 == 1 {
            let (x, &w) = (inputs[inputs.len() - 1], &weights[weights.len() - 1]);
            for (o, a) in out_block.iter_mut().zip(&x[start..start + len]) {
                *o += w * a;
            }
        }
    }
    out
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
    fn odd_and_even_update_counts_agree_with_the_naive_sum() {
        let n = BLOCK + 5;
        let base: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let inputs: Vec<Vec<f32>> = (0..5)
            .map(|k| (0..n).map(|i| (i * (k + 1)) as f32 * 0.25).collect())
            .collect();
        let weights = [0.1f32, 0.2, 0.3, 0.15, 0.25];
        for k in 1..=5 {
            let slices: Vec<&[f32]> = inputs[..k].iter().map(|v| v.as_slice()).collect();
            let got = weighted_sum(&base, &slices, &weights[..k]);
            for i in 0..n {
                let want: f32 = base[i] + (0..k).map(|j| weights[j] * inputs[j][i]).sum::<f32>();
                assert!((got[i] - want).abs() <= 1e-3 * want.abs().max(1.0), "k {k} i {i}");
            }
        }
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
