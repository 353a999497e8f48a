//! One task's federation as a pure transition function:
//! `(state, event) -> effects`. No actors, clocks or I/O here. A run is an
//! assembly, then rounds made of the stages the task's `Protocol` declares;
//! each stage asks the members, collects answers until all answered or its
//! deadline passed, and closes with a quorum — or retries, then aborts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::stage::{Asks, Protocol, Stage, StageKind};

pub type HospitalId = String;

/// Where a task's federation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// Waiting for the expected hospitals to join.
    Assembling,
    /// Collecting the answers of one stage of `round` (round 0: preparation).
    Collecting {
        round: u32,
        stage: StageKind,
        attempt: u32,
    },
    /// Aggregating the round's updates and evaluating on the held-out set.
    Aggregating {
        round: u32,
    },
    Finished {
        rounds: u32,
    },
    /// Stopped by the operator (Ctrl-C, SIGTERM, the panel) after `rounds`
    /// rounds were aggregated.
    Stopped {
        rounds: u32,
    },
    Aborted {
        reason: String,
    },
}

impl Phase {
    /// Phase names: idle, assembling, preparing, securing, training,
    /// unmasking, aggregating, evaluating, finished, stopped, aborted.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Assembling => "assembling",
            Phase::Collecting { stage, .. } => stage.phase_name(),
            Phase::Aggregating { .. } => "aggregating",
            Phase::Finished { .. } => "finished",
            Phase::Stopped { .. } => "stopped",
            Phase::Aborted { .. } => "aborted",
        }
    }

    pub fn is_active(&self) -> bool {
        !matches!(
            self,
            Phase::Idle | Phase::Finished { .. } | Phase::Stopped { .. } | Phase::Aborted { .. }
        )
    }

    /// The round this phase belongs to (0 outside rounds).
    pub fn round(&self) -> u32 {
        match self {
            Phase::Collecting { round, .. } | Phase::Aggregating { round } => *round,
            _ => 0,
        }
    }
}

/// As `{"phase": name, ...fields}`: the name is what the panel shows.
impl Serialize for Phase {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            phase: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            round: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            stage: Option<StageKind>,
            #[serde(skip_serializing_if = "Option::is_none")]
            attempt: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rounds: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
        }
        let mut view = View {
            phase: self.name(),
            round: None,
            stage: None,
            attempt: None,
            rounds: None,
            reason: None,
        };
        match self {
            Phase::Collecting {
                round,
                stage,
                attempt,
            } => (view.round, view.stage, view.attempt) = (Some(*round), Some(*stage), Some(*attempt)),
            Phase::Aggregating { round } => view.round = Some(*round),
            Phase::Finished { rounds } | Phase::Stopped { rounds } => view.rounds = Some(*rounds),
            Phase::Aborted { reason } => view.reason = Some(reason),
            Phase::Idle | Phase::Assembling => {}
        }
        view.serialize(s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FsmConfig {
    pub rounds: u32,
    /// A run waits for this many hospitals until `assemble_timeout`, then
    /// starts with at least the protocol's quorum.
    pub expected_hospitals: usize,
    pub assemble_timeout: Duration,
    pub protocol: Protocol,
}

impl FsmConfig {
    /// The hospitals a run needs to start and each stage to close.
    pub fn quorum(&self) -> usize {
        self.protocol.quorum()
    }
}

/// Identifies one armed deadline; only the latest one is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerId(pub u64);

/// What a hospital's answer is worth to its stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Usable: kept for the stage's result.
    Usable,
    /// Failed a check (or training failed). `label` is a short, bounded name
    /// for counting; `reason` the full explanation.
    Invalid { label: String, reason: String },
    /// The hospital declined (e.g. privacy budget exhausted).
    Declined(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        rounds: u32,
    },
    /// Carry on a run of `rounds` rounds whose first `after` rounds were
    /// committed before a restart: it assembles as a start does, then
    /// begins at round `after + 1` (no preparation: its result is in the
    /// committed model).
    Resume {
        rounds: u32,
        after: u32,
    },
    Joined(HospitalId),
    Left(HospitalId),
    Answered {
        from: HospitalId,
        stage: StageKind,
        round: u32,
        attempt: u32,
        verdict: Verdict,
    },
    /// Not asked in the current stage after all (the strategy left it out).
    Excused(HospitalId),
    /// An answer to a request of an earlier run: dropped as late.
    Outdated(HospitalId),
    DeadlineExpired(TimerId),
    /// The current attempt of `round` cannot go on (the secure sum refused
    /// or aborted): retry the round from the first stage of its chain, or
    /// abort the run when no retry is left.
    RoundFailed {
        round: u32,
        reason: String,
    },
    /// The training stage's updates were aggregated and the model evaluated.
    Aggregated {
        round: u32,
    },
    AggregationFailed {
        round: u32,
        reason: String,
    },
    /// The shell could not carry out an effect; the run cannot go on.
    Failed {
        reason: String,
    },
    /// A closed round could not be committed. Unlike `Failed` it also
    /// undoes a finish: a run whose last round is not durable did not finish.
    CommitFailed {
        reason: String,
    },
    Stop,
}

/// Why an arriving message was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// For an earlier round, stage or attempt.
    Late,
    /// Second answer from the same hospital in one attempt.
    Duplicate,
    /// From a hospital that was not asked in this attempt.
    UnknownSender,
    /// Nothing like it is being collected (never asked for).
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
    /// Ask these hospitals for the stage's answer.
    Request {
        stage: StageKind,
        round: u32,
        attempt: u32,
        to: Vec<HospitalId>,
    },
    ArmDeadline {
        timer: TimerId,
        after: Duration,
    },
    /// Keep this hospital's answer for the stage's result.
    Keep {
        from: HospitalId,
        stage: StageKind,
        round: u32,
    },
    /// The answer counted as given but is not used.
    Refuse {
        from: HospitalId,
        stage: StageKind,
        round: u32,
        verdict: Verdict,
    },
    Drop {
        from: HospitalId,
        reason: DropReason,
    },
    /// Forget every kept answer.
    DiscardCollected,
    /// The stage closed with these usable answers: combine them (statistics),
    /// aggregate them (training; `Aggregated` follows), or record them.
    StageClosed {
        stage: StageKind,
        round: u32,
        from: Vec<HospitalId>,
    },
    StageBelowQuorum {
        stage: StageKind,
        round: u32,
        attempt: u32,
        accepted: usize,
        needed: usize,
    },
    /// Every stage of `round` is done: its result is final and must be
    /// committed before the next round is asked for.
    RoundClosed {
        round: u32,
    },
    /// An attempt of a round began (its first stage asked).
    RoundStarted {
        round: u32,
        attempt: u32,
        participants: Vec<HospitalId>,
    },
    /// The assembly deadline passed with the quorum but not everyone.
    StartingWithout {
        joined: Vec<HospitalId>,
        expected: usize,
    },
    RunFinished {
        rounds: u32,
    },
    /// Stopped by the operator with `rounds` aggregated.
    RunStopped {
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
    /// Position of the current stage in its round's list.
    stage_index: usize,
    members: BTreeSet<HospitalId>,
    /// Asked in the current attempt and not answered yet.
    awaiting: BTreeSet<HospitalId>,
    /// Answered in the current attempt (any verdict).
    answered: BTreeSet<HospitalId>,
    usable: BTreeSet<HospitalId>,
    target_rounds: u32,
    /// The latest (round, attempt) each stage kind asked for.
    last_asked: BTreeMap<StageKind, (u32, u32)>,
    /// Distinct reasons hospitals declined with in the current stage's attempts.
    declines: BTreeSet<String>,
    next_timer: u64,
    live_timer: Option<TimerId>,
    drops: DropCounts,
    /// Rounds aggregated in the current run.
    aggregated: u32,
    /// Set by `Resume` until the run begins: the last committed round.
    resume_after: Option<u32>,
    /// The current attempt (shared by a chain of stages).
    attempt: u32,
    /// Whose answers the last closed stage kept: whom a chained stage asks.
    chain: BTreeSet<HospitalId>,
}

impl TaskFsm {
    pub fn new(config: FsmConfig) -> Self {
        let target_rounds = config.rounds;
        Self {
            config,
            phase: Phase::Idle,
            stage_index: 0,
            members: BTreeSet::new(),
            awaiting: BTreeSet::new(),
            answered: BTreeSet::new(),
            usable: BTreeSet::new(),
            target_rounds,
            last_asked: BTreeMap::new(),
            declines: BTreeSet::new(),
            next_timer: 0,
            live_timer: None,
            drops: DropCounts::default(),
            aggregated: 0,
            resume_after: None,
            attempt: 0,
            chain: BTreeSet::new(),
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

    /// The training stages' quorum for the next run (a run's strategy may
    /// need more updates than the configured quorum). Between runs only: a
    /// run in progress keeps the quorum it started with.
    pub fn set_train_quorum(&mut self, quorum: usize) {
        if self.phase.is_active() {
            return;
        }
        for stage in self
            .config
            .protocol
            .round
            .iter_mut()
            .filter(|s| Protocol::counts_inputs(s.kind))
        {
            stage.rules.quorum = quorum;
        }
    }

    /// The transition function.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Start { rounds } => self.on_start(rounds, None, &mut fx),
            Event::Resume { rounds, after } => self.on_start(rounds, Some(after), &mut fx),
            Event::Joined(id) => self.on_joined(id, &mut fx),
            Event::Left(id) => {
                self.members.remove(&id);
                self.excuse(&id, &mut fx);
            }
            Event::Answered {
                from,
                stage,
                round,
                attempt,
                verdict,
            } => self.on_answer(from, stage, round, attempt, verdict, &mut fx),
            Event::Excused(id) => self.excuse(&id, &mut fx),
            Event::Outdated(from) => self.drop_msg(from, DropReason::Late, &mut fx),
            Event::DeadlineExpired(timer) => self.on_deadline(timer, &mut fx),
            Event::Aggregated { round } => {
                if self.phase == (Phase::Aggregating { round }) {
                    self.aggregated = round;
                    self.advance(round, &mut fx);
                }
            }
            Event::RoundFailed { round, reason } => {
                let current = match self.phase {
                    Phase::Collecting { round: r, .. } | Phase::Aggregating { round: r } => r == round,
                    _ => false,
                };
                if current {
                    self.retry_or_abort(round, reason, &mut fx);
                }
            }
            Event::AggregationFailed { round, reason } => {
                if self.phase == (Phase::Aggregating { round }) {
                    self.abort(
                        format!("round {round}: aggregation or evaluation failed: {reason}"),
                        &mut fx,
                    );
                }
            }
            Event::Failed { reason } => {
                if self.phase.is_active() {
                    self.abort(reason, &mut fx);
                }
            }
            Event::CommitFailed { reason } => {
                if self.phase.is_active() || matches!(self.phase, Phase::Finished { .. }) {
                    self.abort(reason, &mut fx);
                }
            }
            Event::Stop => {
                if self.phase.is_active() {
                    self.clear_collection();
                    self.live_timer = None;
                    self.phase = Phase::Stopped {
                        rounds: self.aggregated,
                    };
                    fx.push(Effect::DiscardCollected);
                    fx.push(Effect::RunStopped {
                        rounds: self.aggregated,
                    });
                }
            }
        }
        fx
    }

    fn expected(&self) -> usize {
        self.config.expected_hospitals.max(self.config.quorum())
    }

    /// Start a run, or resume one `after` committed rounds.
    fn on_start(&mut self, rounds: u32, after: Option<u32>, fx: &mut Vec<Effect>) {
        if self.phase.is_active() {
            return;
        }
        // A new run has aggregated nothing yet, even while it assembles.
        self.aggregated = after.unwrap_or(0);
        self.resume_after = after;
        if rounds == 0 {
            self.abort("a run needs at least one round".into(), fx);
            return;
        }
        self.target_rounds = rounds;
        if let Some(done) = after.filter(|done| *done >= rounds) {
            // Every round was committed; only the run's end was not recorded.
            self.resume_after = None;
            self.phase = Phase::Finished { rounds: done };
            fx.push(Effect::RunFinished { rounds: done });
            return;
        }
        if self.members.len() >= self.expected() {
            self.begin_run(fx);
        } else {
            self.phase = Phase::Assembling;
            self.arm(self.config.assemble_timeout, fx);
        }
    }

    fn on_joined(&mut self, id: HospitalId, fx: &mut Vec<Effect>) {
        self.members.insert(id);
        if self.phase == Phase::Assembling && self.members.len() >= self.expected() {
            self.begin_run(fx);
        }
        // In any other phase the newcomer takes part from the next attempt on.
    }

    fn on_answer(
        &mut self,
        from: HospitalId,
        stage: StageKind,
        round: u32,
        attempt: u32,
        verdict: Verdict,
        fx: &mut Vec<Effect>,
    ) {
        let collecting = self.phase
            == Phase::Collecting {
                round,
                stage,
                attempt,
            };
        if !collecting {
            // Answers to an attempt already closed are late; anything else was never asked for.
            let reason = match self.last_asked.get(&stage) {
                Some(&last) if (round, attempt) <= last => DropReason::Late,
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
            Verdict::Usable => {
                self.usable.insert(from.clone());
                fx.push(Effect::Keep { from, stage, round });
            }
            other => {
                if let Verdict::Declined(reason) = &other {
                    self.declines.insert(reason.clone());
                }
                fx.push(Effect::Refuse {
                    from,
                    stage,
                    round,
                    verdict: other,
                });
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

    /// `id` will not answer this attempt (it left, or was not asked).
    fn excuse(&mut self, id: &str, fx: &mut Vec<Effect>) {
        if self.awaiting.remove(id) && self.awaiting.is_empty() {
            self.close_collection(fx);
        }
    }

    fn on_deadline(&mut self, timer: TimerId, fx: &mut Vec<Effect>) {
        if self.live_timer != Some(timer) {
            return; // a deadline of an attempt that already closed
        }
        self.live_timer = None;
        match self.phase {
            Phase::Assembling if self.members.len() >= self.config.quorum() => {
                fx.push(Effect::StartingWithout {
                    joined: self.members.iter().cloned().collect(),
                    expected: self.expected(),
                });
                self.begin_run(fx);
            }
            Phase::Assembling => {
                let reason = format!(
                    "only {} of {} required hospitals joined within {} s",
                    self.members.len(),
                    self.config.quorum(),
                    self.config.assemble_timeout.as_secs_f64()
                );
                self.abort(reason, fx);
            }
            Phase::Collecting { .. } => self.close_collection(fx),
            _ => {}
        }
    }

    fn current_stage(&self, round: u32) -> Option<Stage> {
        self.config.protocol.stages(round).get(self.stage_index).copied()
    }

    /// The current attempt is over: everyone answered or the deadline passed.
    fn close_collection(&mut self, fx: &mut Vec<Effect>) {
        let Phase::Collecting {
            round,
            stage,
            attempt,
        } = self.phase.clone()
        else {
            return;
        };
        let Some(rules) = self.current_stage(round).map(|s| s.rules) else {
            return;
        };
        self.live_timer = None;
        let usable: Vec<HospitalId> = self.usable.iter().cloned().collect();
        if usable.len() >= rules.quorum {
            fx.push(Effect::StageClosed {
                stage,
                round,
                from: usable,
            });
            self.chain = std::mem::take(&mut self.usable);
            if round > 0 && stage == self.config.protocol.aggregate_after {
                self.clear_collection();
                self.phase = Phase::Aggregating { round };
            } else {
                self.advance(round, fx);
            }
            return;
        }
        fx.push(Effect::StageBelowQuorum {
            stage,
            round,
            attempt,
            accepted: usable.len(),
            needed: rules.quorum,
        });
        let mut reason = match stage {
            StageKind::Stats => format!(
                "preparation: {} of {} required hospitals sent statistics after {} attempts",
                usable.len(),
                rules.quorum,
                attempt + 1
            ),
            StageKind::Train => format!(
                "round {round}: {} of {} required updates accepted after {} attempts",
                usable.len(),
                rules.quorum,
                attempt + 1
            ),
            other => format!(
                "round {round}: {} of {} required hospitals answered {} after {} attempts",
                usable.len(),
                rules.quorum,
                other.name(),
                attempt + 1
            ),
        };
        if !self.declines.is_empty() {
            let why: Vec<&str> = self.declines.iter().map(String::as_str).collect();
            reason.push_str(&format!("; hospitals declined: {}", why.join("; ")));
        }
        self.retry_or_abort(round, reason, fx);
    }

    /// The current attempt of `round` failed: a new attempt from the head of
    /// the current stage's chain while its retries last, else abort.
    fn retry_or_abort(&mut self, round: u32, reason: String, fx: &mut Vec<Effect>) {
        let head = self.config.protocol.chain_head(round, self.stage_index);
        let retries = self
            .config
            .protocol
            .stages(round)
            .get(head)
            .map_or(0, |s| s.rules.retries);
        if self.attempt < retries {
            self.begin_stage(round, head, self.attempt + 1, fx);
            return;
        }
        self.abort(reason, fx);
    }

    /// The current stage of `round` is done: the next stage, the next round,
    /// or the end of the run.
    fn advance(&mut self, round: u32, fx: &mut Vec<Effect>) {
        let next = self.stage_index + 1;
        if let Some(stage) = self.config.protocol.stages(round).get(next) {
            // A chained stage continues the attempt it follows.
            let attempt = match stage.asks {
                Asks::PreviousStage => self.attempt,
                Asks::Members => 0,
            };
            self.begin_stage(round, next, attempt, fx);
            return;
        }
        if round > 0 {
            fx.push(Effect::RoundClosed { round });
        }
        if round >= self.target_rounds {
            self.clear_collection();
            self.phase = Phase::Finished { rounds: round };
            fx.push(Effect::RunFinished { rounds: round });
        } else {
            self.begin_round(round + 1, fx);
        }
    }

    fn begin_run(&mut self, fx: &mut Vec<Effect>) {
        match self.resume_after.take() {
            Some(done) if done > 0 => self.begin_round(done + 1, fx),
            _ => self.begin_round(0, fx),
        }
    }

    /// The first stage of `round`, skipping rounds that have none (a
    /// protocol without preparation).
    fn begin_round(&mut self, round: u32, fx: &mut Vec<Effect>) {
        if self.config.protocol.stages(round).is_empty() {
            if round == 0 {
                return self.begin_round(1, fx);
            }
            self.abort(format!("round {round} has no stages"), fx);
            return;
        }
        self.begin_stage(round, 0, 0, fx);
    }

    fn begin_stage(&mut self, round: u32, index: usize, attempt: u32, fx: &mut Vec<Effect>) {
        self.stage_index = index;
        let Some(stage) = self.current_stage(round) else {
            return;
        };
        if attempt == 0 {
            // Decline reasons are kept across the retries of one stage only.
            self.declines.clear();
        }
        self.attempt = attempt;
        self.clear_collection();
        fx.push(Effect::DiscardCollected);
        self.awaiting = match stage.asks {
            Asks::Members => self.members.clone(),
            Asks::PreviousStage => self.chain.intersection(&self.members).cloned().collect(),
        };
        self.phase = Phase::Collecting {
            round,
            stage: stage.kind,
            attempt,
        };
        self.last_asked.insert(stage.kind, (round, attempt));
        let to: Vec<HospitalId> = self.awaiting.iter().cloned().collect();
        if index == 0 && round > 0 {
            fx.push(Effect::RoundStarted {
                round,
                attempt,
                participants: to.clone(),
            });
        }
        fx.push(Effect::Request {
            stage: stage.kind,
            round,
            attempt,
            to,
        });
        self.arm(stage.rules.deadline, fx);
        if self.awaiting.is_empty() && stage.rules.quorum == 0 {
            self.close_collection(fx);
        }
    }

    fn clear_collection(&mut self) {
        self.awaiting.clear();
        self.answered.clear();
        self.usable.clear();
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
