//! Learners: what a hospital trains, and what the coordinator evaluates with.

pub mod baseline;
pub mod cnn;
pub mod logistic;
pub mod private;
pub mod tabular;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{MomentSums, Standardizer};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::params::{Layout, Params};

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
    pub local_epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty on the weights (not the bias).
    pub l2: f64,
    /// Base seed of the run; each hospital derives its own stream from it.
    pub seed: u64,
}

/// How something that leaves a hospital was protected.
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
    /// Epsilon spent on this dataset so far, all runs included.
    pub epsilon: f64,
    pub budget: f64,
    pub delta: f64,
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
        Ok(())
    }
}

/// All that leaves a hospital after a round.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// Trained parameters minus the global parameters.
    pub delta: Params,
    pub num_examples: usize,
    /// Mean training loss over the last local epoch; withheld under DP.
    pub train_loss: Option<f64>,
    pub release: Release,
    pub privacy: Option<PrivacySpent>,
}

/// A hospital's model trainer over its own data.
pub trait Learner: Send {
    fn layout(&self) -> Arc<Layout>;
    fn num_examples(&self) -> usize;
    /// Sufficient statistics for federated feature scaling, if the model
    /// uses them, and how they were protected.
    fn feature_stats(&mut self) -> Result<Option<(MomentSums, Release)>>;
    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate>;
    /// Metrics of `global` on this hospital's local data (not private).
    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics>;
    /// The privacy cost of one `train`; `None` when training is not private.
    fn round_cost(&self) -> Option<RoundCost> {
        None
    }
    /// The privacy cost of `feature_stats`; `None` when nothing private is released.
    fn stats_cost(&self) -> Option<RoundCost> {
        None
    }
}

/// The coordinator side of a task: the initial model and evaluation on the
/// held-out test set that no hospital trains on.
pub trait Evaluator: Send {
    fn init_params(&self) -> Params;
    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics>;
}
