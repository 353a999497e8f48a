//! Learners: what a hospital trains, and what the coordinator evaluates with.

pub mod baseline;
pub mod logistic;
pub mod tabular;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{MomentSums, Standardizer};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::params::{Layout, Params};

/// The global model a round starts from: parameters plus the federated
/// preprocessing every participant must apply to its features.
#[derive(Debug, Clone)]
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

/// All that leaves a hospital after a round.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// Trained parameters minus the global parameters.
    pub delta: Params,
    pub num_examples: usize,
    /// Mean training loss over the last local epoch.
    pub train_loss: f64,
}

/// A hospital's model trainer over its own data.
pub trait Learner: Send {
    fn layout(&self) -> Arc<Layout>;
    fn num_examples(&self) -> usize;
    /// Sufficient statistics for federated feature scaling, if the model uses it.
    fn feature_stats(&self) -> Option<MomentSums>;
    fn train(&mut self, global: &GlobalModel, plan: &TrainPlan) -> Result<LocalUpdate>;
    /// Metrics of `global` on this hospital's local data.
    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics>;
}

/// The coordinator side of a task: the initial model and evaluation on the
/// held-out test set that no hospital trains on.
pub trait Evaluator: Send {
    fn init_params(&self) -> Params;
    fn evaluate(&mut self, global: &GlobalModel) -> Result<Metrics>;
}
