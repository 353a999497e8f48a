//! `PrivateLearner`: the budget guard around a hospital's learner. Before any
//! release it checks the release fits the remaining budget (else it declines
//! with "privacy budget exhausted" and releases nothing), it refuses anything
//! that was not noised, and it writes the cost to the ledger before the
//! release leaves.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{GlobalModel, Learner, LocalUpdate, PrivacySpent, Release, RoundCost, TrainPlan};
use crate::data::MomentSums;
use crate::error::{ModelError, Result};
use crate::metrics::Metrics;
use crate::params::Layout;
use crate::privacy::ledger::{Ledger, LedgerEntry};
use crate::privacy::rdp::check_delta;

/// A hospital's privacy budget for one dataset, over all runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub epsilon: f64,
    pub delta: f64,
}

impl Budget {
    /// Refuses a delta that is not below 1/n for a dataset of `n` records.
    pub fn check(&self, records: usize) -> Result<()> {
        check_delta(self.delta).map_err(|e| ModelError::Invalid(e.to_string()))?;
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ModelError::Invalid(format!(
                "epsilon must be positive, got {}",
                self.epsilon
            )));
        }
        if self.delta >= 1.0 / records as f64 {
            return Err(ModelError::Invalid(format!(
                "delta {} must be below 1/n = {:.3e} for a hospital of {records} records",
                self.delta,
                1.0 / records as f64
            )));
        }
        Ok(())
    }
}

pub struct PrivateLearner {
    inner: Box<dyn Learner>,
    ledger: Ledger,
    budget: Budget,
    run: String,
}

impl PrivateLearner {
    pub fn new(
        inner: Box<dyn Learner>,
        ledger: Ledger,
        budget: Budget,
        run: impl Into<String>,
    ) -> Result<Self> {
        budget.check(inner.num_examples())?;
        if inner.round_cost().is_none() {
            return Err(ModelError::Invalid(
                "the learner is not configured to train privately".into(),
            ));
        }
        Ok(Self {
            inner,
            ledger,
            budget,
            run: run.into(),
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn epsilon_spent(&self) -> f64 {
        self.ledger.epsilon(self.budget.delta)
    }

    /// Refuse `cost` if it does not fit the remaining budget.
    fn admit(&self, cost: &RoundCost) -> Result<f64> {
        let after = self.ledger.epsilon_after(&cost.rdp, self.budget.delta);
        if after > self.budget.epsilon * (1.0 + 1e-9) {
            return Err(ModelError::BudgetExhausted(format!(
                "epsilon spent {:.4} of {}; this {} release would bring it to {:.4}",
                self.epsilon_spent(),
                self.budget.epsilon,
                cost.mechanism,
                after
            )));
        }
        Ok(after)
    }

    fn charge(&mut self, cost: &RoundCost, round: u32) -> Result<()> {
        let entry = LedgerEntry {
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            run: self.run.clone(),
            round,
            mechanism: cost.mechanism.clone(),
            sampling_rate: cost.sampling_rate,
            noise_multiplier: cost.noise_multiplier,
            steps: cost.steps,
        };
        self.ledger.charge(&cost.rdp, entry).map_err(|e| {
            ModelError::Invalid(format!("cannot record the privacy cost, nothing released: {e}"))
        })
    }
}

fn unnoised(what: &str) -> ModelError {
    ModelError::Invalid(format!(
        "refusing to release un-noised {what} with differential privacy on"
    ))
}

impl Learner for PrivateLearner {
    fn layout(&self) -> Arc<Layout> {
        self.inner.layout()
    }

    /// The cohort size is treated as public (it weights FedAvg); see README.
    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }

    fn feature_stats(&mut self) -> Result<Option<(MomentSums, Release)>> {
        match self.inner.stats_cost() {
            None => match self.inner.feature_stats()? {
                None => Ok(None),
                Some(_) => Err(unnoised("feature statistics")),
            },
            Some(cost) => {
                self.admit(&cost)?;
                let Some((sums, release)) = self.inner.feature_stats()? else {
                    return Ok(None);
                };
                if !release.is_noised() {
                    return Err(unnoised("feature statistics"));
                }
                self.charge(&cost, 0)?;
                Ok(Some((sums, release)))
            }
        }
    }

    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate> {
        let cost = self.inner.round_cost().ok_or_else(|| unnoised("model updates"))?;
        self.admit(&cost)?;
        let mut update = self.inner.train(global, plan)?;
        if !update.release.is_noised() {
            return Err(unnoised("model updates"));
        }
        self.charge(&cost, plan.round)?;
        update.train_loss = None;
        update.privacy = Some(PrivacySpent {
            mechanism: cost.mechanism.clone(),
            noise_multiplier: cost.noise_multiplier,
            epsilon: self.epsilon_spent(),
            budget: self.budget.epsilon,
            delta: self.budget.delta,
        });
        Ok(update)
    }

    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
        self.inner.evaluate(global)
    }

    fn round_cost(&self) -> Option<RoundCost> {
        self.inner.round_cost()
    }

    fn stats_cost(&self) -> Option<RoundCost> {
        self.inner.stats_cost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::gaussian_blobs;
    use crate::learner::logistic::{LocalDp, LogisticLearner, StatsPolicy};
    use crate::params::Params;
    use crate::privacy::mechanisms::NoiseSource;

    fn dp_learner(sigma: f64) -> Box<dyn Learner> {
        let data = gaussian_blobs(200, 4, 0.5, 2.0, 3);
        let learner = LogisticLearner::new("h1", data)
            .unwrap()
            .with_privacy(
                LocalDp::DpSgd {
                    sampling_rate: 0.2,
                    max_grad_norm: 1.0,
                    noise_multiplier: sigma,
                    local_steps: 10,
                },
                StatsPolicy::Withheld,
                NoiseSource::seeded(1),
            )
            .unwrap();
        Box::new(learner)
    }

    fn global(layout: Arc<Layout>) -> GlobalModel {
        GlobalModel {
            params: Arc::new(Params::zeros(layout)),
            standardizer: None,
        }
    }

    fn plan(round: u32) -> TrainPlan {
        TrainPlan {
            round,
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.5,
            l2: 0.0,
            seed: 1,
        }
    }

    #[test]
    fn declines_once_the_budget_is_spent_and_releases_nothing() {
        let inner = dp_learner(3.0);
        // Budget for a few rounds at sigma 1, q 0.2, 10 steps per round.
        let mut p = PrivateLearner::new(
            inner,
            Ledger::in_memory("h1", "d"),
            Budget {
                epsilon: 3.0,
                delta: 1e-5,
            },
            "t",
        )
        .unwrap();
        let g = global(p.layout());
        let mut trained = 0;
        let err = loop {
            match p.train(&g, &plan(trained + 1)) {
                Ok(u) => {
                    trained += 1;
                    let spent = u.privacy.as_ref().unwrap();
                    assert!(spent.epsilon <= 3.0 + 1e-9);
                    assert!(u.train_loss.is_none(), "the loss is data-dependent and withheld");
                    assert!(u.release.is_noised());
                }
                Err(e) => break e,
            }
            assert!(trained < 1000, "never declined");
        };
        assert!(trained >= 1);
        assert!(matches!(err, ModelError::BudgetExhausted(_)), "{err}");
        assert!(err.to_string().contains("privacy budget exhausted"));
        // Nothing was charged for the declined round.
        assert_eq!(p.ledger().entries().len(), trained as usize);
        assert!(p.epsilon_spent() <= 3.0);
    }

    #[test]
    fn the_ledger_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            epsilon: 2.0,
            delta: 1e-5,
        };
        let open = || {
            PrivateLearner::new(
                dp_learner(3.0),
                Ledger::open(dir.path(), "h1", "d").unwrap(),
                budget,
                "t",
            )
            .unwrap()
        };
        let mut first = open();
        let g = global(first.layout());
        let mut rounds = 0;
        while first.train(&g, &plan(1)).is_ok() {
            rounds += 1;
        }
        assert!(rounds >= 1);
        let spent = first.epsilon_spent();
        assert!(spent > 0.0);
        drop(first);
        // The restarted hospital remembers and declines at once.
        let mut second = open();
        assert_eq!(second.epsilon_spent(), spent);
        assert!(matches!(
            second.train(&g, &plan(1)),
            Err(ModelError::BudgetExhausted(_))
        ));
    }

    /// A learner that claims to be private but releases exact values.
    struct Leaky(Box<dyn Learner>);

    impl Learner for Leaky {
        fn layout(&self) -> Arc<Layout> {
            self.0.layout()
        }
        fn num_examples(&self) -> usize {
            self.0.num_examples()
        }
        fn feature_stats(&mut self) -> Result<Option<(MomentSums, Release)>> {
            Ok(Some((
                MomentSums {
                    count: 1.0,
                    sum: vec![0.0; 4],
                    sum_sq: vec![0.0; 4],
                },
                Release::NonPrivate,
            )))
        }
        fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate> {
            let mut u = self.0.train(global, plan)?;
            u.release = Release::NonPrivate;
            Ok(u)
        }
        fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics> {
            self.0.evaluate(global)
        }
        fn round_cost(&self) -> Option<RoundCost> {
            self.0.round_cost()
        }
    }

    #[test]
    fn un_noised_releases_are_refused_and_not_charged() {
        let mut p = PrivateLearner::new(
            Box::new(Leaky(dp_learner(3.0))),
            Ledger::in_memory("h1", "d"),
            Budget {
                epsilon: 3.0,
                delta: 1e-5,
            },
            "t",
        )
        .unwrap();
        let g = global(p.layout());
        let e = p.train(&g, &plan(1)).unwrap_err();
        assert!(
            e.to_string()
                .contains("refusing to release un-noised model updates"),
            "{e}"
        );
        let e = p.feature_stats().unwrap_err();
        assert!(e.to_string().contains("un-noised feature statistics"), "{e}");
        assert!(p.ledger().entries().is_empty());
    }

    #[test]
    fn delta_must_be_below_one_over_n_and_learner_must_be_private() {
        let e = PrivateLearner::new(
            dp_learner(3.0),
            Ledger::in_memory("h", "d"),
            Budget {
                epsilon: 1.0,
                delta: 0.01,
            },
            "t",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("must be below 1/n"), "{e}");
        let plain = LogisticLearner::new("h", gaussian_blobs(200, 4, 0.5, 2.0, 3)).unwrap();
        assert!(PrivateLearner::new(
            Box::new(plain),
            Ledger::in_memory("h", "d"),
            Budget {
                epsilon: 1.0,
                delta: 1e-5
            },
            "t"
        )
        .is_err());
    }
}
