//! The one message set (DESIGN §3): `ToHospital` and `ToCoordinator` are
//! both what the actors receive in process and what crosses the wire; their
//! encoding lives beside them in `wire`. Gateways and links forward these
//! values unchanged. Adding a message is one variant here, plus its tensor
//! arm in `tensors()`/`attach_tensors()` when it carries a model.
//!
//! A hospital's messages name no sender: the coordinator knows who sent one
//! from the actor it came from (in process the hospital itself; in cluster
//! mode the proxy the gateway bound to that hospital's link).

// Hand-built messages: tests and the fuzz corpus only (feature `samples`).
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod secure;
pub mod wire;

use std::collections::BTreeMap;

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use medfed_models::aggregate::StrategyConfig;
use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::MomentSums;
use medfed_models::learner::{GlobalModel, LocalUpdate, PrivacySpent, Release, RunPrivacy, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::secagg::MaskedInputRequest;
use medfed_models::Params;

use crate::coordinator::durable::ResumePoint;
use crate::coordinator::fsm::TimerId;
use crate::coordinator::task::Aggregated;
use crate::report::RunReport;
pub use secure::{SecAggAnswer, SecAggStep};

/// What a hospital tells the coordinator about itself when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// An attack this hospital simulates (robustness evaluation), as
    /// `KIND[:FACTOR]`: it says so, and the coordinator records it.
    #[serde(default)]
    pub attack: Option<String>,
    /// What its ledger says it has spent (DP only), so that the coordinator
    /// and the panel show it from the moment it joins.
    #[serde(default)]
    pub privacy: Option<PrivacySpent>,
    /// Its model's input columns, in order (tables); checked against the
    /// task's at join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// Which request an answer belongs to: the run (the coordinator's
/// generation, new for every run it starts), the round (0: the preparation)
/// and the attempt. The coordinator puts it on every request, the hospital
/// echoes it, and an answer to anything but the current request is dropped
/// as late: an update trained for a stopped run never counts in the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub run: u64,
    pub round: u32,
    pub attempt: u32,
}

/// A hospital's answer to a training request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum TrainOutcome {
    /// The update's tensors travel in the frame's tensor block.
    Trained {
        #[serde(with = "wire::update_without_delta")]
        update: LocalUpdate,
    },
    Failed {
        reason: String,
    },
    Declined {
        reason: String,
    },
    /// Under secure aggregation: the update quantised and masked; the ring
    /// words travel in the frame's tensor block (`secure::masked_to_params`).
    Masked {
        #[serde(skip, default = "wire::empty_tensors")]
        vector: Params,
        release: Release,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        privacy: Option<PrivacySpent>,
    },
}

/// A hospital's answer to a statistics request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum StatsOutcome {
    /// Feature sums (noised when DP is on), or `None` when the hospital
    /// releases none (a public scaler is in use).
    Released {
        stats: Option<MomentSums>,
    },
    Declined {
        reason: String,
    },
}

/// A hospital's answer to a federated-evaluation request: the global
/// model's metrics on its local test split, or why it gave none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum EvalOutcome {
    Evaluated { metrics: Metrics },
    Declined { reason: String },
}

/// Coordinator -> hospital.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToHospital {
    /// A coordinator node noticed this hospital's node; sent in its own wire
    /// version, so that a hospital speaking another one learns it at once.
    Welcome,
    /// Release feature statistics for federated scaling (within the run's
    /// privacy request, as a training round).
    CollectStats {
        ask: Ask,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        privacy: Option<RunPrivacy>,
    },
    /// Train on the local data from `model`; the tensors travel raw. In a
    /// secure round it is the masked-input stage: `shares` carries the
    /// encrypted shares addressed to this hospital, and the answer is masked.
    Train {
        ask: Ask,
        #[serde(with = "wire::model_without_params")]
        model: GlobalModel,
        plan: TrainPlan,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shares: Option<MaskedInputRequest>,
    },
    /// A secure-aggregation stage other than the masked input.
    SecAgg { ask: Ask, step: SecAggStep },
    /// Evaluate the global model of round `ask.round` on the local test split.
    Evaluate {
        ask: Ask,
        #[serde(with = "wire::model_without_params")]
        model: GlobalModel,
    },
    /// The coordinator refused this hospital (e.g. its name is taken).
    Refused { reason: String },
    /// The coordinator is shutting down normally (not a crash): wait for
    /// the next one patiently.
    Leaving,
}

/// Hospital -> coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToCoordinator {
    Hello {
        info: HospitalInfo,
    },
    Stats {
        ask: Ask,
        outcome: StatsOutcome,
    },
    Update {
        ask: Ask,
        outcome: TrainOutcome,
    },
    /// A hospital's federated evaluation of the global model of `ask.round`.
    Evaluated {
        ask: Ask,
        outcome: EvalOutcome,
    },
    SecAgg {
        ask: Ask,
        answer: SecAggAnswer,
    },
}

impl ToHospital {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ToHospital::Welcome => "welcome",
            ToHospital::CollectStats { .. } => "collect_stats",
            ToHospital::Train { .. } => "train",
            ToHospital::Evaluate { .. } => "evaluate",
            ToHospital::SecAgg { step, .. } => match step {
                SecAggStep::Setup { .. } => "secagg_setup",
                SecAggStep::ShareKeys { .. } => "secagg_share_keys",
                SecAggStep::Unmask { .. } => "secagg_unmask",
            },
            ToHospital::Refused { .. } => "refused",
            ToHospital::Leaving => "leaving",
        }
    }
}

impl ToCoordinator {
    /// The request this message answers (`None`: a hello).
    pub fn ask(&self) -> Option<Ask> {
        match self {
            ToCoordinator::Hello { .. } => None,
            ToCoordinator::Stats { ask, .. }
            | ToCoordinator::Update { ask, .. }
            | ToCoordinator::Evaluated { ask, .. }
            | ToCoordinator::SecAgg { ask, .. } => Some(*ask),
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ToCoordinator::Hello { .. } => "hello",
            ToCoordinator::Stats { .. } => "stats",
            ToCoordinator::Update { .. } => "update",
            ToCoordinator::Evaluated { .. } => "evaluated",
            ToCoordinator::SecAgg { answer, .. } => match answer {
                SecAggAnswer::Keys { .. } => "secagg_keys",
                SecAggAnswer::Shares { .. } => "secagg_shares",
                SecAggAnswer::Unmask { .. } => "secagg_unmask_shares",
                SecAggAnswer::Declined { .. } => "secagg_declined",
            },
        }
    }
}

impl wire::CarriesTensors for ToHospital {
    fn tensors(&self) -> Option<&Params> {
        match self {
            ToHospital::Train { model, .. } | ToHospital::Evaluate { model, .. } => Some(&model.params),
            ToHospital::Welcome
            | ToHospital::CollectStats { .. }
            | ToHospital::SecAgg { .. }
            | ToHospital::Refused { .. }
            | ToHospital::Leaving => None,
        }
    }

    fn attach_tensors(&mut self, params: Params) -> Result<(), String> {
        match self {
            ToHospital::Train { model, .. } | ToHospital::Evaluate { model, .. } => {
                model.params = std::sync::Arc::new(params);
                Ok(())
            }
            other => Err(format!("a {} message carries no tensors", other.name())),
        }
    }

    fn take_tensors(&mut self) -> Option<std::sync::Arc<Params>> {
        match self {
            ToHospital::Train { model, .. } | ToHospital::Evaluate { model, .. } => Some(std::mem::replace(
                &mut model.params,
                std::sync::Arc::new(Params::empty()),
            )),
            _ => None,
        }
    }
}

impl wire::CarriesTensors for ToCoordinator {
    fn tensors(&self) -> Option<&Params> {
        match self {
            ToCoordinator::Update {
                outcome: TrainOutcome::Trained { update },
                ..
            } => Some(&update.delta),
            ToCoordinator::Update {
                outcome: TrainOutcome::Masked { vector, .. },
                ..
            } => Some(vector),
            _ => None,
        }
    }

    fn attach_tensors(&mut self, params: Params) -> Result<(), String> {
        match self {
            ToCoordinator::Update {
                outcome: TrainOutcome::Trained { update },
                ..
            } => {
                update.delta = params;
                Ok(())
            }
            ToCoordinator::Update {
                outcome: TrainOutcome::Masked { vector, .. },
                ..
            } => {
                *vector = params;
                Ok(())
            }
            other => Err(format!("a {} message carries no tensors", other.name())),
        }
    }

    fn take_tensors(&mut self) -> Option<std::sync::Arc<Params>> {
        match self {
            ToCoordinator::Update {
                outcome: TrainOutcome::Trained { update },
                ..
            } => Some(std::sync::Arc::new(std::mem::replace(
                &mut update.delta,
                Params::empty(),
            ))),
            ToCoordinator::Update {
                outcome: TrainOutcome::Masked { vector, .. },
                ..
            } => Some(std::sync::Arc::new(std::mem::replace(vector, Params::empty()))),
            _ => None,
        }
    }
}

/// What `StartRun` asks for; `None` fields take the configured defaults.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub rounds: Option<u32>,
    pub tasks: Option<Vec<String>>,
    /// Hospitals this run must not use (site withdrawal): never asked for
    /// anything, whether or not they are joined.
    pub exclude: Vec<String>,
    /// Per task, settings this run uses instead of the configured ones.
    pub settings: BTreeMap<String, TaskRunSettings>,
}

/// What one run sets for one task instead of its configuration (the app
/// validates them with the configuration's own rules first). Recorded with
/// the run, so that a resumed run carries on with them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRunSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSettings>,
    /// Sent to the hospitals in each training plan (its `rounds` set by
    /// the coordinator); a hospital only ever takes it to be more private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<RunPrivacy>,
}

/// The local training a run asks for (every field of the training plan
/// that is not the round's own).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    pub local_epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub l2: f64,
}

/// Why the coordinator would not start a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartRefused {
    #[error("run {0} is still active; stop it first")]
    RunActive(String),
    #[error("{0}")]
    Invalid(String),
}

/// Everything the coordinator actor receives: hospitals' messages, bound
/// to the actor they came from, and the local control requests.
pub enum CoordinatorMsg {
    FromHospital {
        sender: ActorRef<ToHospital>,
        message: ToCoordinator,
    },
    StartRun {
        request: RunRequest,
        reply: RpcReplyPort<Result<String, StartRefused>>,
    },
    /// Carry on an interrupted run from its last committed rounds.
    ResumeRun {
        point: Box<ResumePoint>,
        reply: RpcReplyPort<Result<String, StartRefused>>,
    },
    /// Stop the active run; the reply names it (`None`: no run was active).
    /// Its `RunEnded` is published before the reply.
    Stop(RpcReplyPort<Option<String>>),
    Deadline {
        task: String,
        timer: TimerId,
    },
    RoundDone {
        task: String,
        generation: u64,
        round: u32,
        result: Result<Aggregated, crate::coordinator::task::AggregateFailure>,
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
impl ractor::Message for ToHospital {}
