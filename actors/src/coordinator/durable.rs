//! What makes a run survive its coordinator: each closed round is committed
//! (`RoundCommit`) before the next is asked for, and a restarted coordinator
//! carries on from the last commit (`ResumePoint`). The runtime knows only
//! this trait; the app implements it over its store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use medfed_models::aggregate::StrategyState;
use medfed_models::checkpoint::Checkpoint;
use medfed_models::learner::{GlobalModel, PrivacySpent};

use crate::messages::TaskRunSettings;
use crate::report::RoundRecord;

/// A task's running totals, kept across a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskTotals {
    /// Rejected updates by reason label.
    pub rejected: BTreeMap<String, u64>,
    pub declined: u64,
    pub departures: u64,
}

/// One closed round of a task, with all a restart needs to carry on as if
/// nothing happened: the model, the strategy's state, the round's record
/// and the task's totals.
#[derive(Debug, Clone)]
pub struct RoundCommit {
    pub run_id: String,
    pub task: String,
    /// The run's planned rounds for this task.
    pub target_rounds: u32,
    /// The global model after this round (`checkpoint.round` is the round).
    pub checkpoint: Checkpoint,
    pub strategy: StrategyState,
    pub record: RoundRecord,
    pub totals: TaskTotals,
    /// The latest privacy each hospital reported (DP only).
    pub privacy: BTreeMap<String, PrivacySpent>,
}

/// A run about to start: recorded before anything is asked of a hospital,
/// so that a crash at any point leaves every task and exclusion on record.
#[derive(Debug, Clone, PartialEq)]
pub struct RunBegin {
    pub run_id: String,
    /// Each task with its planned rounds.
    pub tasks: BTreeMap<String, u32>,
    pub excluded: Vec<String>,
    /// Per task, the settings the run uses instead of the configured ones.
    pub settings: BTreeMap<String, TaskRunSettings>,
}

/// Where a run's start and its commits go. Both return once durable; the
/// coordinator asks nothing of the hospitals before that.
pub trait RoundStore: Send + Sync {
    fn begin(&self, run: &RunBegin) -> Result<(), String>;
    fn commit(&self, commit: &RoundCommit) -> Result<(), String>;
}

/// One task of an interrupted run, as its last commit left it.
#[derive(Debug, Clone)]
pub struct TaskResume {
    pub target_rounds: u32,
    /// The committed model and strategy state; `None` when the run stopped
    /// before its first commit (it then starts over at the preparation).
    pub committed: Option<(GlobalModel, StrategyState)>,
    /// Every committed round, in order.
    pub history: Vec<RoundRecord>,
    pub totals: TaskTotals,
    pub privacy: BTreeMap<String, PrivacySpent>,
}

/// An interrupted run to carry on: its id and each task's last commit.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    pub run_id: String,
    pub tasks: BTreeMap<String, TaskResume>,
    /// Hospitals the run leaves out (site withdrawal).
    pub excluded: Vec<String>,
    /// Per task, the settings the run was started with.
    pub settings: BTreeMap<String, TaskRunSettings>,
}
