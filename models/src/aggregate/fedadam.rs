//! FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"): the
//! sample-weighted mean delta is treated as a pseudo-gradient for a
//! server-side Adam step. The per-coordinate normalisation acts as a
//! diagonal preconditioner, which matters when features are scaled by public
//! bounds rather than by their (private) spread, as under DP. It is
//! post-processing of the hospitals' releases: it costs no privacy.

use serde::{Deserialize, Serialize};

use super::kernels::weighted_mean_step;
use super::strategy::check_owner;
use super::{Strategy, StrategyState, WeightedDelta};
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
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "fedadam"
    }

    fn initialise(&mut self, initial: Params) -> Result<Params> {
        self.m.clear();
        self.v.clear();
        Ok(initial)
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params> {
        let n = global.as_slice().len();
        let mean_delta = weighted_mean_step("FedAdam", &vec![0.0; n], global, updates)?;
        if self.m.len() != n {
            self.m = vec![0.0; n];
            self.v = vec![0.0; n];
        }
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

    /// The first and second moments (empty before the first round).
    fn state(&self) -> StrategyState {
        StrategyState {
            strategy: self.name().to_string(),
            vectors: [
                ("m".to_string(), self.m.clone()),
                ("v".to_string(), self.v.clone()),
            ]
            .into(),
        }
    }

    fn restore(&mut self, mut state: StrategyState) -> Result<()> {
        check_owner(self.name(), &state)?;
        let (Some(m), Some(v)) = (state.vectors.remove("m"), state.vectors.remove("v")) else {
            return Err(ModelError::Invalid(
                "FedAdam state needs its moments m and v".into(),
            ));
        };
        if m.len() != v.len() || !state.vectors.is_empty() {
            return Err(ModelError::Invalid(format!(
                "FedAdam state: m has {} values and v {}{}",
                m.len(),
                v.len(),
                if state.vectors.is_empty() {
                    ""
                } else {
                    ", and unknown vectors besides"
                }
            )));
        }
        if v.iter().any(|x| !x.is_finite() || *x < 0.0) || m.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::Invalid(
                "FedAdam state: the moments must be finite and v non-negative".into(),
            ));
        }
        self.m = m;
        self.v = v;
        Ok(())
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
            .aggregate_train(
                1,
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
        // A new run forgets the moments.
        s.initialise(g.clone()).unwrap();
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
                .aggregate_train(
                    1,
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

    #[test]
    fn moments_round_trip_through_state_and_restore() {
        let config = FedAdamConfig::default();
        let d1 = params(vec![0.3, -2.0, 1e-4]);
        let d2 = params(vec![-0.1, 0.5, 3.0]);
        let step = |s: &mut FedAdam, g: &Params, d: &Params| {
            s.aggregate_train(
                1,
                g,
                &[WeightedDelta {
                    delta: d,
                    num_examples: 4,
                }],
            )
            .unwrap()
        };
        // Uninterrupted: two rounds.
        let mut a = FedAdam::new(config);
        let g0 = params(vec![1.0, 1.0, 1.0]);
        let g1 = step(&mut a, &g0, &d1);
        let g2 = step(&mut a, &g1, &d2);
        // Interrupted after round one: the state is saved (as JSON, like a
        // checkpoint would) and restored into a fresh strategy.
        let mut b = FedAdam::new(config);
        let g1b = step(&mut b, &g0, &d1);
        let saved = serde_json::to_string(&b.state()).unwrap();
        let mut c = FedAdam::new(config);
        c.restore(serde_json::from_str(&saved).unwrap()).unwrap();
        assert_eq!(c.m, b.m);
        assert_eq!(c.v, b.v);
        let g2c = step(&mut c, &g1b, &d2);
        let bits = |p: &Params| p.as_slice().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&g2c), bits(&g2), "a restored FedAdam continues bit for bit");
        // Without the moments the second step differs: the state matters.
        let mut fresh = FedAdam::new(config);
        assert_ne!(bits(&step(&mut fresh, &g1b, &d2)), bits(&g2));
        // Another strategy's state, or damaged moments, are refused by name.
        let err = c.restore(super::super::FedAvg.state()).unwrap_err().to_string();
        assert!(err.contains("fedavg"), "{err}");
        let mut bad = b.state();
        bad.vectors.insert("v".into(), vec![-1.0, 0.0, 0.0]);
        assert!(c.restore(bad).is_err());
        let mut short = b.state();
        short.vectors.remove("m");
        assert!(c.restore(short).unwrap_err().to_string().contains("m and v"));
    }
}
