//! The results of a run as the coordinator records them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use medfed_models::learner::PrivacySpent;
use medfed_models::metrics::Metrics;

use crate::coordinator::fsm::{DropCounts, Phase};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    pub participants: usize,
    /// Global model on the held-out test set after this round.
    pub metrics: Metrics,
    /// From the round's training requests to its aggregated, evaluated model.
    pub seconds: f64,
    /// The whole round, its federated evaluation included (None until it closed).
    pub seconds_with_evaluation: Option<f64>,
    /// The same model on the hospitals' local test splits (federated evaluation).
    pub federated: FederatedEval,
    /// What became of each hospital's training answer this round (its last
    /// attempt): the lineage of the round's model.
    #[serde(default)]
    pub participation: BTreeMap<String, Participation>,
}

/// One hospital's part in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participation {
    pub outcome: ParticipationOutcome,
    /// Why it was rejected, declined, late or departed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The examples its accepted update was weighed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipationOutcome {
    Accepted,
    Rejected,
    Declined,
    Late,
    Departed,
}

impl ParticipationOutcome {
    pub fn name(self) -> &'static str {
        match self {
            ParticipationOutcome::Accepted => "accepted",
            ParticipationOutcome::Rejected => "rejected",
            ParticipationOutcome::Declined => "declined",
            ParticipationOutcome::Late => "late",
            ParticipationOutcome::Departed => "departed",
        }
    }
}

/// Federated evaluation of one round's global model: each hospital's
/// metrics on its own test split, and what the strategy made of them when
/// the stage closed (by default their pooled confusion matrix).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FederatedEval {
    /// Hospitals asked to evaluate.
    pub requested: usize,
    /// Hospitals that answered, with metrics or a reason not to.
    pub answered: usize,
    /// The strategy's `aggregate_evaluate` of the hospitals' metrics (by
    /// default over the union of the local test splits; AUC is not poolable).
    pub pooled: Option<Metrics>,
    pub hospitals: BTreeMap<String, Metrics>,
    pub declined: BTreeMap<String, String>,
}

impl FederatedEval {
    pub fn record(&mut self, hospital: String, outcome: crate::messages::EvalOutcome) {
        match outcome {
            crate::messages::EvalOutcome::Evaluated { metrics } => {
                self.hospitals.insert(hospital, metrics);
            }
            crate::messages::EvalOutcome::Declined { reason } => {
                self.declined.insert(hospital, reason);
            }
        }
        self.answered = self.hospitals.len() + self.declined.len();
    }
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
    /// Hospitals that left during the run.
    pub departures: u64,
    /// Latest epsilon spent per hospital (only with differential privacy on).
    pub privacy: BTreeMap<String, PrivacySpent>,
    /// Hospitals that declared a simulated attack (`KIND[:FACTOR]`).
    pub attacks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub run_id: Option<String>,
    pub tasks: BTreeMap<String, TaskReport>,
}
