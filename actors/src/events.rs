//! `FederationEvent`s and the bus that carries them to subscribers (metrics,
//! store, tracking, the UI's live stream, the CLI's progress bar).
//!
//! Publishing never waits, so no subscriber can stall a round. Recorders
//! (store, tracking, the run's own bookkeeping) get every event in order;
//! live watchers (the panel's stream) may skip, and are told how many.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};

use medfed_models::learner::PrivacySpent;
use medfed_models::metrics::Metrics;

use crate::coordinator::fsm::{DropReason, Phase};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FederationEvent {
    RunStarted {
        run_id: String,
        tasks: Vec<String>,
        /// A resumed run: the last round each task had committed before the
        /// coordinator restarted (empty for a new run).
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        resumed_after: BTreeMap<String, u32>,
        /// Hospitals the run leaves out (site withdrawal).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        excluded: Vec<String>,
        /// Per task, the settings the run uses instead of the configured ones.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        settings: BTreeMap<String, crate::messages::TaskRunSettings>,
    },
    HospitalJoined {
        task: String,
        hospital: String,
        kind: String,
        samples: usize,
        /// The attack it declares it simulates (robustness evaluation).
        #[serde(skip_serializing_if = "Option::is_none")]
        attack: Option<String>,
        /// Where it runs: "in-process", or its cluster node and address.
        node: String,
        /// What its ledger says it has spent (DP only), before any run.
        #[serde(skip_serializing_if = "Option::is_none")]
        privacy: Option<PrivacySpent>,
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
        /// Distributed DP: its epsilon against the coordinator colluding
        /// with every other hospital.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epsilon_collusion: Option<f64>,
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
        /// The expected hospitals' default names that did not join (those
        /// that joined under other names are among `joined`).
        missing: Vec<String>,
    },
    TaskFinished {
        task: String,
        rounds: u32,
    },
    /// Stopped by the operator after `rounds` aggregated rounds.
    TaskStopped {
        task: String,
        rounds: u32,
    },
    TaskAborted {
        task: String,
        reason: String,
    },
    /// Every task of the run has finished, stopped or aborted.
    RunEnded {
        run_id: String,
        outcome: RunOutcome,
    },
}

impl FederationEvent {
    /// The hospital the event is from or about, if it is about one.
    pub fn hospital(&self) -> Option<&str> {
        use FederationEvent as E;
        match self {
            E::HospitalJoined { hospital, .. }
            | E::HospitalLeft { hospital, .. }
            | E::HospitalRefused { hospital, .. }
            | E::UpdateAccepted { hospital, .. }
            | E::UpdateRejected { hospital, .. }
            | E::UpdateDeclined { hospital, .. }
            | E::MessageDropped { hospital, .. }
            | E::HospitalEvaluated { hospital, .. } => Some(hospital),
            E::RunStarted { .. }
            | E::PhaseChanged { .. }
            | E::RoundStarted { .. }
            | E::RoundBelowQuorum { .. }
            | E::RoundAggregated { .. }
            | E::StartingWithout { .. }
            | E::TaskFinished { .. }
            | E::TaskStopped { .. }
            | E::TaskAborted { .. }
            | E::RunEnded { .. } => None,
        }
    }
}

/// How a run ended: the one place its three outcomes are told apart (the
/// run's JSON, the panel's history, `medfed_runs_total{status}` and the
/// exit codes all read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every task ran all its rounds.
    Finished,
    /// The operator stopped it (Ctrl-C, SIGTERM, the panel); no task aborted.
    Stopped,
    /// A task could not go on.
    Aborted,
}

impl RunOutcome {
    pub fn name(self) -> &'static str {
        match self {
            RunOutcome::Finished => "finished",
            RunOutcome::Stopped => "stopped",
            RunOutcome::Aborted => "aborted",
        }
    }
}

/// Carries every event to two kinds of subscriber:
///
/// - recorders (`record`): every event, in order, through an unbounded queue
///   each drains on its own task, so a slow recorder never stalls a round
///   (its backlog is `depths()`, exported as a metric);
/// - live watchers (`subscribe`): a bounded broadcast that may skip when a
///   watcher lags (the panel's stream), which it is told with the count.
///
/// `close` ends both at shutdown: live watchers at once, recordings once
/// they have received everything published before.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<FederationEvent>,
    recorders: Arc<Mutex<Vec<RecorderSlot>>>,
    closed: Arc<watch::Sender<bool>>,
}

/// A live watcher's end (see `EventBus::subscribe`).
#[derive(Debug)]
pub struct LiveWatch {
    events: broadcast::Receiver<FederationEvent>,
    closed: watch::Receiver<bool>,
}

/// What a live watcher receives next.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    Event(Box<FederationEvent>),
    /// It fell behind and these many events were skipped.
    Skipped(u64),
}

impl LiveWatch {
    /// The next event or skip notice; `None` once the bus is closed.
    pub async fn recv(&mut self) -> Option<Live> {
        if *self.closed.borrow() {
            return None;
        }
        tokio::select! {
            event = self.events.recv() => match event {
                Ok(event) => Some(Live::Event(Box::new(event))),
                Err(RecvError::Lagged(n)) => Some(Live::Skipped(n)),
                Err(RecvError::Closed) => None,
            },
            _ = self.closed.wait_for(|closed| *closed) => None,
        }
    }
}

#[derive(Debug)]
struct RecorderSlot {
    name: String,
    queue: mpsc::UnboundedSender<FederationEvent>,
    depth: Arc<AtomicU64>,
}

/// A recorder's end: every event published after `EventBus::record`, in order.
#[derive(Debug)]
pub struct Recording {
    name: String,
    queue: mpsc::UnboundedReceiver<FederationEvent>,
    depth: Arc<AtomicU64>,
}

impl Recording {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next event; `None` once the bus closed its recordings and
    /// everything published before was received.
    pub async fn recv(&mut self) -> Option<FederationEvent> {
        let event = self.queue.recv().await?;
        self.depth.fetch_sub(1, Ordering::Relaxed);
        Some(event)
    }

    /// Events published but not received yet.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            recorders: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(watch::channel(false).0),
        }
    }

    /// The recorders' list. Its lock is held only to push or clone a queue
    /// handle, so a panic elsewhere cannot leave it half-changed: a poisoned
    /// lock is used as it is rather than losing events.
    fn recorders(&self) -> MutexGuard<'_, Vec<RecorderSlot>> {
        self.recorders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn publish(&self, event: FederationEvent) {
        // A recorder that went away is forgotten; the others get the event.
        self.recorders().retain(|r| {
            r.depth.fetch_add(1, Ordering::Relaxed);
            r.queue.send(event.clone()).is_ok()
        });
        // No live watcher is not an error: events are observations, not commands.
        let _ = self.sender.send(event);
    }

    /// A live watcher: may skip events when it lags (told how many), and
    /// ends when the bus is closed.
    pub fn subscribe(&self) -> LiveWatch {
        LiveWatch {
            events: self.sender.subscribe(),
            closed: self.closed.subscribe(),
        }
    }

    /// A recorder named `name` (for the backlog metric): loses nothing.
    pub fn record(&self, name: &str) -> Recording {
        let (queue, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicU64::new(0));
        self.recorders().push(RecorderSlot {
            name: name.to_string(),
            queue,
            depth: depth.clone(),
        });
        Recording {
            name: name.to_string(),
            queue: rx,
            depth,
        }
    }

    /// Each recorder's backlog: events published but not yet received.
    pub fn depths(&self) -> Vec<(String, u64)> {
        self.recorders()
            .iter()
            .map(|s| (s.name.clone(), s.depth.load(Ordering::Relaxed)))
            .collect()
    }

    /// End the live watchers now (an open event stream must not hold a
    /// server's shutdown).
    pub fn close_live(&self) {
        self.closed.send_replace(true);
    }

    /// No more events: live watchers end at once, and each recording once it
    /// has received what was published before (the flush at shutdown).
    pub fn close(&self) {
        self.close_live();
        self.recorders().clear();
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}
