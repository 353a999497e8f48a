//! The results of a run as the coordinator records them.

use std::collections::BTreeMap;

use serde::Serialize;

use medfed_models::learner::PrivacySpent;
use medfed_models::metrics::Metrics;

use crate::coordinator::fsm::{DropCounts, Phase};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRecord {
    pub round: u32,
    pub participants: usize,
    /// Global model on the held-out test set after this round.
    pub metrics: Metrics,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    pub hospitals: usize,
    pub phase: Phase,
    pub rounds: Vec<RoundRecord>,
    pub drops: DropCounts,
    /// Updates refused by `UpdateCheck` or failed training, by reason label.
    pub rejected: BTreeMap<String, u64>,
    pub declined: u64,
    /// Latest epsilon spent per hospital (only with differential privacy on).
    pub privacy: BTreeMap<String, PrivacySpent>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub run_id: Option<String>,
    pub tasks: BTreeMap<String, TaskReport>,
}
