//! Messages between the coordinator and hospital actors.

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::MomentSums;
use medfed_models::learner::{GlobalModel, LocalUpdate, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::Params;

use crate::coordinator::fsm::TimerId;
use crate::report::RunReport;

/// What a hospital tells the coordinator about itself when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HospitalInfo {
    pub name: String,
    pub task: String,
    pub kind: String,
    pub samples: usize,
    /// Where it runs; the cluster gateway fills in the node it came from.
    pub node: String,
    /// Fingerprint of the held-out set its shard was split from (cluster
    /// `--shard` hospitals); checked against the coordinator's.
    #[serde(default)]
    pub held_out: Option<String>,
}

/// A hospital's answer to a training request.
#[derive(Debug)]
pub enum TrainOutcome {
    Trained(LocalUpdate),
    Failed(String),
    Declined(String),
}

/// A hospital's answer to a statistics request.
#[derive(Debug)]
pub enum StatsOutcome {
    /// Feature sums (noised when DP is on), or `None` when the hospital
    /// releases none (a public scaler is in use).
    Released(Option<MomentSums>),
    Declined(String),
}

/// A hospital's answer to a federated-evaluation request: the global
/// model's metrics on its local test split, or why it gave none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EvalOutcome {
    Evaluated { metrics: Metrics },
    Declined { reason: String },
}

/// What `StartRun` asks for; `None` fields take the configured defaults.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub rounds: Option<u32>,
    pub tasks: Option<Vec<String>>,
}

/// Why the coordinator would not start a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartRefused {
    #[error("run {0} is still active; stop it first")]
    RunActive(String),
    #[error("{0}")]
    Invalid(String),
}

pub enum CoordinatorMsg {
    Join {
        info: HospitalInfo,
        hospital: ActorRef<HospitalMsg>,
    },
    Stats {
        from: String,
        task: String,
        attempt: u32,
        outcome: StatsOutcome,
    },
    Update {
        from: String,
        task: String,
        round: u32,
        attempt: u32,
        outcome: TrainOutcome,
    },
    /// A hospital's federated evaluation of the global model after `round`.
    Evaluated {
        from: String,
        task: String,
        round: u32,
        outcome: EvalOutcome,
    },
    StartRun {
        request: RunRequest,
        reply: RpcReplyPort<Result<String, StartRefused>>,
    },
    Stop,
    Deadline {
        task: String,
        timer: TimerId,
    },
    RoundDone {
        task: String,
        generation: u64,
        round: u32,
        result: Result<(Params, Metrics), String>,
    },
    Report(RpcReplyPort<RunReport>),
    /// The task's latest global model (None: no such task).
    Model {
        task: String,
        reply: RpcReplyPort<Option<Checkpoint>>,
    },
}

// ractor's `cluster` feature is on in this build: local messages say so explicitly.
impl ractor::Message for CoordinatorMsg {}

pub enum HospitalMsg {
    CollectStats {
        task: String,
        attempt: u32,
    },
    Train {
        task: String,
        round: u32,
        attempt: u32,
        model: GlobalModel,
        plan: TrainPlan,
    },
    /// Evaluate the global model after `round` on the local test split.
    Evaluate {
        task: String,
        round: u32,
        model: GlobalModel,
    },
    /// The coordinator refused this hospital (e.g. its name is taken).
    Refused {
        reason: String,
    },
}

impl ractor::Message for HospitalMsg {}
