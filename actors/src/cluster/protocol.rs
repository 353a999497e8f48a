//! The messages that cross between the coordinator's node and hospital
//! nodes, as wire frames (DESIGN §3): a JSON header (names, plans, metrics,
//! scaler) followed by the model as one raw little-endian tensor block.
//!
//! ```text
//! message payload: header length u32 | header JSON | tensor block (may be empty)
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use medfed_models::data::{MomentSums, Standardizer};
use medfed_models::learner::{GlobalModel, LocalUpdate, PrivacySpent, Release, TrainPlan};
use medfed_models::Params;

use crate::messages::{EvalOutcome, HospitalInfo, StatsOutcome, TrainOutcome};
use crate::wire::{encode_frame, tensors, Reader, WireError};

/// Frame kinds.
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_CHUNK: u8 = 2;

/// Headers larger than this are refused before parsing.
const MAX_HEADER: usize = 1 << 20;

/// Everything a coordinator and a hospital say to each other across nodes.
/// `link` names the sending hospital's link actor, so that the gateway can
/// tell which registered hospital a message comes from.
#[derive(Debug)]
pub enum ClusterMessage {
    // hospital -> coordinator
    Hello {
        link: String,
        info: HospitalInfo,
    },
    Stats {
        link: String,
        from: String,
        task: String,
        attempt: u32,
        outcome: StatsOutcome,
    },
    Update {
        link: String,
        from: String,
        task: String,
        round: u32,
        attempt: u32,
        outcome: TrainOutcome,
    },
    Evaluated {
        link: String,
        from: String,
        task: String,
        round: u32,
        outcome: EvalOutcome,
    },
    // coordinator -> hospital
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
    Evaluate {
        task: String,
        round: u32,
        model: GlobalModel,
    },
    Refused {
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Header {
    Hello {
        link: String,
        info: HospitalInfo,
    },
    Stats {
        link: String,
        from: String,
        task: String,
        attempt: u32,
        stats: Option<MomentSums>,
        declined: Option<String>,
    },
    Update {
        link: String,
        from: String,
        task: String,
        round: u32,
        attempt: u32,
        result: UpdateHeader,
    },
    Evaluated {
        link: String,
        from: String,
        task: String,
        round: u32,
        outcome: EvalOutcome,
    },
    CollectStats {
        task: String,
        attempt: u32,
    },
    Train {
        task: String,
        round: u32,
        attempt: u32,
        plan: TrainPlan,
        standardizer: Option<Standardizer>,
    },
    Evaluate {
        task: String,
        round: u32,
        standardizer: Option<Standardizer>,
    },
    Refused {
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
enum UpdateHeader {
    Trained {
        num_examples: usize,
        train_loss: Option<f64>,
        release: Release,
        privacy: Option<PrivacySpent>,
    },
    Failed {
        reason: String,
    },
    Declined {
        reason: String,
    },
}

impl ClusterMessage {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterMessage::Hello { .. } => "hello",
            ClusterMessage::Stats { .. } => "stats",
            ClusterMessage::Update { .. } => "update",
            ClusterMessage::Evaluated { .. } => "evaluated",
            ClusterMessage::CollectStats { .. } => "collect_stats",
            ClusterMessage::Train { .. } => "train",
            ClusterMessage::Evaluate { .. } => "evaluate",
            ClusterMessage::Refused { .. } => "refused",
        }
    }

    /// The message as one wire frame: header and tensors copied once, into it.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let (header, tensors): (Header, Option<&Params>) = match self {
            ClusterMessage::Hello { link, info } => (
                Header::Hello {
                    link: link.clone(),
                    info: info.clone(),
                },
                None,
            ),
            ClusterMessage::Stats {
                link,
                from,
                task,
                attempt,
                outcome,
            } => {
                let (stats, declined) = match outcome {
                    StatsOutcome::Released(stats) => (stats.clone(), None),
                    StatsOutcome::Declined(reason) => (None, Some(reason.clone())),
                };
                (
                    Header::Stats {
                        link: link.clone(),
                        from: from.clone(),
                        task: task.clone(),
                        attempt: *attempt,
                        stats,
                        declined,
                    },
                    None,
                )
            }
            ClusterMessage::Update {
                link,
                from,
                task,
                round,
                attempt,
                outcome,
            } => {
                let (result, delta) = match outcome {
                    TrainOutcome::Trained(u) => (
                        UpdateHeader::Trained {
                            num_examples: u.num_examples,
                            train_loss: u.train_loss,
                            release: u.release.clone(),
                            privacy: u.privacy.clone(),
                        },
                        Some(&u.delta),
                    ),
                    TrainOutcome::Failed(reason) => (
                        UpdateHeader::Failed {
                            reason: reason.clone(),
                        },
                        None,
                    ),
                    TrainOutcome::Declined(reason) => (
                        UpdateHeader::Declined {
                            reason: reason.clone(),
                        },
                        None,
                    ),
                };
                (
                    Header::Update {
                        link: link.clone(),
                        from: from.clone(),
                        task: task.clone(),
                        round: *round,
                        attempt: *attempt,
                        result,
                    },
                    delta,
                )
            }
            ClusterMessage::Evaluated {
                link,
                from,
                task,
                round,
                outcome,
            } => (
                Header::Evaluated {
                    link: link.clone(),
                    from: from.clone(),
                    task: task.clone(),
                    round: *round,
                    outcome: outcome.clone(),
                },
                None,
            ),
            ClusterMessage::CollectStats { task, attempt } => (
                Header::CollectStats {
                    task: task.clone(),
                    attempt: *attempt,
                },
                None,
            ),
            ClusterMessage::Train {
                task,
                round,
                attempt,
                model,
                plan,
            } => (
                Header::Train {
                    task: task.clone(),
                    round: *round,
                    attempt: *attempt,
                    plan: plan.clone(),
                    standardizer: model.standardizer.as_deref().cloned(),
                },
                Some(&*model.params),
            ),
            ClusterMessage::Evaluate { task, round, model } => (
                Header::Evaluate {
                    task: task.clone(),
                    round: *round,
                    standardizer: model.standardizer.as_deref().cloned(),
                },
                Some(&*model.params),
            ),
            ClusterMessage::Refused { reason } => (
                Header::Refused {
                    reason: reason.clone(),
                },
                None,
            ),
        };
        let json = serde_json::to_vec(&header).map_err(|e| WireError::Malformed(format!("header: {e}")))?;
        let len = (json.len() as u32).to_le_bytes();
        match tensors {
            Some(params) => {
                let (names, values) = (tensors::header(params), tensors::values_le(params));
                encode_frame(KIND_MESSAGE, &[&len, &json, &names, &values])
            }
            None => encode_frame(KIND_MESSAGE, &[&len, &json]),
        }
    }

    /// Decode the payload of a `KIND_MESSAGE` frame.
    pub fn decode(payload: &[u8]) -> Result<ClusterMessage, WireError> {
        let mut r = Reader::new(payload);
        let len = r.u32()? as usize;
        if len > MAX_HEADER {
            return Err(WireError::TooLarge(format!("a header of {len} bytes")));
        }
        let header: Header =
            serde_json::from_slice(r.take(len)?).map_err(|e| WireError::Malformed(format!("header: {e}")))?;
        let block = r.take(r.remaining())?;
        let model = |standardizer: Option<Standardizer>| -> Result<GlobalModel, WireError> {
            Ok(GlobalModel {
                params: Arc::new(require_tensors(block)?),
                standardizer: standardizer.map(Arc::new),
            })
        };
        let no_tensors = |m: ClusterMessage| {
            if block.is_empty() {
                Ok(m)
            } else {
                Err(WireError::Malformed(format!(
                    "a {} message carries no tensors",
                    m.name()
                )))
            }
        };
        match header {
            Header::Hello { link, info } => no_tensors(ClusterMessage::Hello { link, info }),
            Header::Stats {
                link,
                from,
                task,
                attempt,
                stats,
                declined,
            } => no_tensors(ClusterMessage::Stats {
                link,
                from,
                task,
                attempt,
                outcome: match declined {
                    Some(reason) => StatsOutcome::Declined(reason),
                    None => StatsOutcome::Released(stats),
                },
            }),
            Header::Update {
                link,
                from,
                task,
                round,
                attempt,
                result,
            } => {
                let outcome = match result {
                    UpdateHeader::Trained {
                        num_examples,
                        train_loss,
                        release,
                        privacy,
                    } => TrainOutcome::Trained(LocalUpdate {
                        delta: require_tensors(block)?,
                        num_examples,
                        train_loss,
                        release,
                        privacy,
                    }),
                    UpdateHeader::Failed { reason } => TrainOutcome::Failed(reason),
                    UpdateHeader::Declined { reason } => TrainOutcome::Declined(reason),
                };
                let message = ClusterMessage::Update {
                    link,
                    from,
                    task,
                    round,
                    attempt,
                    outcome,
                };
                match &message {
                    ClusterMessage::Update {
                        outcome: TrainOutcome::Trained(_),
                        ..
                    } => Ok(message),
                    _ => no_tensors(message),
                }
            }
            Header::Evaluated {
                link,
                from,
                task,
                round,
                outcome,
            } => no_tensors(ClusterMessage::Evaluated {
                link,
                from,
                task,
                round,
                outcome,
            }),
            Header::CollectStats { task, attempt } => {
                no_tensors(ClusterMessage::CollectStats { task, attempt })
            }
            Header::Train {
                task,
                round,
                attempt,
                plan,
                standardizer,
            } => Ok(ClusterMessage::Train {
                task,
                round,
                attempt,
                model: model(standardizer)?,
                plan,
            }),
            Header::Evaluate {
                task,
                round,
                standardizer,
            } => Ok(ClusterMessage::Evaluate {
                task,
                round,
                model: model(standardizer)?,
            }),
            Header::Refused { reason } => no_tensors(ClusterMessage::Refused { reason }),
        }
    }
}

fn require_tensors(block: &[u8]) -> Result<Params, WireError> {
    if block.is_empty() {
        return Err(WireError::Malformed("the model's tensors are missing".into()));
    }
    tensors::decode(block, None)
}
