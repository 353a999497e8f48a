//! What the coordinator is given to run one task (`TaskSetup`), and the
//! aggregation job the shell runs off the actor when a training stage closes.

use std::path::PathBuf;
use std::sync::Arc;

use medfed_models::aggregate::{Strategy, UpdateCheck, WeightedDelta};
use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::Standardizer;
use medfed_models::learner::{Evaluator, GlobalModel, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::Params;

use super::core::AggregateJob;
use super::fsm::FsmConfig;

/// Everything the coordinator needs to run one task.
pub struct TaskSetup {
    pub name: String,
    pub fsm: FsmConfig,
    /// The plan sent each round (`round` is filled in per round).
    pub plan: TrainPlan,
    pub check: UpdateCheck,
    /// Most hospitals this task admits at once (`None`: no cap).
    pub max_hospitals: Option<usize>,
    pub evaluator: Box<dyn Evaluator>,
    pub strategy: Box<dyn Strategy>,
    pub scaling: Scaling,
    /// Write the global model after every round into this directory.
    pub checkpoint_dir: Option<PathBuf>,
    /// Fingerprint of the held-out set; a hospital that derived its shard
    /// from a different one could be training on the held-out rows.
    pub held_out: Option<String>,
    /// The model's input columns, in order (tables): a hospital whose
    /// features differ is refused at join, naming the columns.
    pub features: Option<Vec<String>>,
    /// The names the expected hospitals join under by default, to say who
    /// is missing when a run starts without some of them.
    pub expected_names: Vec<String>,
}

/// How a task's features are scaled.
#[derive(Debug, Clone)]
pub enum Scaling {
    /// Combine the hospitals' feature statistics (noised under DP).
    Federated,
    /// A public, data-independent scaler (e.g. from published feature ranges).
    Fixed(Arc<Standardizer>),
    /// No scaling.
    None,
}

/// A training stage's result: the next global model, its held-out metrics,
/// and the strategy as the aggregation left it (its state moved on).
pub struct Aggregated {
    pub params: Params,
    pub metrics: Metrics,
    pub strategy: Box<dyn Strategy>,
}

impl std::fmt::Debug for Aggregated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregated")
            .field("metrics", &self.metrics)
            .field("strategy", &self.strategy.name())
            .finish_non_exhaustive()
    }
}

/// Aggregate the job's updates into the next global model with the job's
/// copy of the strategy and evaluate it on the held-out set. Runs on a
/// blocking thread.
pub fn run_aggregation(job: AggregateJob) -> Result<Aggregated, String> {
    crate::failpoints::crash_point("coordinator::aggregating");
    let AggregateJob {
        round,
        global,
        updates,
        mut strategy,
        evaluator,
        ..
    } = job;
    let weighted: Vec<WeightedDelta<'_>> = updates
        .iter()
        .map(|u| WeightedDelta {
            delta: &u.delta,
            num_examples: u.num_examples,
        })
        .collect();
    let params = strategy
        .aggregate_train(round, &global.params, &weighted)
        .map_err(|e| e.to_string())?;
    let candidate = GlobalModel {
        params: Arc::new(params.clone()),
        standardizer: global.standardizer.clone(),
    };
    let mut evaluator = evaluator
        .lock()
        .map_err(|_| "the evaluator's lock was poisoned by an earlier panic".to_string())?;
    let metrics = strategy
        .evaluate(round, &candidate, evaluator.as_mut())
        .map_err(|e| e.to_string())?;
    Ok(Aggregated {
        params,
        metrics,
        strategy,
    })
}

/// Save a round's global model into `dir`. A failure is logged, not fatal:
/// training goes on, and the final model can still be fetched from the coordinator.
pub fn write_checkpoint(dir: &std::path::Path, checkpoint: &Checkpoint) {
    let path = dir.join(Checkpoint::file_name(checkpoint.round));
    if let Err(e) = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|_| checkpoint.save(&path).map_err(|e| e.to_string()))
    {
        tracing::error!(task = %checkpoint.task, round = checkpoint.round, path = %path.display(), "cannot write checkpoint: {e}");
    }
}
