use std::sync::{Arc, Mutex};

use ractor::{pg, Actor, ActorProcessingErr, ActorRef};
use tracing::{error, info, warn};

use medfed_models::attack::Attack;
use medfed_models::learner::Evaluator;
use medfed_models::seed;

use super::learner::HospitalLearner;
use super::observer::HospitalObserver;
use super::secure::{SecAggIdentity, SecureRounds};
use crate::coordinator::{task_group, StageKind};
use crate::messages::{CoordinatorMsg, EvalOutcome, HospitalInfo, ToCoordinator, ToHospital, TrainOutcome};

pub struct Hospital;

/// Simulates a hospital dying mid-round (a test and evaluation hook, as
/// `attack` is): the actor stops, as its process would on a crash, when it
/// is asked for `stage` in `round`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashAt {
    pub round: u32,
    pub stage: StageKind,
}

/// What a hospital itself decides about secure aggregation; the
/// coordinator cannot change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SecurePolicy {
    /// Secure aggregation is on at this hospital: a private learner may add
    /// only its noise share to a securely summed update.
    pub enabled: bool,
    /// Decline every training round that is not securely aggregated.
    pub required: bool,
}

/// The stage and round a request belongs to (`None`: not a stage's request).
fn stage_of(msg: &ToHospital) -> Option<(u32, StageKind)> {
    match msg {
        ToHospital::CollectStats { ask, .. } => Some((ask.round, StageKind::Stats)),
        ToHospital::Train { ask, .. } => Some((ask.round, StageKind::Train)),
        ToHospital::Evaluate { ask, .. } => Some((ask.round, StageKind::Evaluate)),
        ToHospital::SecAgg { ask, step } => Some((ask.round, step.stage())),
        ToHospital::Welcome | ToHospital::Refused { .. } | ToHospital::Leaving => None,
    }
}

pub struct HospitalArgs {
    pub name: String,
    pub task: String,
    pub kind: String,
    /// Private whenever differential privacy is on.
    pub learner: HospitalLearner,
    pub coordinator: ActorRef<CoordinatorMsg>,
    /// This hospital's own test split, for federated evaluation.
    pub local_test: Option<Box<dyn Evaluator>>,
    /// See `HospitalInfo::held_out`.
    pub held_out: Option<String>,
    /// See `HospitalInfo::features`.
    pub features: Option<Vec<String>>,
    /// Simulate this attack on every update (an evaluation tool).
    pub attack: Option<Attack>,
    /// Log every release at INFO: the site's own record (a hospital in its
    /// own process); the in-process simulation logs them at DEBUG.
    pub site_record: bool,
    /// The hospital's own /metrics and readiness, when it serves them.
    pub observer: Option<Arc<dyn HospitalObserver>>,
    /// Signs its secure-aggregation keys and checks its peers' (cluster
    /// mode with mutual TLS).
    pub secagg_identity: Option<SecAggIdentity>,
    /// See `CrashAt`.
    pub crash_at: Option<CrashAt>,
    pub secure_policy: SecurePolicy,
}

pub struct HospitalState {
    info: HospitalInfo,
    /// Differential privacy is on: nothing but noised releases leaves.
    private: bool,
    learner: Arc<Mutex<HospitalLearner>>,
    local_test: Option<Arc<Mutex<Box<dyn Evaluator>>>>,
    coordinator: ActorRef<CoordinatorMsg>,
    attack: Option<Attack>,
    site_record: bool,
    observer: Option<Arc<dyn HospitalObserver>>,
    secure: SecureRounds,
    crash_at: Option<CrashAt>,
    secure_policy: SecurePolicy,
}

impl Actor for Hospital {
    type Msg = ToHospital;
    type State = HospitalState;
    type Arguments = HospitalArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let info = HospitalInfo {
            name: args.name,
            task: args.task,
            kind: args.kind,
            samples: args.learner.announced_samples(),
            node: "in-process".into(),
            held_out: args.held_out,
            attack: args.attack.map(|a| a.describe()),
            privacy: args.learner.privacy_spent(),
            features: args.features,
        };
        if let Some(attack) = &info.attack {
            warn!(
                hospital = %info.name,
                "THIS HOSPITAL ATTACKS THE FEDERATION ({attack}): every update it sends is altered, \
                 to evaluate robust aggregation; it says so in its hello"
            );
        }
        pg::join(task_group(&info.task), vec![myself.get_cell()]);
        args.coordinator.cast(CoordinatorMsg::FromHospital {
            sender: myself.clone(),
            message: ToCoordinator::Hello { info: info.clone() },
        })?;
        info!(hospital = %info.name, task = %info.task, "hospital started");
        if let (Some(observer), Some(spent)) = (&args.observer, &info.privacy) {
            observer.privacy(spent, args.learner.ledger_writes());
        }
        Ok(HospitalState {
            private: args.learner.is_private(),
            learner: Arc::new(Mutex::new(args.learner)),
            local_test: args.local_test.map(|e| Arc::new(Mutex::new(e))),
            coordinator: args.coordinator,
            attack: args.attack,
            site_record: args.site_record,
            observer: args.observer,
            secure: SecureRounds::new(&info.name, &info.task, args.secagg_identity),
            crash_at: args.crash_at,
            secure_policy: args.secure_policy,
            info,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let (Some(crash), Some((round, stage))) = (state.crash_at, stage_of(&msg)) {
            if crash.round == round && crash.stage == stage {
                warn!(hospital = %state.info.name, round, "simulated crash on a {} request (crash_at)", stage.name());
                myself.stop(Some("simulated crash".into()));
                return Ok(());
            }
        }
        let reply = match msg {
            ToHospital::Welcome => return Ok(()),
            ToHospital::CollectStats { ask, privacy } => {
                let outcome = lock(&state.learner)?.stats(privacy);
                ToCoordinator::Stats { ask, outcome }
            }
            ToHospital::SecAgg { ask, step } => ToCoordinator::SecAgg {
                ask,
                answer: state.secure.step(ask, step),
            },
            ToHospital::Train {
                ask,
                model,
                plan,
                shares,
            } => {
                if shares.is_none() && state.secure_policy.required {
                    let outcome = TrainOutcome::Declined {
                        reason: "this hospital trains only in securely aggregated rounds \
                                 (privacy.require_secure_aggregation) and this round is not"
                            .into(),
                    };
                    return send_reply(&myself, state, ToCoordinator::Update { ask, outcome });
                }
                // A secure round: refuse before training (and spending any
                // privacy budget) when the round could not complete.
                if let Some(shares) = &shares {
                    if let Err(reason) = state.secure.accept_shares(ask, shares) {
                        let outcome = TrainOutcome::Declined {
                            reason: format!("secure aggregation: {reason}"),
                        };
                        return send_reply(&myself, state, ToCoordinator::Update { ask, outcome });
                    }
                }
                // Only a hospital with secure aggregation on itself relies on
                // the sum for part of its noise.
                let summed = if shares.is_some() && state.secure_policy.enabled {
                    state.secure.summed_with(ask)
                } else {
                    None
                };
                let learner = state.learner.clone();
                let run_seed = plan.seed;
                let started = std::time::Instant::now();
                // Training is CPU-bound: keep it off the actor runtime's threads.
                let outcome = tokio::task::spawn_blocking(move || match lock(&learner) {
                    Ok(mut l) => l.train(&model, &plan, summed),
                    Err(e) => TrainOutcome::Failed {
                        reason: e.to_string(),
                    },
                })
                .await
                .unwrap_or_else(|e| TrainOutcome::Failed {
                    reason: format!("training thread failed: {e}"),
                });
                if let TrainOutcome::Failed { reason } = &outcome {
                    warn!(hospital = %state.info.name, round = ask.round, "local training failed: {reason}");
                }
                if let Some(observer) = &state.observer {
                    let sent = matches!(outcome, TrainOutcome::Trained { .. });
                    observer.trained(started.elapsed().as_secs_f64(), sent);
                }
                let mut outcome = outcome;
                if let (Some(attack), TrainOutcome::Trained { update }) = (&state.attack, &mut outcome) {
                    // After any noise: the attack changes what is sent, not what was private.
                    let label = format!("{}/attack", state.info.name);
                    attack.apply(
                        &mut update.delta,
                        seed::derive(run_seed, &label, u64::from(ask.round)),
                    );
                }
                if let (Some(_), TrainOutcome::Trained { update }) = (summed, &outcome) {
                    if update.privacy.as_ref().is_some_and(|p| p.noise_share.is_none()) {
                        info!(
                            hospital = %state.info.name,
                            round = ask.round,
                            "secure round released with full noise: several DP-SGD steps per round get no \
                             noise share, nor does a sum of fewer than privacy.min_summed_hospitals"
                        );
                    }
                }
                if shares.is_some() {
                    if let TrainOutcome::Trained { update } = outcome {
                        outcome = state.secure.mask(ask, update);
                    }
                }
                ToCoordinator::Update { ask, outcome }
            }
            ToHospital::Evaluate { ask, model } => {
                let outcome = match (&state.local_test, state.private) {
                    // Test-set metrics describe patients too, and no mechanism noises them.
                    (_, true) => EvalOutcome::Declined {
                        reason: "local test metrics are not private: withheld under differential privacy"
                            .into(),
                    },
                    (None, false) => EvalOutcome::Declined {
                        reason: "this hospital has no local test split".into(),
                    },
                    (Some(evaluator), false) => {
                        let evaluator = evaluator.clone();
                        tokio::task::spawn_blocking(move || {
                            let mut e = evaluator
                                .lock()
                                .map_err(|_| "evaluator lock poisoned by an earlier panic".to_string())?;
                            e.evaluate(&model).map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(|e| format!("evaluation thread failed: {e}"))
                        .and_then(|r| r)
                        .map(|metrics| EvalOutcome::Evaluated { metrics })
                        .unwrap_or_else(|reason| EvalOutcome::Declined {
                            reason: format!("local evaluation failed: {reason}"),
                        })
                    }
                };
                ToCoordinator::Evaluated { ask, outcome }
            }
            // The cluster link handles it; nothing to do in the agent.
            ToHospital::Leaving => return Ok(()),
            ToHospital::Refused { reason } => {
                error!(hospital = %state.info.name, "coordinator refused this hospital: {reason}");
                myself.stop(Some(reason));
                return Ok(());
            }
        };
        send_reply(&myself, state, reply)
    }
}

/// Log the release, update the hospital's own metrics, and send it.
fn send_reply(
    myself: &ActorRef<ToHospital>,
    state: &HospitalState,
    message: ToCoordinator,
) -> Result<(), ActorProcessingErr> {
    super::releases::log_release(&state.info.name, &message, state.site_record);
    if let Some(observer) = &state.observer {
        let l = lock(&state.learner)?;
        if let Some(spent) = l.privacy_spent() {
            observer.privacy(&spent, l.ledger_writes());
        }
    }
    state.coordinator.cast(CoordinatorMsg::FromHospital {
        sender: myself.clone(),
        message,
    })?;
    Ok(())
}

fn lock(
    learner: &Mutex<HospitalLearner>,
) -> Result<std::sync::MutexGuard<'_, HospitalLearner>, ActorProcessingErr> {
    learner
        .lock()
        .map_err(|_| "learner lock poisoned by an earlier panic".into())
}
