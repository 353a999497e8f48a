//! Learners: what a hospital trains, and what the coordinator evaluates with.

pub mod baseline;
pub mod cnn;
pub mod columnar;
#[cfg(test)]
mod columnar_tests;
pub mod logistic;
pub mod private;
pub mod tabular;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{MomentSums, Standardizer};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::params::{Layout, Params};
use crate::privacy::fingerprint::DataFingerprint;
use crate::privacy::mechanisms::Noised;

/// The global model a round starts from: parameters plus the federated
/// preprocessing every participant must apply to its features.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalModel {
    pub params: Arc<Params>,
    pub standardizer: Option<Arc<Standardizer>>,
}

/// The training a coordinator asks of a hospital for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPlan {
    pub round: u32,
    /// Which attempt of the round (0 unless the round was retried).
    #[serde(default)]
    pub attempt: u32,
    pub local_epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty on the weights (not the bias).
    pub l2: f64,
    /// Base seed of the run; each hospital derives its own stream from it
    /// (for shuffling; never for privacy noise, which the coordinator must
    /// not be able to predict).
    pub seed: u64,
    /// FedProx (Li et al. 2020): the local objective gains
    /// `mu/2 * ||w - w_global||^2` over every parameter; 0 is plain local
    /// training. Set by the strategy's configure-training hook.
    #[serde(default)]
    pub proximal_mu: f64,
    /// What the run asks of a private hospital beyond its own policy
    /// (`POST /api/runs` settings); ignored with DP off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<RunPrivacy>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A run's privacy request. A hospital only ever takes the more private of
/// it and its own policy (`PrivateLearner`): a lower epsilon or delta caps
/// its lifetime budget for this run, a higher noise multiplier replaces its
/// own, and nothing here can loosen either.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPrivacy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// The run's planned rounds: what a lower epsilon is spread over (set
    /// by the coordinator; 0 in a request).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rounds: u32,
}

impl TrainPlan {
    /// The seed of `hospital`'s training randomness (shuffling, sampling
    /// that is not privacy noise) for this round and attempt: a function of
    /// (seed, hospital, round, attempt) only, never of what came before, so
    /// a run resumed after a crash trains exactly as one left alone.
    /// Hospital names are unique within a federation, so they imply the task.
    pub fn stream_seed(&self, hospital: &str) -> u64 {
        crate::seed::derive(
            self.seed,
            hospital,
            u64::from(self.round) | (u64::from(self.attempt) << 32),
        )
    }
}

/// How something that left a hospital was protected: the label an update
/// carries on the wire. The protection itself is [`Noised`], which only the
/// mechanisms can make; this label is derived from it (see
/// `private::PrivateUpdate`) or, with DP off, says `NonPrivate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "release", rename_all = "snake_case")]
pub enum Release {
    /// Exact values: only allowed with differential privacy off.
    NonPrivate,
    /// Released through a differentially private mechanism.
    Noised {
        mechanism: String,
        noise_multiplier: f64,
    },
}

impl Release {
    pub fn is_noised(&self) -> bool {
        matches!(self, Release::Noised { .. })
    }
}

/// Privacy spent by a hospital, as it reports it with an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpent {
    pub mechanism: String,
    pub noise_multiplier: f64,
    /// Epsilon spent on this dataset so far, all runs included: the
    /// guarantee against the coordinator (under distributed DP, valid while
    /// secure aggregation and its non-collusion threshold hold).
    pub epsilon: f64,
    /// Under distributed DP: the epsilon against a coordinator colluding
    /// with the other hospitals (each noise share counted alone); absent
    /// when it equals `epsilon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_collusion: Option<f64>,
    pub budget: f64,
    pub delta: f64,
    /// The mechanism's public parameters per round, so that what a run
    /// would cost can be computed by anyone (the panel's privacy view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_round: Option<u64>,
    /// Under distributed DP: the noise multiplier of the hospital's own
    /// share in its latest release (the sum carries `noise_multiplier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_share: Option<f64>,
}

/// The privacy cost of one release, as Rényi-DP over the accountant's orders.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundCost {
    pub rdp: Vec<f64>,
    pub mechanism: String,
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
}

impl TrainPlan {
    /// Refuse a plan no learner can follow.
    pub fn validate(&self) -> Result<()> {
        if self.local_epochs == 0
            || self.batch_size == 0
            || self.learning_rate.is_nan()
            || self.learning_rate <= 0.0
        {
            return Err(crate::error::ModelError::Training(format!(
                "local epochs, batch size and learning rate must be positive (got {}, {}, {})",
                self.local_epochs, self.batch_size, self.learning_rate
            )));
        }
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return Err(crate::error::ModelError::Training(format!(
                "the FedProx term mu must be a non-negative number, got {}",
                self.proximal_mu
            )));
        }
        Ok(())
    }
}

/// All that leaves a hospital after a round, as the coordinator receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// Trained parameters minus the global parameters.
    pub delta: Params,
    /// The FedAvg weight: the record count, noised under DP-SGD, 1 under
    /// update-level DP (which withholds the count).
    pub num_examples: usize,
    /// Mean training loss over the last local epoch; withheld under DP.
    pub train_loss: Option<f64>,
    pub release: Release,
    pub privacy: Option<PrivacySpent>,
}

/// A hospital's model trainer over its own data, with differential privacy
/// off: what it returns is exact.
pub trait Learner: Send {
    fn layout(&self) -> Arc<Layout>;
    fn num_examples(&self) -> usize;
    /// Exact sufficient statistics for federated feature scaling, if the
    /// model uses them.
    fn feature_stats(&mut self) -> Result<Option<MomentSums>>;
    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate>;
    /// Metrics of `global` on this hospital's local data (not private).
    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics>;
}

/// A hospital's model trainer built to train under differential privacy.
/// Everything it returns came out of a mechanism (`Noised`); it never hands
/// out exact updates, statistics or metrics. `PrivateLearner` wraps one
/// with the budget and the ledger.
pub trait DpLearner: Send {
    fn layout(&self) -> Arc<Layout>;
    /// The exact number of local records, for local checks only (e.g. delta
    /// against 1/n); it is never released.
    fn local_records(&self) -> usize;
    /// The content fingerprint of the records it trains on (its ledger key).
    fn fingerprint(&self) -> DataFingerprint;
    /// How its training is made private.
    fn local_dp(&self) -> logistic::LocalDp;
    /// The privacy cost of one `train_private`.
    fn round_cost(&self) -> RoundCost {
        self.local_dp().round_cost()
    }
    /// Train with `sigma` as the noise multiplier from now on. Only
    /// `PrivateLearner` calls it, and only to raise its policy's.
    fn set_noise_multiplier(&mut self, sigma: f64);
    /// Whether it needs a released record count to normalise by (DP-SGD).
    fn needs_count(&self) -> bool {
        self.local_dp().dp_sgd_settings().is_some()
    }
    /// One round of private training. `public_count` is the released
    /// (noised) record count, when `needs_count`.
    fn train_private(
        &mut self,
        global: &GlobalModel,
        plan: &TrainPlan,
        public_count: Option<u64>,
    ) -> Result<Noised<Params>>;
    /// The cost of `private_stats`; `None` when nothing is released.
    fn stats_cost(&self) -> Option<RoundCost> {
        None
    }
    /// Noised feature statistics, or `None` when a public scaler is used.
    fn private_stats(&mut self) -> Result<Option<Noised<MomentSums>>> {
        Ok(None)
    }
}

/// The coordinator side of a task: the initial model and evaluation on the
/// held-out test set that no hospital trains on.
pub trait Evaluator: Send {
    fn init_params(&self) -> Params;
    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_streams_depend_on_round_and_attempt_only() {
        let plan = TrainPlan {
            round: 3,
            attempt: 0,
            local_epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 42,
            proximal_mu: 0.0,
            privacy: None,
        };
        // Attempt 0 keeps the streams runs used before attempts counted.
        assert_eq!(plan.stream_seed("h-1"), crate::seed::derive(42, "h-1", 3));
        let retry = TrainPlan {
            attempt: 1,
            ..plan.clone()
        };
        assert_ne!(retry.stream_seed("h-1"), plan.stream_seed("h-1"));
        assert_ne!(plan.stream_seed("h-2"), plan.stream_seed("h-1"));
        assert_eq!(plan.clone().stream_seed("h-1"), plan.stream_seed("h-1"));
    }
}
