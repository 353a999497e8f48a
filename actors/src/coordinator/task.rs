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
    pub evaluator: Box<dyn Evaluator>,
    pub strategy: Box<dyn Strategy>,
    pub scaling: Scaling,
    /// Write the global model after every round into this directory.
    pub checkpoint_dir: Option<PathBuf>,
    /// Fingerprint of the held-out set; a hospital that derived its shard
    /// from a different one could be training on the held-out rows.
    pub held_out: Option<String>,
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

/// Aggregate the job's updates into the next global model, evaluate it on
/// the held-out set and checkpoint it. Runs on a blocking thread.
pub fn run_aggregation(job: &AggregateJob) -> Result<(Params, Metrics), String> {
    let result = aggregate_and_evaluate(job);
    if let (Ok((params, _)), Some(dir)) = (&result, &job.checkpoint_dir) {
        let checkpoint = Checkpoint {
            task: job.task.clone(),
            round: job.round,
            model: GlobalModel {
                params: Arc::new(params.clone()),
                standardizer: job.global.standardizer.clone(),
            },
        };
        write_checkpoint(dir, &checkpoint);
    }
    result
}

fn aggregate_and_evaluate(job: &AggregateJob) -> Result<(Params, Metrics), String> {
    let (updates, global, round) = (&job.updates, &job.global, job.round);
    let weighted: Vec<WeightedDelta<'_>> = updates
        .iter()
        .map(|u| WeightedDelta {
            delta: &u.delta,
            num_examples: u.num_examples,
        })
        .collect();
    let mut strategy = job
        .strategy
        .lock()
        .map_err(|_| "strategy lock poisoned".to_string())?;
    let next = strategy
        .aggregate_train(round, &global.params, &weighted)
        .map_err(|e| e.to_string())?;
    let candidate = GlobalModel {
        params: Arc::new(next.clone()),
        standardizer: global.standardizer.clone(),
    };
    let mut evaluator = job
        .evaluator
        .lock()
        .map_err(|_| "evaluator lock poisoned".to_string())?;
    let metrics = strategy
        .evaluate(round, &candidate, evaluator.as_mut())
        .map_err(|e| e.to_string())?;
    Ok((next, metrics))
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
