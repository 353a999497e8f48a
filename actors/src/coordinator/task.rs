//! What the coordinator is given to run one task (`TaskSetup`), and the
//! aggregation job the shell runs off the actor when a training stage closes.

use std::path::PathBuf;
use std::sync::Arc;

use medfed_models::aggregate::{Strategy, UpdateCheck, WeightedDelta};
use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::Standardizer;
use medfed_models::learner::{Evaluator, GlobalModel, LocalUpdate, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::secagg::{RoundContext, RoundPlan, Server};
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
    /// Secure aggregation (with `Protocol::secure`): the coordinator sees
    /// only the sum of the updates.
    pub secure: Option<SecureSettings>,
}

/// A task's secure-aggregation settings (validated by the app).
#[derive(Debug, Clone, PartialEq)]
pub struct SecureSettings {
    /// Share holders per hospital, itself included (`None`: the default for
    /// the round's participants, `RoundPlan::default_num_shares`).
    pub num_shares: Option<usize>,
    /// Shares that rebuild a secret (`None`: a strict majority of the holders).
    pub threshold: Option<usize>,
    pub clipping_range: f64,
    pub quantization_bits: u32,
    /// Counted inputs are scaled by count / max_weight (at most 1).
    pub max_weight: u64,
    /// Fewest inputs a sum is unmasked with: max(the training quorum, 3).
    pub min_inputs: usize,
    /// The norm bound each hospital enforces on its own update.
    pub max_update_norm: Option<f64>,
}

impl SecureSettings {
    /// The protocol parameters of one attempt over `participants` hospitals.
    pub fn round_plan(&self, participants: usize, graph_seed: u64) -> RoundPlan {
        let num_shares = self
            .num_shares
            .unwrap_or_else(|| RoundPlan::default_num_shares(participants));
        let holders = num_shares.min(participants).max(1);
        RoundPlan {
            num_shares,
            threshold: self
                .threshold
                .unwrap_or_else(|| RoundPlan::default_threshold(holders)),
            clipping_range: self.clipping_range,
            quantization_bits: self.quantization_bits,
            min_inputs: self.min_inputs,
            graph_seed,
        }
    }
}

/// A secure round's sum, to unmask off the actor.
pub struct SecureJob {
    pub server: Server,
    pub max_weight: u64,
}

impl SecureJob {
    pub fn context(&self) -> &RoundContext {
        self.server.context()
    }
}

/// Why a round's aggregation produced no model.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateFailure {
    pub reason: String,
    /// The round may be tried again (a secure sum aborted: too few shares
    /// or inputs, or a corrupted share); otherwise the run aborts.
    pub retry_round: bool,
}

impl From<String> for AggregateFailure {
    fn from(reason: String) -> Self {
        Self {
            reason,
            retry_round: false,
        }
    }
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
    /// Shared with the evaluation's candidate: a real-size model is not copied.
    pub params: Arc<Params>,
    /// Whose updates the model is made of (counted).
    pub participants: usize,
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
pub fn run_aggregation(job: AggregateJob) -> Result<Aggregated, AggregateFailure> {
    crate::failpoints::crash_point("coordinator::aggregating");
    let AggregateJob {
        round,
        global,
        updates,
        secure,
        mut strategy,
        evaluator,
        ..
    } = job;
    // Under secure aggregation the only update is the unmasked mean:
    // linear strategies aggregate one update to itself.
    let (updates, participants) = match secure {
        None => {
            let n = updates.len();
            (updates, n)
        }
        Some(job) => {
            let (mean, n) = unmask_mean(job, &global.params)?;
            (vec![mean], n)
        }
    };
    let weighted: Vec<WeightedDelta<'_>> = updates
        .iter()
        .map(|u| WeightedDelta {
            delta: &u.delta,
            num_examples: u.num_examples,
        })
        .collect();
    let params = Arc::new(
        strategy
            .aggregate_train(round, &global.params, &weighted)
            .map_err(|e| e.to_string())?,
    );
    let candidate = GlobalModel {
        params: params.clone(),
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
        participants,
        metrics,
        strategy,
    })
}

/// Unmask a secure round's sum into the weighted mean update, and the
/// number of hospitals in it.
fn unmask_mean(job: SecureJob, global: &Params) -> Result<(LocalUpdate, usize), AggregateFailure> {
    let SecureJob {
        mut server,
        max_weight,
    } = job;
    let retry = |e: medfed_models::secagg::SecAggError| AggregateFailure {
        reason: e.to_string(),
        retry_round: true,
    };
    let dropped = server.dropped();
    let sum = server.finish().map_err(retry)?;
    tracing::info!(
        task = %server.context().task,
        round = server.context().round,
        inputs = sum.inputs.len(),
        dropped,
        "secure sum unmasked"
    );
    let mean = sum.weighted_mean(max_weight).map_err(retry)?;
    let values: Vec<f32> = mean.into_iter().map(|v| v as f32).collect();
    let delta = Params::new(global.layout().clone(), values).map_err(|e| e.to_string())?;
    let mean = LocalUpdate {
        delta,
        num_examples: usize::try_from(sum.weight).unwrap_or(usize::MAX),
        train_loss: None,
        release: medfed_models::learner::Release::NonPrivate,
        privacy: None,
    };
    Ok((mean, sum.inputs.len()))
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
