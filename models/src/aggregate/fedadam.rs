//! FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"): the
//! sample-weighted mean delta is treated as a pseudo-gradient for a
//! server-side Adam step. The per-coordinate normalisation acts as a
//! diagonal preconditioner, which matters when features are scaled by public
//! bounds rather than by their (private) spread, as under DP. It is
//! post-processing of the hospitals' releases: it costs no privacy.

use serde::{Deserialize, Serialize};

use super::fedavg::weighted_sum;
use super::{Strategy, WeightedDelta};
use crate::error::{ModelError, Result};
use crate::params::Params;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FedAdamConfig {
    /// Server learning rate (eta).
    pub server_lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Adaptivity (tau): keeps steps bounded where the second moment is tiny.
    pub tau: f64,
}

impl Default for FedAdamConfig {
    fn default() -> Self {
        Self {
            server_lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FedAdam {
    config: FedAdamConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FedAdam {
    pub fn new(config: FedAdamConfig) -> Self {
        Self {
            config,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
}

impl Strategy for FedAdam {
    fn name(&self) -> &'static str {
        "fedadam"
    }

    fn reset(&mut self) {
        self.m.clear();
        self.v.clear();
    }

    fn aggregate(&mut self, global: &Params, updates: &[WeightedDelta<'_>]) -> Result<Params> {
        let total: usize = updates.iter().map(|u| u.num_examples).sum();
        if updates.is_empty() || total == 0 {
            return Err(ModelError::Invalid(
                "FedAdam needs at least one update with examples".into(),
            ));
        }
        if updates.iter().any(|u| !u.delta.same_layout(global)) {
            return Err(ModelError::Params(
                "an update does not match the global model's tensors".into(),
            ));
        }
        let n = global.as_slice().len();
        if self.m.len() != n {
            self.m = vec![0.0; n];
            self.v = vec![0.0; n];
        }
        let weights: Vec<f32> = updates
            .iter()
            .map(|u| (u.num_examples as f64 / total as f64) as f32)
            .collect();
        let slices: Vec<&[f32]> = updates.iter().map(|u| u.delta.as_slice()).collect();
        let mean_delta = weighted_sum(&vec![0.0; n], &slices, &weights);
        let c = self.config;
        let (b1, b2, lr, tau) = (c.beta1 as f32, c.beta2 as f32, c.server_lr as f32, c.tau as f32);
        let mut next = global.clone();
        for (((x, d), m), v) in next
            .as_mut_slice()
            .iter_mut()
            .zip(&mean_delta)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = b1 * *m + (1.0 - b1) * d;
            *v = b2 * *v + (1.0 - b2) * d * d;
            *x += lr * *m / (v.sqrt() + tau);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(values: Vec<f32>) -> Params {
        Params::single("w", values).unwrap()
    }

    #[test]
    fn first_step_by_hand() {
        // mean delta d = 0.25*2 + 0.75*(-2) = -1 (first coordinate), 3 (second)
        // m = 0.1 d; v = 0.01 d^2; step = lr * m / (sqrt(v) + tau) = lr * sign(d) * 0.1|d| / (0.1|d| + tau)
        let mut s = FedAdam::new(FedAdamConfig {
            server_lr: 0.5,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.0,
        });
        let g = params(vec![1.0, 1.0]);
        let a = params(vec![2.0, 3.0]);
        let b = params(vec![-2.0, 3.0]);
        let next = s
            .aggregate(
                &g,
                &[
                    WeightedDelta {
                        delta: &a,
                        num_examples: 1,
                    },
                    WeightedDelta {
                        delta: &b,
                        num_examples: 3,
                    },
                ],
            )
            .unwrap();
        assert!((next.as_slice()[0] - 0.5).abs() < 1e-6, "{:?}", next.as_slice());
        assert!((next.as_slice()[1] - 1.5).abs() < 1e-6);
        // Reset forgets the moments.
        s.reset();
        assert!(s.m.is_empty());
    }

    #[test]
    fn equalises_coordinates_of_very_different_scale() {
        let mut s = FedAdam::new(FedAdamConfig {
            tau: 1e-9,
            ..FedAdamConfig::default()
        });
        let mut g = params(vec![0.0, 0.0]);
        let d = params(vec![1e-3, 10.0]);
        for _ in 0..5 {
            g = s
                .aggregate(
                    &g,
                    &[WeightedDelta {
                        delta: &d,
                        num_examples: 1,
                    }],
                )
                .unwrap();
        }
        let x = g.as_slice();
        assert!((x[0] / x[1] - 1.0).abs() < 1e-3, "{x:?}");
    }
}
