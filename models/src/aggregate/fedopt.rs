//! The FedOpt family (Reddi et al. 2021, "Adaptive Federated Optimization"):
//! the sample-weighted mean delta is a pseudo-gradient for a server-side
//! optimiser — Adam, Yogi or Adagrad — with first moment `m` and second
//! moment `v`, both kept across rounds (and in `state()` for checkpoints).
//! The per-coordinate normalisation acts as a diagonal preconditioner, which
//! matters when features are scaled by public bounds rather than by their
//! (private) spread, as under DP. It is post-processing of the hospitals'
//! releases: it costs no privacy.
//!
//! As Flower's `FedAdam`/`FedYogi`/`FedAdagrad`, with these differences:
//! - FedAdam has no bias correction (Flower scales eta by
//!   sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))), which keeps results equal
//!   to medfed's earlier FedAdam; the server learning rate absorbs it.
//! - tau defaults to 1e-3 for all three (Flower's legacy FedAdam and
//!   FedAdagrad: 1e-9, FedYogi: 1e-3; Flower's newer API: 1e-3 throughout).
//!   With tau 1e-9 a coordinate whose deltas are ~0 gets steps of ~eta.
//! - Defaults otherwise follow Flower: eta 0.1 (Yogi 0.01), beta1 0.9
//!   (Adagrad 0: m is the delta itself), beta2 0.99; v starts at 0.

use serde::{Deserialize, Serialize};

use super::kernels::weighted_mean_step;
use super::strategy::check_owner;
use super::{Strategy, StrategyState, WeightedDelta};
use crate::error::{ModelError, Result};
use crate::params::Params;

/// Which server optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FedOptRule {
    Adam,
    Yogi,
    Adagrad,
}

impl FedOptRule {
    pub fn name(self) -> &'static str {
        match self {
            FedOptRule::Adam => "fedadam",
            FedOptRule::Yogi => "fedyogi",
            FedOptRule::Adagrad => "fedadagrad",
        }
    }
}

/// A server optimiser's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedOptConfig {
    /// Server learning rate (eta).
    pub server_lr: f64,
    /// First-moment decay (0: m is the round's delta).
    pub beta1: f64,
    /// Second-moment decay (Adam, Yogi; Adagrad sums instead).
    pub beta2: f64,
    /// Adaptivity (tau): keeps steps bounded where the second moment is tiny.
    pub tau: f64,
}

impl FedOptConfig {
    /// The defaults of `rule` (see the module's notes on Flower's).
    pub fn defaults(rule: FedOptRule) -> Self {
        match rule {
            FedOptRule::Adam => Self {
                server_lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
            FedOptRule::Yogi => Self {
                server_lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
            FedOptRule::Adagrad => Self {
                server_lr: 0.1,
                beta1: 0.0,
                beta2: 0.0,
                tau: 1e-3,
            },
        }
    }

    /// Every setting in range; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        if !finite_positive(self.server_lr) {
            return Err((
                "server_lr",
                format!("must be a positive number, got {}", self.server_lr),
            ));
        }
        for (key, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err((key, format!("must be in [0, 1), got {v}")));
            }
        }
        if !finite_positive(self.tau) {
            return Err(("tau", format!("must be a positive number, got {}", self.tau)));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct FedOpt {
    rule: FedOptRule,
    config: FedOptConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FedOpt {
    pub fn new(rule: FedOptRule, config: FedOptConfig) -> Self {
        Self {
            rule,
            config,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    pub fn adam(config: FedOptConfig) -> Self {
        Self::new(FedOptRule::Adam, config)
    }
}

impl Strategy for FedOpt {
    fn boxed_clone(&self) -> Box<dyn Strategy> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        self.rule.name()
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
        let mean_delta = weighted_mean_step(self.rule.name(), &vec![0.0; n], global, updates)?;
        if self.m.len() != n {
            self.m = vec![0.0; n];
            self.v = vec![0.0; n];
        }
        let c = self.config;
        let (b1, b2, lr, tau) = (c.beta1 as f32, c.beta2 as f32, c.server_lr as f32, c.tau as f32);
        let rule = self.rule;
        let mut next = global.clone();
        for (((x, d), m), v) in next
            .as_mut_slice()
            .iter_mut()
            .zip(&mean_delta)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = b1 * *m + (1.0 - b1) * d;
            // Evaluated left to right as written: Adam's rounding is medfed's earlier FedAdam's.
            *v = match rule {
                FedOptRule::Adam => b2 * *v + (1.0 - b2) * d * d,
                // Yogi moves v towards d^2 by an additive step (numpy's sign(0) = 0).
                FedOptRule::Yogi => *v - (1.0 - b2) * d * d * sign(*v - d * d),
                FedOptRule::Adagrad => *v + d * d,
            };
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
        let name = self.name();
        let (Some(m), Some(v)) = (state.vectors.remove("m"), state.vectors.remove("v")) else {
            return Err(ModelError::Invalid(format!(
                "{name} state needs its moments m and v"
            )));
        };
        if m.len() != v.len() || !state.vectors.is_empty() {
            return Err(ModelError::Invalid(format!(
                "{name} state: m has {} values and v {}{}",
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
            return Err(ModelError::Invalid(format!(
                "{name} state: the moments must be finite and v non-negative"
            )));
        }
        self.m = m;
        self.v = v;
        Ok(())
    }
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::aggregate;
    use super::*;

    fn params(values: Vec<f32>) -> Params {
        Params::single("w", values).unwrap()
    }

    fn adam(server_lr: f64, tau: f64) -> FedOpt {
        FedOpt::adam(FedOptConfig {
            server_lr,
            tau,
            ..FedOptConfig::defaults(FedOptRule::Adam)
        })
    }

    #[test]
    fn adam_first_step_by_hand() {
        // mean delta d = 0.25*2 + 0.75*(-2) = -1 (first coordinate), 3 (second)
        // m = 0.1 d; v = 0.01 d^2; step = lr * m / (sqrt(v) + tau) = lr * sign(d) * 0.1|d| / (0.1|d| + tau)
        let mut s = adam(0.5, 0.0);
        let next = aggregate(&mut s, &[1.0, 1.0], &[(&[2.0, 3.0], 1), (&[-2.0, 3.0], 3)]);
        assert!((next[0] - 0.5).abs() < 1e-6, "{next:?}");
        assert!((next[1] - 1.5).abs() < 1e-6);
        // A new run forgets the moments.
        s.initialise(params(vec![1.0, 1.0])).unwrap();
        assert!(s.m.is_empty());
    }

    #[test]
    fn adagrad_by_hand() {
        // The example (Flower's convention: clients send weights):
        // x0 = .1, clients .2 and 1 of equal weight, so deltas .1 and .9,
        // mean .5; m = .5 (beta1 0), v = .25; x = .1 + .1 * .5 / (.5 + .5) = .15.
        let mut s = FedOpt::new(
            FedOptRule::Adagrad,
            FedOptConfig {
                server_lr: 0.1,
                tau: 0.5,
                ..FedOptConfig::defaults(FedOptRule::Adagrad)
            },
        );
        let next = aggregate(&mut s, &[0.1], &[(&[0.1], 5), (&[0.9], 5)]);
        assert!((next[0] - 0.15).abs() < 1e-6, "{next:?}");
        // Adagrad's v only grows: a second identical step is smaller.
        let second = aggregate(&mut s, &next, &[(&[0.5], 1)]);
        let (first_step, second_step) = (next[0] - 0.1, second[0] - next[0]);
        assert!(second_step < first_step, "{first_step} then {second_step}");
    }

    #[test]
    fn yogi_by_hand() {
        // d = .5: m = .05; v = 0 - .01 * .25 * sign(0 - .25) = .0025;
        // x = 0 + .01 * .05 / (.05 + .001) = 0.0098039...
        let mut s = FedOpt::new(FedOptRule::Yogi, FedOptConfig::defaults(FedOptRule::Yogi));
        let next = aggregate(&mut s, &[0.0], &[(&[0.5], 1)]);
        assert!((next[0] - 0.01 * 0.05 / 0.051).abs() < 1e-7, "{next:?}");
        // (1 - 0.99) is 0.0099999905 in f32.
        assert!((s.v[0] - 0.0025).abs() < 1e-8);
        // Unlike Adam, Yogi's v moves by (1 - beta2) d^2 towards d^2, not a mix.
        let mut a = adam(0.01, 1e-3);
        aggregate(&mut a, &[0.0], &[(&[0.5], 1)]);
        aggregate(&mut a, &[0.0], &[(&[0.0], 1)]);
        aggregate(&mut s, &[0.0], &[(&[0.0], 1)]);
        assert!((a.v[0] - 0.99 * 0.0025).abs() < 1e-8);
        assert!((s.v[0] - 0.0025).abs() < 1e-8, "d = 0: sign(v - 0) = 1, step 0");
    }

    #[test]
    fn equalises_coordinates_of_very_different_scale() {
        let mut s = adam(0.1, 1e-9);
        let mut g = vec![0.0, 0.0];
        for _ in 0..5 {
            g = aggregate(&mut s, &g, &[(&[1e-3, 10.0], 1)]);
        }
        assert!((g[0] / g[1] - 1.0).abs() < 1e-3, "{g:?}");
    }

    #[test]
    fn moments_round_trip_through_state_and_restore() {
        for rule in [FedOptRule::Adam, FedOptRule::Yogi, FedOptRule::Adagrad] {
            let config = FedOptConfig::defaults(rule);
            let d1 = params(vec![0.3, -2.0, 1e-4]);
            let d2 = params(vec![-0.1, 0.5, 3.0]);
            let step = |s: &mut FedOpt, g: &Params, d: &Params| {
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
            let mut a = FedOpt::new(rule, config);
            let g0 = params(vec![1.0, 1.0, 1.0]);
            let g1 = step(&mut a, &g0, &d1);
            let g2 = step(&mut a, &g1, &d2);
            // Interrupted after round one: the state is saved (as JSON, like a
            // checkpoint would) and restored into a fresh strategy.
            let mut b = FedOpt::new(rule, config);
            let g1b = step(&mut b, &g0, &d1);
            let saved = serde_json::to_string(&b.state()).unwrap();
            let mut c = FedOpt::new(rule, config);
            c.restore(serde_json::from_str(&saved).unwrap()).unwrap();
            assert_eq!((&c.m, &c.v), (&b.m, &b.v));
            let g2c = step(&mut c, &g1b, &d2);
            let bits = |p: &Params| p.as_slice().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&g2c),
                bits(&g2),
                "{rule:?}: a restored strategy continues bit for bit"
            );
            // Without the moments the second step differs: the state matters.
            let mut fresh = FedOpt::new(rule, config);
            assert_ne!(bits(&step(&mut fresh, &g1b, &d2)), bits(&g2), "{rule:?}");
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

    #[test]
    fn settings_out_of_range_name_their_key() {
        let bad = |f: fn(&mut FedOptConfig)| {
            let mut c = FedOptConfig::defaults(FedOptRule::Adam);
            f(&mut c);
            c.validate().unwrap_err().0
        };
        assert_eq!(bad(|c| c.server_lr = 0.0), "server_lr");
        assert_eq!(bad(|c| c.beta1 = 1.0), "beta1");
        assert_eq!(bad(|c| c.beta2 = -0.1), "beta2");
        assert_eq!(bad(|c| c.tau = f64::NAN), "tau");
        assert!(FedOptConfig::defaults(FedOptRule::Yogi).validate().is_ok());
    }
}
