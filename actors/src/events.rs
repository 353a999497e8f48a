//! `FederationEvent`s and the bus that carries them to subscribers (metrics,
//! store, tracking, the UI's live stream, the CLI's progress bar).
//!
//! The bus is a bounded broadcast: publishing never waits, so a slow or
//! failing subscriber can never stall a round; a subscriber that falls
//! behind is told how many events it missed.

use serde::Serialize;
use tokio::sync::broadcast;

use medfed_models::metrics::Metrics;

use crate::coordinator::fsm::{DropReason, Phase};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FederationEvent {
    RunStarted {
        run_id: String,
        tasks: Vec<String>,
    },
    HospitalJoined {
        task: String,
        hospital: String,
        kind: String,
        samples: usize,
        /// Where it runs: "in-process", or its cluster node and address.
        node: String,
    },
    HospitalLeft {
        task: String,
        hospital: String,
        reason: String,
    },
    HospitalRefused {
        task: String,
        hospital: String,
        reason: String,
    },
    PhaseChanged {
        task: String,
        phase: Phase,
    },
    RoundStarted {
        task: String,
        round: u32,
        attempt: u32,
        participants: Vec<String>,
    },
    UpdateAccepted {
        task: String,
        round: u32,
        hospital: String,
        num_examples: usize,
        /// Withheld (None) under differential privacy.
        train_loss: Option<f64>,
        /// Epsilon the hospital has spent on its dataset so far (DP only).
        epsilon_spent: Option<f64>,
    },
    UpdateRejected {
        task: String,
        round: u32,
        hospital: String,
        reason: String,
    },
    UpdateDeclined {
        task: String,
        round: u32,
        hospital: String,
        reason: String,
    },
    MessageDropped {
        task: String,
        hospital: String,
        reason: DropReason,
    },
    RoundBelowQuorum {
        task: String,
        round: u32,
        attempt: u32,
        accepted: usize,
        needed: usize,
    },
    RoundAggregated {
        task: String,
        round: u32,
        participants: usize,
        metrics: Metrics,
        seconds: f64,
    },
    /// A hospital's federated evaluation of a round's global model on its
    /// local test split (`metrics` is None when it declined, with `reason`).
    HospitalEvaluated {
        task: String,
        round: u32,
        hospital: String,
        metrics: Option<Metrics>,
        reason: Option<String>,
    },
    /// The assembly deadline passed with the quorum but not every expected
    /// hospital: the run starts with those that joined.
    StartingWithout {
        task: String,
        joined: Vec<String>,
        expected: usize,
    },
    TaskFinished {
        task: String,
        rounds: u32,
    },
    TaskAborted {
        task: String,
        reason: String,
    },
    /// Every task of the run has finished or aborted.
    RunEnded {
        run_id: String,
        aborted: bool,
    },
}

#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<FederationEvent>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    pub fn publish(&self, event: FederationEvent) {
        // No subscriber is not an error: events are observations, not commands.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FederationEvent> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}
