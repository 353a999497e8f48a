//! The coordinator's finite state machine for one task, as a pure transition
//! function: `(state, event) -> effects`. No actors, clocks or I/O here; the
//! actor shell executes the effects (sends requests, arms timers, aggregates).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub type HospitalId = String;

/// Where a task's federation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Idle,
    /// Waiting for `min_hospitals` to join.
    Assembling,
    /// Collecting the hospitals' feature statistics for federated scaling.
    Preparing {
        attempt: u32,
    },
    Training {
        round: u32,
        attempt: u32,
    },
    /// Aggregating the round's updates and evaluating on the held-out set.
    Evaluating {
        round: u32,
    },
    Finished {
        rounds: u32,
    },
    Aborted {
        reason: String,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Assembling => "assembling",
            Phase::Preparing { .. } => "preparing",
            Phase::Training { .. } => "training",
            Phase::Evaluating { .. } => "evaluating",
            Phase::Finished { .. } => "finished",
            Phase::Aborted { .. } => "aborted",
        }
    }

    pub fn is_active(&self) -> bool {
        !matches!(self, Phase::Idle | Phase::Finished { .. } | Phase::Aborted { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FsmConfig {
    pub min_hospitals: usize,
    pub rounds: u32,
    /// Extra attempts of a round (or of preparation) that ended below quorum.
    pub max_retries: u32,
    pub round_timeout: Duration,
    pub assemble_timeout: Duration,
}

/// Identifies one armed deadline; only the latest one is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerId(pub u64);

/// What a hospital answered to a training request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The update passed `UpdateCheck`; the shell holds it.
    Valid,
    /// The update failed `UpdateCheck` (or training failed). `label` is a
    /// short, bounded name for counting; `reason` the full explanation.
    Invalid { label: String, reason: String },
    /// The hospital declined to train (e.g. privacy budget exhausted).
    Declined(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        rounds: u32,
    },
    Joined(HospitalId),
    Left(HospitalId),
    /// `usable` is false when the hospital declined (e.g. privacy budget).
    StatsArrived {
        from: HospitalId,
        attempt: u32,
        usable: bool,
    },
    UpdateArrived {
        from: HospitalId,
        round: u32,
        attempt: u32,
        verdict: Verdict,
    },
    DeadlineExpired(TimerId),
    Evaluated {
        round: u32,
    },
    EvaluationFailed {
        round: u32,
        reason: String,
    },
    /// The shell could not carry out an effect; the run cannot go on.
    Failed {
        reason: String,
    },
    Stop,
}

/// Why an arriving message was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// For an earlier round or attempt.
    Late,
    /// Second answer from the same hospital in one attempt.
    Duplicate,
    /// From a hospital that was not asked in this attempt.
    UnknownSender,
    /// Nothing is being collected now (idle, evaluating, finished...).
    Unexpected,
}

impl DropReason {
    /// The snake_case name used in events and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            DropReason::Late => "late",
            DropReason::Duplicate => "duplicate",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::Unexpected => "unexpected",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    RequestStats {
        to: Vec<HospitalId>,
        attempt: u32,
    },
    /// Keep this hospital's statistics for combination.
    KeepStats {
        from: HospitalId,
    },
    /// Combine the statistics of these hospitals into the federated scaler.
    CombineStats {
        from: Vec<HospitalId>,
    },
    RequestTraining {
        to: Vec<HospitalId>,
        round: u32,
        attempt: u32,
    },
    ArmDeadline {
        timer: TimerId,
        after: Duration,
    },
    /// Keep this hospital's update for aggregation.
    KeepUpdate {
        from: HospitalId,
    },
    /// The update was answered but not kept (`Verdict::Invalid`/`Declined`).
    RefuseUpdate {
        from: HospitalId,
        verdict: Verdict,
    },
    Drop {
        from: HospitalId,
        reason: DropReason,
    },
    /// Forget every kept update and collected statistic.
    DiscardCollected,
    /// Aggregate the kept updates of these hospitals and evaluate.
    Aggregate {
        round: u32,
        from: Vec<HospitalId>,
    },
    RoundStarted {
        round: u32,
        attempt: u32,
        participants: Vec<HospitalId>,
    },
    RoundBelowQuorum {
        round: u32,
        attempt: u32,
        accepted: usize,
        needed: usize,
    },
    RunFinished {
        rounds: u32,
    },
    RunAborted {
        reason: String,
    },
}

/// Counts of dropped messages, by reason, over the machine's lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub late: u64,
    pub duplicate: u64,
    pub unknown_sender: u64,
    pub unexpected: u64,
}

#[derive(Debug, Clone)]
pub struct TaskFsm {
    config: FsmConfig,
    phase: Phase,
    members: BTreeSet<HospitalId>,
    /// Asked in the current attempt and not answered yet.
    awaiting: BTreeSet<HospitalId>,
    /// Answered in the current attempt (any verdict).
    answered: BTreeSet<HospitalId>,
    /// Answers that can be used: valid updates, or statistics.
    usable: BTreeSet<HospitalId>,
    target_rounds: u32,
    /// The latest (round, attempt) hospitals were asked to train for.
    last_asked: Option<(u32, u32)>,
    /// Distinct reasons hospitals declined with in the current round.
    declines: BTreeSet<String>,
    next_timer: u64,
    live_timer: Option<TimerId>,
    drops: DropCounts,
}

impl TaskFsm {
    pub fn new(config: FsmConfig) -> Self {
        let target_rounds = config.rounds;
        Self {
            config,
            phase: Phase::Idle,
            members: BTreeSet::new(),
            awaiting: BTreeSet::new(),
            answered: BTreeSet::new(),
            usable: BTreeSet::new(),
            target_rounds,
            last_asked: None,
            declines: BTreeSet::new(),
            next_timer: 0,
            live_timer: None,
            drops: DropCounts::default(),
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn members(&self) -> &BTreeSet<HospitalId> {
        &self.members
    }

    pub fn target_rounds(&self) -> u32 {
        self.target_rounds
    }

    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    pub fn config(&self) -> &FsmConfig {
        &self.config
    }

    /// The transition function.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Start { rounds } => self.on_start(rounds, &mut fx),
            Event::Joined(id) => self.on_joined(id, &mut fx),
            Event::Left(id) => self.on_left(&id, &mut fx),
            Event::StatsArrived {
                from,
                attempt,
                usable,
            } => self.on_stats(from, attempt, usable, &mut fx),
            Event::UpdateArrived {
                from,
                round,
                attempt,
                verdict,
            } => self.on_update(from, round, attempt, verdict, &mut fx),
            Event::DeadlineExpired(timer) => self.on_deadline(timer, &mut fx),
            Event::Evaluated { round } => self.on_evaluated(round, &mut fx),
            Event::EvaluationFailed { round, reason } => {
                if self.phase == (Phase::Evaluating { round }) {
                    self.abort(format!("round {round}: evaluation failed: {reason}"), &mut fx);
                }
            }
            Event::Failed { reason } => {
                if self.phase.is_active() {
                    self.abort(reason, &mut fx);
                }
            }
            Event::Stop => {
                if self.phase.is_active() {
                    self.abort("stopped by operator".into(), &mut fx);
                }
            }
        }
        fx
    }

    fn on_start(&mut self, rounds: u32, fx: &mut Vec<Effect>) {
        if self.phase.is_active() {
            return;
        }
        if rounds == 0 {
            self.abort("a run needs at least one round".into(), fx);
            return;
        }
        self.target_rounds = rounds;
        if self.members.len() >= self.config.min_hospitals {
            self.begin_preparing(0, fx);
        } else {
            self.phase = Phase::Assembling;
            self.arm(self.config.assemble_timeout, fx);
        }
    }

    fn on_joined(&mut self, id: HospitalId, fx: &mut Vec<Effect>) {
        self.members.insert(id);
        if self.phase == Phase::Assembling && self.members.len() >= self.config.min_hospitals {
            self.begin_preparing(0, fx);
        }
        // In any other phase the newcomer takes part from the next attempt on.
    }

    fn on_left(&mut self, id: &str, fx: &mut Vec<Effect>) {
        self.members.remove(id);
        if self.awaiting.remove(id) && self.awaiting.is_empty() {
            self.close_collection(fx);
        }
    }

    fn on_stats(&mut self, from: HospitalId, attempt: u32, usable: bool, fx: &mut Vec<Effect>) {
        match self.phase {
            Phase::Preparing { attempt: current } if attempt == current => {
                if let Some(reason) = self.admit(&from) {
                    self.drop_msg(from, reason, fx);
                    return;
                }
                if usable {
                    self.usable.insert(from.clone());
                    fx.push(Effect::KeepStats { from });
                }
                if self.awaiting.is_empty() {
                    self.close_collection(fx);
                }
            }
            Phase::Preparing { attempt: current } if attempt < current => {
                self.drop_msg(from, DropReason::Late, fx)
            }
            Phase::Training { .. } | Phase::Evaluating { .. } => self.drop_msg(from, DropReason::Late, fx),
            _ => self.drop_msg(from, DropReason::Unexpected, fx),
        }
    }

    fn on_update(
        &mut self,
        from: HospitalId,
        round: u32,
        attempt: u32,
        verdict: Verdict,
        fx: &mut Vec<Effect>,
    ) {
        let collecting =
            matches!(self.phase, Phase::Training { round: r, attempt: a } if (r, a) == (round, attempt));
        if !collecting {
            // Answers to an attempt already closed are late; anything else was never asked for.
            let reason = match self.last_asked {
                Some(last) if (round, attempt) <= last => DropReason::Late,
                _ => DropReason::Unexpected,
            };
            self.drop_msg(from, reason, fx);
            return;
        }
        if let Some(reason) = self.admit(&from) {
            self.drop_msg(from, reason, fx);
            return;
        }
        match verdict {
            Verdict::Valid => {
                self.usable.insert(from.clone());
                fx.push(Effect::KeepUpdate { from });
            }
            other => {
                if let Verdict::Declined(reason) = &other {
                    self.declines.insert(reason.clone());
                }
                fx.push(Effect::RefuseUpdate { from, verdict: other });
            }
        }
        if self.awaiting.is_empty() {
            self.close_collection(fx);
        }
    }

    /// Admit an answer of the current attempt; `Some(reason)` if it must be dropped.
    fn admit(&mut self, from: &str) -> Option<DropReason> {
        if self.answered.contains(from) {
            return Some(DropReason::Duplicate);
        }
        if !self.awaiting.remove(from) {
            return Some(DropReason::UnknownSender);
        }
        self.answered.insert(from.to_string());
        None
    }

    fn on_deadline(&mut self, timer: TimerId, fx: &mut Vec<Effect>) {
        if self.live_timer != Some(timer) {
            return; // a deadline of an attempt that already closed
        }
        self.live_timer = None;
        match self.phase {
            Phase::Assembling => {
                let reason = format!(
                    "only {} of {} required hospitals joined within {:?}",
                    self.members.len(),
                    self.config.min_hospitals,
                    self.config.assemble_timeout
                );
                self.abort(reason, fx);
            }
            Phase::Preparing { .. } | Phase::Training { .. } => self.close_collection(fx),
            _ => {}
        }
    }

    fn on_evaluated(&mut self, round: u32, fx: &mut Vec<Effect>) {
        if self.phase != (Phase::Evaluating { round }) {
            return;
        }
        if round >= self.target_rounds {
            self.phase = Phase::Finished { rounds: round };
            fx.push(Effect::RunFinished { rounds: round });
        } else {
            self.begin_round(round + 1, 0, fx);
        }
    }

    /// The current attempt is over: everyone answered or the deadline passed.
    fn close_collection(&mut self, fx: &mut Vec<Effect>) {
        self.live_timer = None;
        let usable: Vec<HospitalId> = self.usable.iter().cloned().collect();
        let quorum = usable.len() >= self.config.min_hospitals;
        match self.phase.clone() {
            Phase::Preparing { attempt } => {
                if quorum {
                    fx.push(Effect::CombineStats { from: usable });
                    self.begin_round(1, 0, fx);
                } else if attempt < self.config.max_retries {
                    fx.push(Effect::RoundBelowQuorum {
                        round: 0,
                        attempt,
                        accepted: usable.len(),
                        needed: self.config.min_hospitals,
                    });
                    self.begin_preparing(attempt + 1, fx);
                } else {
                    self.abort(
                        format!(
                            "preparation: {} of {} required hospitals sent statistics after {} attempts",
                            usable.len(),
                            self.config.min_hospitals,
                            attempt + 1
                        ),
                        fx,
                    );
                }
            }
            Phase::Training { round, attempt } => {
                if quorum {
                    self.clear_collection();
                    self.phase = Phase::Evaluating { round };
                    fx.push(Effect::Aggregate { round, from: usable });
                } else {
                    fx.push(Effect::RoundBelowQuorum {
                        round,
                        attempt,
                        accepted: usable.len(),
                        needed: self.config.min_hospitals,
                    });
                    if attempt < self.config.max_retries {
                        self.begin_round(round, attempt + 1, fx);
                    } else {
                        let mut reason = format!(
                            "round {round}: {} of {} required updates accepted after {} attempts",
                            usable.len(),
                            self.config.min_hospitals,
                            attempt + 1
                        );
                        if !self.declines.is_empty() {
                            let why: Vec<&str> = self.declines.iter().map(String::as_str).collect();
                            reason.push_str(&format!("; hospitals declined: {}", why.join("; ")));
                        }
                        self.abort(reason, fx);
                    }
                }
            }
            _ => {}
        }
    }

    fn begin_preparing(&mut self, attempt: u32, fx: &mut Vec<Effect>) {
        self.start_collection(fx);
        self.phase = Phase::Preparing { attempt };
        fx.push(Effect::RequestStats {
            to: self.awaiting.iter().cloned().collect(),
            attempt,
        });
        self.arm(self.config.round_timeout, fx);
    }

    fn begin_round(&mut self, round: u32, attempt: u32, fx: &mut Vec<Effect>) {
        self.begin_attempt_bookkeeping(attempt);
        self.start_collection(fx);
        self.phase = Phase::Training { round, attempt };
        self.last_asked = Some((round, attempt));
        let participants: Vec<HospitalId> = self.awaiting.iter().cloned().collect();
        fx.push(Effect::RoundStarted {
            round,
            attempt,
            participants: participants.clone(),
        });
        fx.push(Effect::RequestTraining {
            to: participants,
            round,
            attempt,
        });
        self.arm(self.config.round_timeout, fx);
    }

    fn start_collection(&mut self, fx: &mut Vec<Effect>) {
        self.clear_collection();
        fx.push(Effect::DiscardCollected);
        self.awaiting = self.members.clone();
    }

    fn clear_collection(&mut self) {
        self.awaiting.clear();
        self.answered.clear();
        self.usable.clear();
    }

    fn begin_attempt_bookkeeping(&mut self, attempt: u32) {
        // Decline reasons are kept across the retries of one round only.
        if attempt == 0 {
            self.declines.clear();
        }
    }

    fn arm(&mut self, after: Duration, fx: &mut Vec<Effect>) {
        self.next_timer += 1;
        let timer = TimerId(self.next_timer);
        self.live_timer = Some(timer);
        fx.push(Effect::ArmDeadline { timer, after });
    }

    fn abort(&mut self, reason: String, fx: &mut Vec<Effect>) {
        self.clear_collection();
        self.live_timer = None;
        self.phase = Phase::Aborted {
            reason: reason.clone(),
        };
        fx.push(Effect::DiscardCollected);
        fx.push(Effect::RunAborted { reason });
    }

    fn drop_msg(&mut self, from: HospitalId, reason: DropReason, fx: &mut Vec<Effect>) {
        match reason {
            DropReason::Late => self.drops.late += 1,
            DropReason::Duplicate => self.drops.duplicate += 1,
            DropReason::UnknownSender => self.drops.unknown_sender += 1,
            DropReason::Unexpected => self.drops.unexpected += 1,
        }
        fx.push(Effect::Drop { from, reason });
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
