//! One task's runtime data on the coordinator: its global model, evaluator,
//! strategy, the updates collected in the current attempt and the history.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use medfed_models::aggregate::{Strategy, UpdateCheck, WeightedDelta};
use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::{MomentSums, Standardizer};
use medfed_models::learner::{Evaluator, GlobalModel, LocalUpdate, PrivacySpent, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::Params;

use super::fsm::{FsmConfig, HospitalId, TaskFsm};
use crate::report::{RoundRecord, TaskReport};

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

pub struct TaskRuntime {
    pub name: String,
    pub fsm: TaskFsm,
    pub plan: TrainPlan,
    pub check: UpdateCheck,
    pub evaluator: Arc<Mutex<Box<dyn Evaluator>>>,
    pub strategy: Arc<Mutex<Box<dyn Strategy>>>,
    pub scaling: Scaling,
    pub checkpoint_dir: Option<PathBuf>,
    pub held_out: Option<String>,
    pub global: GlobalModel,
    pub kept_updates: BTreeMap<HospitalId, LocalUpdate>,
    pub kept_stats: BTreeMap<HospitalId, MomentSums>,
    pub history: Vec<RoundRecord>,
    pub round_started: Option<Instant>,
    pub rejected: BTreeMap<String, u64>,
    pub declined: u64,
    /// Hospitals that left during this run.
    pub departures: u64,
    /// The latest privacy report of each hospital (kept across runs: budgets are lifetime).
    pub privacy: BTreeMap<HospitalId, PrivacySpent>,
}

impl TaskRuntime {
    pub fn new(setup: TaskSetup) -> Self {
        let params = Arc::new(setup.evaluator.init_params());
        Self {
            name: setup.name,
            fsm: TaskFsm::new(setup.fsm),
            plan: setup.plan,
            check: setup.check,
            evaluator: Arc::new(Mutex::new(setup.evaluator)),
            strategy: Arc::new(Mutex::new(setup.strategy)),
            global: GlobalModel {
                params,
                standardizer: fixed_scaler(&setup.scaling),
            },
            scaling: setup.scaling,
            checkpoint_dir: setup.checkpoint_dir,
            held_out: setup.held_out,
            kept_updates: BTreeMap::new(),
            kept_stats: BTreeMap::new(),
            history: Vec::new(),
            round_started: None,
            rejected: BTreeMap::new(),
            declined: 0,
            departures: 0,
            privacy: BTreeMap::new(),
        }
    }

    /// Reset the model and history for a new run.
    pub fn reset_for_run(&mut self) -> Result<(), String> {
        self.strategy
            .lock()
            .map_err(|_| "strategy lock poisoned")?
            .reset();
        let evaluator = self.evaluator.lock().map_err(|_| "evaluator lock poisoned")?;
        self.global = GlobalModel {
            params: Arc::new(evaluator.init_params()),
            standardizer: fixed_scaler(&self.scaling),
        };
        self.kept_updates.clear();
        self.kept_stats.clear();
        self.history.clear();
        self.round_started = None;
        self.rejected.clear();
        self.declined = 0;
        self.departures = 0;
        Ok(())
    }

    pub fn combine_stats(&mut self, from: &[HospitalId]) -> Result<(), String> {
        if !matches!(self.scaling, Scaling::Federated) {
            return Ok(());
        }
        let parts: Vec<&MomentSums> = from.iter().filter_map(|h| self.kept_stats.get(h)).collect();
        if parts.len() != from.len() {
            return Err("statistics missing for a hospital counted in the quorum".into());
        }
        let sums = MomentSums::combine(parts).map_err(|e| e.to_string())?;
        let scaler = Standardizer::from_sums(&sums).map_err(|e| e.to_string())?;
        self.global.standardizer = Some(Arc::new(scaler));
        Ok(())
    }

    pub fn plan_for(&self, round: u32) -> TrainPlan {
        TrainPlan {
            round,
            ..self.plan.clone()
        }
    }

    /// The latest global model and the round that produced it (0: initial).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            task: self.name.clone(),
            round: self.history.last().map(|r| r.round).unwrap_or(0),
            model: self.global.clone(),
        }
    }

    pub fn count_rejection(&mut self, label: &str) {
        *self.rejected.entry(label.to_string()).or_default() += 1;
    }

    pub fn report(&self) -> TaskReport {
        TaskReport {
            hospitals: self.fsm.members().len(),
            phase: self.fsm.phase().clone(),
            rounds: self.history.clone(),
            drops: self.fsm.drops().clone(),
            rejected: self.rejected.clone(),
            declined: self.declined,
            departures: self.departures,
            privacy: self.privacy.clone(),
        }
    }
}

fn fixed_scaler(scaling: &Scaling) -> Option<Arc<Standardizer>> {
    match scaling {
        Scaling::Fixed(s) => Some(s.clone()),
        _ => None,
    }
}

/// Aggregate `updates` into the next global model and evaluate it on the
/// held-out set. Runs on a blocking thread.
pub fn aggregate_and_evaluate(
    strategy: &Mutex<Box<dyn Strategy>>,
    evaluator: &Mutex<Box<dyn Evaluator>>,
    global: &GlobalModel,
    updates: &[LocalUpdate],
) -> Result<(Params, Metrics), String> {
    let weighted: Vec<WeightedDelta<'_>> = updates
        .iter()
        .map(|u| WeightedDelta {
            delta: &u.delta,
            num_examples: u.num_examples,
        })
        .collect();
    let next = strategy
        .lock()
        .map_err(|_| "strategy lock poisoned".to_string())?
        .aggregate(&global.params, &weighted)
        .map_err(|e| e.to_string())?;
    let candidate = GlobalModel {
        params: Arc::new(next.clone()),
        standardizer: global.standardizer.clone(),
    };
    let metrics = evaluator
        .lock()
        .map_err(|_| "evaluator lock poisoned".to_string())?
        .evaluate(&candidate)
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
