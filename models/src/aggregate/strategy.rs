//! The strategy hooks, after Flower's split of duties (`strategy.py`):
//! initialise, configure and aggregate training, configure and aggregate
//! evaluation, evaluate on the server's held-out set; plus the fewest
//! updates a round needs and the state a checkpoint keeps.
//!
//! Every hook but `aggregate_train` has the plain federated behaviour as
//! its default, so a strategy states only what it changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WeightedDelta;
use crate::error::{ModelError, Result};
use crate::learner::{Evaluator, GlobalModel, TrainPlan};
use crate::metrics::{self, Metrics};
use crate::params::Params;

/// What a strategy carries from round to round (e.g. a server optimiser's
/// moments), as named f32 vectors: enough to checkpoint and resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StrategyState {
    /// The strategy that wrote it; `restore` refuses another's.
    pub strategy: String,
    pub vectors: BTreeMap<String, Vec<f32>>,
}

pub trait Strategy: Send {
    fn name(&self) -> &'static str;

    /// A copy to aggregate a round with off the coordinator's thread: the
    /// coordinator adopts it back only if the round's result still counts,
    /// so a round of a stopped run cannot change the next run's state.
    fn boxed_clone(&self) -> Box<dyn Strategy>;

    /// A new run starts from `initial`: forget what earlier rounds left and
    /// return the first global model.
    fn initialise(&mut self, initial: Params) -> Result<Params> {
        Ok(initial)
    }

    /// What each hospital is asked to do in a training round (e.g. a
    /// FedProx term); `base` is the task's plan for that round.
    fn configure_train(
        &self,
        _round: u32,
        base: &TrainPlan,
        hospitals: &[String],
    ) -> Vec<(String, TrainPlan)> {
        hospitals.iter().map(|h| (h.clone(), base.clone())).collect()
    }

    /// The next global model from the round's accepted updates.
    fn aggregate_train(
        &mut self,
        round: u32,
        global: &Params,
        updates: &[WeightedDelta<'_>],
    ) -> Result<Params>;

    /// The hospitals asked to evaluate a round's model on their local test splits.
    fn configure_evaluate(&self, _round: u32, hospitals: &[String]) -> Vec<String> {
        hospitals.to_vec()
    }

    /// The hospitals' local metrics combined: by default their pooled
    /// confusion matrix (AUC is not poolable).
    fn aggregate_evaluate(&self, _round: u32, results: &[&Metrics]) -> Option<Metrics> {
        metrics::pooled(results)
    }

    /// The candidate global model on the server's held-out set.
    fn evaluate(&self, _round: u32, model: &GlobalModel, evaluator: &mut dyn Evaluator) -> Result<Metrics> {
        evaluator.evaluate(model)
    }

    /// The fewest accepted updates a training round may aggregate (robust
    /// rules need more than one: Krum's n >= 2f + 3).
    fn min_updates(&self) -> usize {
        1
    }

    /// What `restore` needs to continue exactly where this strategy is.
    fn state(&self) -> StrategyState {
        StrategyState {
            strategy: self.name().to_string(),
            vectors: BTreeMap::new(),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        check_owner(self.name(), &state)?;
        if !state.vectors.is_empty() {
            return Err(ModelError::Invalid(format!(
                "strategy {} keeps no state, but the checkpoint holds {}",
                self.name(),
                state.vectors.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }
}

/// `state` was written by the strategy named `name`.
pub fn check_owner(name: &str, state: &StrategyState) -> Result<()> {
    if state.strategy != name {
        return Err(ModelError::Invalid(format!(
            "the checkpoint's strategy state is {}'s, not {name}'s",
            state.strategy
        )));
    }
    Ok(())
}
