//! What a hospital actor trains with: an open learner (DP off, exact
//! releases) or a `PrivateLearner` (DP on). The variant decides what can
//! leave: from a private learner the actor can only obtain `Noised`
//! releases, so there is no exact update for it to send by mistake.

use medfed_models::learner::private::PrivateLearner;
use medfed_models::learner::{GlobalModel, Learner, PrivacySpent, RunPrivacy, TrainPlan};
use medfed_models::ModelError;

use crate::messages::{StatsOutcome, TrainOutcome};

pub enum HospitalLearner {
    /// Differential privacy off: updates and statistics are exact.
    Open(Box<dyn Learner>),
    /// Differential privacy on.
    Private(Box<PrivateLearner>),
}

impl HospitalLearner {
    pub fn is_private(&self) -> bool {
        matches!(self, HospitalLearner::Private(_))
    }

    /// The record count the hospital announces when it joins: exact with DP
    /// off, the released (noised) count with DP on, 0 where it is withheld.
    pub fn announced_samples(&self) -> usize {
        match self {
            HospitalLearner::Open(l) => l.num_examples(),
            HospitalLearner::Private(p) => p.announced_samples(),
        }
    }

    /// The privacy its ledger says it has spent (DP only): what it
    /// announces when it joins, before any run.
    /// Writes of the privacy ledger's file by this process (0 with DP off).
    pub fn ledger_writes(&self) -> u64 {
        match self {
            HospitalLearner::Open(_) => 0,
            HospitalLearner::Private(p) => p.ledger().writes(),
        }
    }

    pub fn privacy_spent(&self) -> Option<PrivacySpent> {
        match self {
            HospitalLearner::Open(_) => None,
            HospitalLearner::Private(p) => Some(p.spent()),
        }
    }

    /// `privacy`: what the run asks beyond the hospital's policy.
    pub fn stats(&mut self, privacy: Option<RunPrivacy>) -> StatsOutcome {
        let released = match self {
            HospitalLearner::Open(l) => l.feature_stats(),
            HospitalLearner::Private(p) => p.feature_stats(privacy).map(|s| s.map(|n| n.into_value())),
        };
        match released {
            Ok(stats) => StatsOutcome::Released { stats },
            Err(e) => StatsOutcome::Declined {
                reason: e.to_string(),
            },
        }
    }

    /// `summed`: the round's update goes into a secure sum of at least
    /// this many hospitals (a private learner may then add only its noise
    /// share, under its own policy).
    pub fn train(&mut self, model: &GlobalModel, plan: &TrainPlan, summed: Option<usize>) -> TrainOutcome {
        let trained = match self {
            HospitalLearner::Open(l) => l.train(model, plan),
            HospitalLearner::Private(p) => p.train_summed(model, plan, summed).map(|u| u.into_message()),
        };
        match trained {
            Ok(update) => TrainOutcome::Trained { update },
            Err(ModelError::BudgetExhausted(reason)) => TrainOutcome::Declined {
                reason: format!("privacy budget exhausted: {reason}"),
            },
            Err(e) => TrainOutcome::Failed {
                reason: e.to_string(),
            },
        }
    }
}
