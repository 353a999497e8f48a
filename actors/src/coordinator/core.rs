//! The coordinator's decisions, as a pure state machine over the whole
//! federation (raft-rs's `Ready` is the model): hospitals' admission and
//! departure, the run lifecycle (start, stop, generations), and each task's
//! data — its global model, the answers its current stage collected, its
//! history, its strategy. `handle`, `start_run` and `stop` return `Output`s
//! that carry everything the shell needs to execute them (the model to send,
//! the updates to aggregate with a copy of the strategy, the checkpoint to
//! write, the events to publish); the shell keeps no payloads. The only
//! thing shared with the shell is the held-out evaluator, which the
//! aggregation job uses and the core never touches.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorId;

use medfed_models::aggregate::{Strategy, StrategyState, UpdateCheck};
use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::{MomentSums, Standardizer};
use medfed_models::learner::{Evaluator, GlobalModel, LocalUpdate, PrivacySpent, RunPrivacy, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::secagg::{RoundContext, Server};
use medfed_models::Params;

use super::durable::{ResumePoint, RoundCommit, RunBegin, TaskResume, TaskTotals};
use super::fsm::{DropReason, Effect, Event, HospitalId, Phase, TaskFsm, TimerId, Verdict};
use super::stage::StageKind;
use super::task::{AggregateFailure, Aggregated, Scaling, SecureJob, SecureSettings, TaskSetup};
use crate::events::{FederationEvent, RunOutcome};
use crate::messages::secure::masked_words;
use crate::messages::{
    Ask, EvalOutcome, HospitalInfo, RunRequest, SecAggAnswer, SecAggStep, StartRefused, StatsOutcome,
    TaskRunSettings, ToCoordinator, ToHospital, TrainOutcome,
};
use crate::report::{FederatedEval, Participation, ParticipationOutcome, RoundRecord, RunReport, TaskReport};

/// What happens to the coordinator.
#[derive(Debug)]
pub enum Input {
    /// A hospital (or the proxy of a remote one) introduced itself.
    Hello {
        actor: ActorId,
        info: HospitalInfo,
    },
    /// Any other message, bound to the actor it came from.
    Message {
        actor: ActorId,
        message: ToCoordinator,
    },
    /// The actor left its process group (stopped, or its node disconnected).
    Left {
        actor: ActorId,
    },
    Deadline {
        task: String,
        timer: TimerId,
    },
    Aggregated {
        task: String,
        generation: u64,
        round: u32,
        result: Result<Aggregated, AggregateFailure>,
    },
    /// A run's start or a round commit could not be made durable (`reason`
    /// says which): the run cannot go on without breaking its promise to
    /// resume.
    CommitFailed {
        task: String,
        reason: String,
    },
}

/// What the shell must do.
pub enum Output {
    Send {
        to: ActorId,
        message: ToHospital,
    },
    /// Stop routing to this actor (it was refused).
    Forget(ActorId),
    ArmDeadline {
        task: String,
        timer: TimerId,
        after: Duration,
    },
    Aggregate(Box<AggregateJob>),
    /// Save a round's global model (a failure is logged: training goes on).
    WriteCheckpoint {
        dir: PathBuf,
        checkpoint: Checkpoint,
    },
    /// Record a run's start before anything that follows in these outputs
    /// (its first requests); a failure comes back as `Input::CommitFailed`
    /// for each of its tasks.
    BeginRun(RunBegin),
    /// Make a closed round durable before anything that follows in these
    /// outputs (the next round's requests); a failure comes back as
    /// `Input::CommitFailed`.
    CommitRound(Box<RoundCommit>),
    Publish(FederationEvent),
}

/// One round's aggregation and held-out evaluation, to run off the actor.
pub struct AggregateJob {
    pub task: String,
    pub generation: u64,
    pub round: u32,
    pub global: GlobalModel,
    pub updates: Vec<LocalUpdate>,
    /// Under secure aggregation: the sum to unmask (`updates` is empty).
    pub secure: Option<SecureJob>,
    /// A copy of the task's strategy; it comes back with the result.
    pub strategy: Box<dyn Strategy>,
    pub evaluator: Arc<Mutex<Box<dyn Evaluator>>>,
}

/// An answer's payload, consumed by the `Keep` effect it leads to.
enum Payload {
    Stats(Option<MomentSums>),
    Update(LocalUpdate),
    /// A masked input the secure sum took in (its privacy report).
    Masked(Option<PrivacySpent>),
    Evaluation(EvalOutcome),
}

struct Registered {
    info: HospitalInfo,
}

struct Run {
    id: String,
    tasks: Vec<String>,
    active: bool,
    /// Never asked for anything in this run (site withdrawal).
    excluded: BTreeSet<String>,
}

pub struct Core {
    tasks: BTreeMap<String, TaskState>,
    hospitals: HashMap<ActorId, Registered>,
    /// Hospital name -> its actor: keyed, so no per-message scan.
    by_name: HashMap<String, ActorId>,
    run: Option<Run>,
    /// Bumped per run so that results of an earlier run are recognised.
    generation: u64,
    /// Hospital names refused at hello (revoked access).
    denied: BTreeSet<String>,
}

/// What one task runs with in one run: its strategy, its training plan,
/// and the training quorum that strategy needs.
struct RunSetup {
    strategy: Box<dyn Strategy>,
    plan: TrainPlan,
    train_quorum: usize,
    /// Why the quorum is above the configured one, if it is.
    quorum_note: Option<String>,
}

/// The training quorum `strategy` needs given the configured `quorum`, and
/// why when it is higher: a strategy that needs more updates than the
/// configuration raises it (the app warns at start); an abort then says why.
fn raise_quorum(strategy: &dyn Strategy, quorum: usize) -> (usize, Option<String>) {
    let min_updates = strategy.min_updates();
    if min_updates > quorum {
        let note = format!(
            "{} needs at least {min_updates} updates a round, above the configured quorum of {quorum}",
            strategy.name()
        );
        (min_updates, Some(note))
    } else {
        (quorum, None)
    }
}

/// One task's data on the coordinator.
struct TaskState {
    name: String,
    fsm: TaskFsm,
    /// This run's plan and strategy: the configured ones, or a run's settings.
    plan: TrainPlan,
    check: UpdateCheck,
    max_hospitals: Option<usize>,
    evaluator: Arc<Mutex<Box<dyn Evaluator>>>,
    strategy: Box<dyn Strategy>,
    configured_plan: TrainPlan,
    configured_strategy: Box<dyn Strategy>,
    /// The training quorum of the configuration, before any strategy raised it.
    configured_quorum: usize,
    /// Why the training quorum is above the configured one, if it is.
    quorum_note: Option<String>,
    scaling: Scaling,
    checkpoint_dir: Option<PathBuf>,
    held_out: Option<String>,
    features: Option<Vec<String>>,
    expected_names: Vec<String>,
    /// The evaluator's initial parameters: every run starts from them.
    initial: Arc<Params>,
    global: GlobalModel,
    kept_updates: BTreeMap<HospitalId, LocalUpdate>,
    kept_stats: BTreeMap<HospitalId, MomentSums>,
    history: Vec<RoundRecord>,
    round_started: Option<Duration>,
    rejected: BTreeMap<String, u64>,
    declined: u64,
    /// Hospitals that left during this run.
    departures: u64,
    /// The latest privacy report of each hospital (kept across runs: budgets are lifetime).
    privacy: BTreeMap<HospitalId, PrivacySpent>,
    /// Hospitals that declared a simulated attack, and which.
    attacks: BTreeMap<HospitalId, String>,
    /// What became of each hospital's training answer in the current round.
    participation: BTreeMap<HospitalId, Participation>,
    secure: Option<SecureSettings>,
    /// The secure sum of the current attempt (from its setup stage on).
    secagg: Option<Server>,
}

impl TaskState {
    fn new(setup: TaskSetup) -> Self {
        let initial = Arc::new(setup.evaluator.init_params());
        let mut fsm = setup.fsm;
        // A strategy that needs more updates than the configured quorum raises
        // it (the app warns at start); an abort then says why.
        let train_quorum = fsm
            .protocol
            .round
            .iter()
            .filter(|s| s.kind == StageKind::Train)
            .map(|s| s.rules.quorum)
            .max()
            .unwrap_or(0);
        let (raised, quorum_note) = raise_quorum(setup.strategy.as_ref(), train_quorum);
        for stage in fsm
            .protocol
            .round
            .iter_mut()
            .filter(|s| crate::coordinator::Protocol::counts_inputs(s.kind))
        {
            stage.rules.quorum = raised;
        }
        Self {
            configured_quorum: train_quorum,
            name: setup.name,
            fsm: TaskFsm::new(fsm),
            configured_plan: setup.plan.clone(),
            configured_strategy: setup.strategy.boxed_clone(),
            plan: setup.plan,
            check: setup.check,
            max_hospitals: setup.max_hospitals,
            evaluator: Arc::new(Mutex::new(setup.evaluator)),
            strategy: setup.strategy,
            quorum_note,
            global: GlobalModel {
                params: initial.clone(),
                standardizer: fixed_scaler(&setup.scaling),
            },
            initial,
            scaling: setup.scaling,
            checkpoint_dir: setup.checkpoint_dir,
            held_out: setup.held_out,
            features: setup.features,
            expected_names: setup.expected_names,
            kept_updates: BTreeMap::new(),
            kept_stats: BTreeMap::new(),
            history: Vec::new(),
            round_started: None,
            rejected: BTreeMap::new(),
            declined: 0,
            departures: 0,
            privacy: BTreeMap::new(),
            attacks: BTreeMap::new(),
            participation: BTreeMap::new(),
            secure: setup.secure,
            secagg: None,
        }
    }

    /// What this task runs with under a run's settings (`None`: the
    /// configured ones; `rounds`: the run's planned rounds). Checks only:
    /// `take_up` applies it, once every task of the run has passed.
    fn run_setup(&self, settings: Option<&TaskRunSettings>, rounds: u32) -> Result<RunSetup, String> {
        let settings = settings.cloned().unwrap_or_default();
        let (strategy, train_quorum, quorum_note) = match &settings.strategy {
            None => {
                let strategy = self.configured_strategy.boxed_clone();
                let (quorum, note) = raise_quorum(strategy.as_ref(), self.configured_quorum);
                (strategy, quorum, note)
            }
            Some(config) => {
                let hospitals = self.fsm.config().expected_hospitals;
                config.validate(hospitals).map_err(|unfit| {
                    format!(
                        "task '{}': strategy {}: `{}`: {}",
                        self.name,
                        config.name(),
                        unfit.key,
                        unfit.message
                    )
                })?;
                let strategy = config.build(hospitals);
                let quorum = self.configured_quorum;
                if strategy.min_updates() > quorum {
                    return Err(format!(
                        "task '{}': strategy {} needs at least {} updates a round, above this task's quorum of {quorum} \
                         (tasks.{}.min_hospitals); choose a smaller f, or raise the quorum in the configuration",
                        self.name,
                        config.name(),
                        strategy.min_updates(),
                        self.name
                    ));
                }
                (strategy, quorum, None)
            }
        };
        let mut plan = self.configured_plan.clone();
        if let Some(t) = settings.training {
            plan.local_epochs = t.local_epochs;
            plan.batch_size = t.batch_size;
            plan.learning_rate = t.learning_rate;
            plan.l2 = t.l2;
        }
        plan.privacy = settings.privacy.map(|p| RunPrivacy { rounds, ..p });
        Ok(RunSetup {
            strategy,
            plan,
            train_quorum,
            quorum_note,
        })
    }

    fn take_up(&mut self, setup: RunSetup) {
        self.strategy = setup.strategy;
        self.plan = setup.plan;
        self.quorum_note = setup.quorum_note;
        self.fsm.set_train_quorum(setup.train_quorum);
    }

    fn reset_for_run(&mut self) -> Result<(), String> {
        let first = self
            .strategy
            .initialise((*self.initial).clone())
            .map_err(|e| e.to_string())?;
        self.global = GlobalModel {
            params: Arc::new(first),
            standardizer: fixed_scaler(&self.scaling),
        };
        self.kept_updates.clear();
        self.kept_stats.clear();
        self.history.clear();
        self.round_started = None;
        self.rejected.clear();
        self.declined = 0;
        self.departures = 0;
        self.participation.clear();
        Ok(())
    }

    /// Take up an interrupted run where its last commit left it.
    fn restore(&mut self, resume: TaskResume) -> Result<(), String> {
        self.reset_for_run()?;
        let Some((mut model, strategy)) = resume.committed else {
            return Ok(());
        };
        let params = model.params.in_layout(self.initial.layout()).map_err(|e| {
            format!(
                "task '{}': the committed model does not fit this task's model: {e}",
                self.name
            )
        })?;
        model.params = Arc::new(params);
        self.strategy
            .restore(strategy)
            .map_err(|e| format!("task '{}': {e}", self.name))?;
        self.global = model;
        self.kept_updates.clear();
        self.kept_stats.clear();
        self.history = resume.history;
        self.round_started = None;
        self.rejected = resume.totals.rejected;
        self.declined = resume.totals.declined;
        self.departures = resume.totals.departures;
        // A hospital that joined before the resume announced what its ledger
        // says now; the commit may be older (a replayed round was charged).
        for (hospital, spent) in resume.privacy {
            match self.privacy.get(&hospital) {
                Some(now) if now.epsilon >= spent.epsilon => {}
                _ => {
                    self.privacy.insert(hospital, spent);
                }
            }
        }
        self.participation.clear();
        Ok(())
    }

    fn totals(&self) -> TaskTotals {
        TaskTotals {
            rejected: self.rejected.clone(),
            declined: self.declined,
            departures: self.departures,
        }
    }

    /// Record what became of `hospital`'s answer this round, unless it
    /// already had an outcome that `only_if_new` must not overwrite.
    fn participated(
        &mut self,
        hospital: &str,
        outcome: ParticipationOutcome,
        reason: Option<String>,
        samples: Option<usize>,
        only_if_new: bool,
    ) {
        if only_if_new && self.participation.contains_key(hospital) {
            return;
        }
        self.participation.insert(
            hospital.to_string(),
            Participation {
                outcome,
                reason,
                samples,
            },
        );
    }

    fn combine_stats(&mut self, from: &[HospitalId]) -> Result<(), String> {
        if !matches!(self.scaling, Scaling::Federated) {
            return Ok(());
        }
        let parts: Vec<&MomentSums> = from.iter().filter_map(|h| self.kept_stats.get(h)).collect();
        if parts.len() != from.len() {
            return Err("statistics missing for a hospital counted in the quorum".into());
        }
        let sums = MomentSums::combine(parts).map_err(|e| e.to_string())?;
        let scaler = Standardizer::from_sums(&sums).map_err(|e| e.to_string())?;
        self.global.standardizer = Some(Arc::new(scaler));
        Ok(())
    }

    /// Hand an answer to the current attempt's secure sum, if it is the
    /// attempt the answer belongs to (else the machine drops it as late).
    fn feed_secure(
        &mut self,
        ask: Ask,
        feed: impl FnOnce(&mut Server) -> medfed_models::secagg::Result<()>,
    ) -> Result<(), String> {
        match self.secagg.as_mut() {
            Some(server) if *server.context() == secure_context(&self.name, ask) => {
                feed(server).map_err(|e| e.to_string())
            }
            _ => Err("no secure-aggregation attempt is collecting this answer".into()),
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            task: self.name.clone(),
            round: self.history.last().map(|r| r.round).unwrap_or(0),
            model: self.global.clone(),
        }
    }

    /// An abort for want of updates names the strategy when it is the one
    /// that raised the quorum.
    fn explain_abort(&self, reason: String) -> String {
        match &self.quorum_note {
            Some(note) if reason.contains("required updates") => format!("{reason} ({note})"),
            _ => reason,
        }
    }

    fn report(&self) -> TaskReport {
        let phase = match self.fsm.phase() {
            Phase::Aborted { reason } => Phase::Aborted {
                reason: self.explain_abort(reason.clone()),
            },
            other => other.clone(),
        };
        TaskReport {
            hospitals: self.fsm.members().len(),
            phase,
            rounds: self.history.clone(),
            drops: self.fsm.drops().clone(),
            rejected: self.rejected.clone(),
            declined: self.declined,
            departures: self.departures,
            privacy: self.privacy.clone(),
            attacks: self.attacks.clone(),
        }
    }
}

/// The event for a secure sum that cannot go on at a stage's start (or,
/// `None`, a secure stage without a sum): the round's attempt failed.
fn secure_failure(round: u32, failed: Option<medfed_models::secagg::Result<()>>) -> Event {
    let reason = match failed {
        Some(Err(e)) => e.to_string(),
        _ => "secure aggregation: no secure sum for this attempt".to_string(),
    };
    Event::RoundFailed {
        round,
        reason: format!("round {round}: {reason}"),
    }
}

/// What a secure round's keys and shares are bound to.
fn secure_context(task: &str, ask: Ask) -> RoundContext {
    RoundContext {
        task: task.to_string(),
        run: ask.run,
        round: ask.round,
        attempt: ask.attempt,
    }
}

fn invalid(label: &str, reason: String) -> Verdict {
    Verdict::Invalid {
        label: label.to_string(),
        reason,
    }
}

/// An answer the secure sum took in is usable; one it refused is not.
fn secure_verdict(fed: Result<(), String>) -> Verdict {
    match fed {
        Ok(()) => Verdict::Usable,
        Err(reason) => invalid("secure_aggregation", reason),
    }
}

fn fixed_scaler(scaling: &Scaling) -> Option<Arc<Standardizer>> {
    match scaling {
        Scaling::Fixed(s) => Some(s.clone()),
        _ => None,
    }
}

impl Core {
    pub fn new(setups: Vec<TaskSetup>) -> Self {
        Self {
            tasks: setups
                .into_iter()
                .map(|s| (s.name.clone(), TaskState::new(s)))
                .collect(),
            hospitals: HashMap::new(),
            by_name: HashMap::new(),
            run: None,
            generation: 0,
            denied: BTreeSet::new(),
        }
    }

    /// Refuse these hospitals at hello from now on.
    pub fn deny(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.denied.extend(names);
        self
    }

    pub fn task_names(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    pub fn report(&self) -> RunReport {
        RunReport {
            run_id: self.run.as_ref().map(|r| r.id.clone()),
            tasks: self
                .tasks
                .iter()
                .map(|(name, t)| (name.clone(), t.report()))
                .collect(),
        }
    }

    /// The task's strategy state now (what a checkpoint of it would keep).
    pub fn strategy_state(&self, task: &str) -> Option<StrategyState> {
        self.tasks.get(task).map(|t| t.strategy.state())
    }

    /// The task's latest global model and the round that produced it.
    pub fn checkpoint(&self, task: &str) -> Option<Checkpoint> {
        self.tasks.get(task).map(TaskState::checkpoint)
    }

    /// Start a run named `run_id` (the shell names it: the name holds a time).
    pub fn start_run(
        &mut self,
        now: Duration,
        request: RunRequest,
        run_id: String,
    ) -> (Result<String, StartRefused>, Vec<Output>) {
        let mut out = Vec::new();
        let result = self.try_start(now, request, run_id, &mut out);
        (result, out)
    }

    fn try_start(
        &mut self,
        now: Duration,
        request: RunRequest,
        run_id: String,
        out: &mut Vec<Output>,
    ) -> Result<String, StartRefused> {
        if let Some(run) = self.run.as_ref().filter(|r| r.active) {
            return Err(StartRefused::RunActive(run.id.clone()));
        }
        let tasks = request.tasks.unwrap_or_else(|| self.task_names());
        if tasks.is_empty() {
            return Err(StartRefused::Invalid("a run needs at least one task".into()));
        }
        if let Some(unknown) = tasks.iter().find(|t| !self.tasks.contains_key(*t)) {
            return Err(StartRefused::Invalid(format!(
                "unknown task '{unknown}' (tasks: {})",
                self.task_names().join(", ")
            )));
        }
        if request.rounds == Some(0) {
            return Err(StartRefused::Invalid("rounds must be at least 1".into()));
        }
        if let Some(other) = request.settings.keys().find(|t| !tasks.contains(*t)) {
            return Err(StartRefused::Invalid(format!(
                "settings for task '{other}', which this run does not train (tasks: {})",
                tasks.join(", ")
            )));
        }
        let planned: BTreeMap<String, u32> = tasks
            .iter()
            .map(|t| {
                let rounds = request
                    .rounds
                    .unwrap_or_else(|| self.tasks[t].fsm.config().rounds);
                (t.clone(), rounds)
            })
            .collect();
        // Every task's settings are checked before any task takes them up.
        let mut setups = Vec::new();
        for (t, rounds) in &planned {
            let setup = self.tasks[t]
                .run_setup(request.settings.get(t), *rounds)
                .map_err(StartRefused::Invalid)?;
            setups.push((t.clone(), setup));
        }
        for (t, setup) in setups {
            if let Some(task) = self.tasks.get_mut(&t) {
                task.take_up(setup);
            }
        }
        for t in &tasks {
            if let Some(task) = self.tasks.get_mut(t) {
                task.reset_for_run().map_err(StartRefused::Invalid)?;
            }
        }
        self.generation += 1;
        let excluded: BTreeSet<String> = request.exclude.iter().cloned().collect();
        self.run = Some(Run {
            id: run_id.clone(),
            tasks: tasks.clone(),
            active: true,
            excluded: excluded.clone(),
        });
        out.push(Output::BeginRun(RunBegin {
            run_id: run_id.clone(),
            tasks: planned.clone(),
            excluded: excluded.iter().cloned().collect(),
            settings: request.settings.clone(),
        }));
        out.push(Output::Publish(FederationEvent::RunStarted {
            run_id: run_id.clone(),
            tasks: tasks.clone(),
            resumed_after: BTreeMap::new(),
            excluded: excluded.into_iter().collect(),
            settings: request.settings.clone(),
        }));
        for (t, rounds) in planned {
            self.apply(now, &t, Event::Start { rounds }, None, out);
        }
        Ok(run_id)
    }

    /// Carry on the interrupted run `point` describes: each of its tasks
    /// takes up its committed model, strategy state, history and totals,
    /// waits for its hospitals as a start does, and begins at the round
    /// after its last commit.
    pub fn resume(
        &mut self,
        now: Duration,
        point: ResumePoint,
    ) -> (Result<String, StartRefused>, Vec<Output>) {
        let mut out = Vec::new();
        let result = self.try_resume(now, point, &mut out);
        (result, out)
    }

    fn try_resume(
        &mut self,
        now: Duration,
        point: ResumePoint,
        out: &mut Vec<Output>,
    ) -> Result<String, StartRefused> {
        if let Some(run) = self.run.as_ref().filter(|r| r.active) {
            return Err(StartRefused::RunActive(run.id.clone()));
        }
        if point.tasks.is_empty() {
            return Err(StartRefused::Invalid(format!(
                "run {} has no task to resume",
                point.run_id
            )));
        }
        if let Some(unknown) = point.tasks.keys().find(|t| !self.tasks.contains_key(*t)) {
            return Err(StartRefused::Invalid(format!(
                "run {} trained task '{unknown}', which this coordinator does not serve (tasks: {})",
                point.run_id,
                self.task_names().join(", ")
            )));
        }
        let mut setups = BTreeMap::new();
        for (name, resume) in &point.tasks {
            let setup = self.tasks[name]
                .run_setup(point.settings.get(name), resume.target_rounds)
                .map_err(StartRefused::Invalid)?;
            setups.insert(name.clone(), setup);
        }
        let mut plans = Vec::new();
        for (name, resume) in point.tasks {
            let rounds = resume.target_rounds;
            let after = resume.history.last().map_or(0, |r| r.round);
            let task = self.tasks.get_mut(&name).expect("checked above");
            if let Some(setup) = setups.remove(&name) {
                task.take_up(setup);
            }
            task.restore(resume).map_err(StartRefused::Invalid)?;
            plans.push((name, rounds, after));
        }
        let tasks: Vec<String> = plans.iter().map(|(name, ..)| name.clone()).collect();
        self.generation += 1;
        self.run = Some(Run {
            id: point.run_id.clone(),
            tasks: tasks.clone(),
            active: true,
            excluded: point.excluded.iter().cloned().collect(),
        });
        out.push(Output::Publish(FederationEvent::RunStarted {
            run_id: point.run_id.clone(),
            tasks,
            resumed_after: plans
                .iter()
                .map(|(name, _, after)| (name.clone(), *after))
                .collect(),
            excluded: point.excluded.clone(),
            settings: point.settings.clone(),
        }));
        for (name, rounds, after) in plans {
            self.apply(now, &name, Event::Resume { rounds, after }, None, out);
        }
        Ok(point.run_id)
    }

    /// Stop the active run: every task of it ends as stopped, with the rounds
    /// it aggregated, and `RunEnded` is among the outputs. Returns the run's
    /// id, or `None` when no run was active (then nothing happens).
    pub fn stop(&mut self, now: Duration) -> (Option<String>, Vec<Output>) {
        let mut out = Vec::new();
        let Some(run) = self.run.as_ref().filter(|r| r.active) else {
            return (None, out);
        };
        let (id, tasks) = (run.id.clone(), run.tasks.clone());
        for task in &tasks {
            self.apply(now, task, Event::Stop, None, &mut out);
        }
        (Some(id), out)
    }

    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Hello { actor, info } => self.on_hello(now, actor, info, &mut out),
            Input::Message { actor, message } => self.on_message(now, actor, message, &mut out),
            Input::Left { actor } => self.on_left(now, actor, &mut out),
            Input::Deadline { task, timer } => {
                self.apply(now, &task, Event::DeadlineExpired(timer), None, &mut out)
            }
            Input::Aggregated {
                task,
                generation,
                round,
                result,
            } => self.on_aggregated(now, task, generation, round, result, &mut out),
            Input::CommitFailed { task, reason } => {
                // The outputs after the failed commit (a finish, the run's
                // end) were never carried out: the run is still going.
                if let Some(run) = self.run.as_mut().filter(|r| r.tasks.contains(&task)) {
                    run.active = true;
                }
                self.apply(now, &task, Event::CommitFailed { reason }, None, &mut out)
            }
        }
        out
    }

    fn on_hello(&mut self, now: Duration, actor: ActorId, info: HospitalInfo, out: &mut Vec<Output>) {
        match self.hospitals.get(&actor) {
            // Said again (e.g. after a reconnection): nothing changes.
            Some(known) if known.info == info => return,
            // Another identity from a joined actor: it leaves as what it was.
            Some(_) => self.on_left(now, actor, out),
            None => {}
        }
        // Checked first: every later reason may quote the hello's fields.
        let valid = crate::names::check_hello(&info);
        let refusal = match self.tasks.get(&info.task) {
            _ if valid.is_err() => valid.clone().err(),
            _ if self.denied.contains(&info.name) => Some(format!(
                "hospital '{}' is on this coordinator's deny list (cluster.deny): its access was revoked",
                info.name
            )),
            None => Some(format!(
                "task '{}' is not served by this coordinator (tasks: {})",
                info.task,
                self.task_names().join(", ")
            )),
            Some(_) if self.by_name.get(&info.name).is_some_and(|id| *id != actor) => {
                Some(format!("hospital name '{}' is already in use", info.name))
            }
            Some(task)
                if task
                    .check
                    .check_examples(info.samples, info.privacy.is_some())
                    .is_err() =>
            {
                Some(format!(
                    "it declares {} training examples, above this task's bound of {} (tasks.{}.max_examples_per_hospital)",
                    info.samples,
                    task.check.max_examples.unwrap_or_default(),
                    info.task
                ))
            }
            Some(task) if task.secure.as_ref().is_some_and(|s| info.samples as u64 > s.max_weight) => Some(format!(
                "it declares {} training examples, above this task's secure-aggregation weight bound of {} \
                 (tasks.{}.secure_aggregation.max_weight): its weighted update would overflow the sum's range",
                info.samples,
                task.secure.as_ref().map_or(0, |s| s.max_weight),
                info.task
            )),
            Some(task)
                if task.max_hospitals.is_some_and(|max| {
                    self.hospitals.values().filter(|h| h.info.task == info.task).count() >= max
                }) =>
            {
                Some(format!(
                    "task '{}' already has its most hospitals ({}; tasks.{}.max_hospitals)",
                    info.task,
                    task.max_hospitals.unwrap_or_default(),
                    info.task
                ))
            }
            Some(task) => match (&info.held_out, &task.held_out) {
                (Some(theirs), Some(ours)) if theirs != ours => Some(format!(
                    "its data was split from a different held-out set ({theirs}; the coordinator's is {ours}): \
                     seed, test fraction or data differ, so it could be training on held-out rows"
                )),
                _ => match (&info.features, &task.features) {
                    (Some(theirs), Some(ours)) => {
                        medfed_models::data::dataset::feature_mismatch(theirs, ours, true).map(|why| format!("its data {why}"))
                    }
                    _ => None,
                },
            },
        };
        if let Some(reason) = refusal {
            // The name may be anything the sender chose: published escaped.
            let hospital = match valid {
                Ok(()) => info.name.clone(),
                Err(_) => crate::names::shown(&info.name),
            };
            out.push(Output::Publish(FederationEvent::HospitalRefused {
                task: crate::names::printable(&info.task),
                hospital,
                reason: reason.clone(),
            }));
            out.push(Output::Send {
                to: actor,
                message: ToHospital::Refused { reason },
            });
            out.push(Output::Forget(actor));
            return;
        }
        if let Some(t) = self.tasks.get_mut(&info.task) {
            if let Some(attack) = &info.attack {
                t.attacks.insert(info.name.clone(), attack.clone());
            }
            if let Some(spent) = &info.privacy {
                t.privacy.insert(info.name.clone(), spent.clone());
            }
        }
        out.push(Output::Publish(FederationEvent::HospitalJoined {
            task: info.task.clone(),
            hospital: info.name.clone(),
            kind: info.kind.clone(),
            samples: info.samples,
            attack: info.attack.clone(),
            node: info.node.clone(),
            privacy: info.privacy.clone(),
        }));
        let (task, name) = (info.task.clone(), info.name.clone());
        self.by_name.insert(name.clone(), actor);
        self.hospitals.insert(actor, Registered { info });
        self.apply(now, &task, Event::Joined(name), None, out);
    }

    fn on_left(&mut self, now: Duration, actor: ActorId, out: &mut Vec<Output>) {
        let Some(gone) = self.hospitals.remove(&actor) else {
            return;
        };
        self.by_name.remove(&gone.info.name);
        if let Some(task) = self.tasks.get_mut(&gone.info.task) {
            task.departures += 1;
            if task.fsm.phase().is_active() && task.fsm.phase().round() > 0 {
                task.participated(
                    &gone.info.name,
                    ParticipationOutcome::Departed,
                    Some("left during the round".into()),
                    None,
                    true,
                );
            }
        }
        out.push(Output::Publish(FederationEvent::HospitalLeft {
            task: gone.info.task.clone(),
            hospital: gone.info.name.clone(),
            reason: "left its process group (actor stopped or node disconnected)".into(),
        }));
        self.apply(now, &gone.info.task, Event::Left(gone.info.name), None, out);
    }

    fn on_message(&mut self, now: Duration, actor: ActorId, message: ToCoordinator, out: &mut Vec<Output>) {
        // Who sent it is the actor it came from, never what it says.
        let Some(r) = self.hospitals.get(&actor) else {
            return;
        };
        let (from, task) = (r.info.name.clone(), r.info.task.clone());
        // Its statistics carry DP noise when it releases under DP.
        let noised = r.info.privacy.is_some();
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        let Some(ask) = message.ask() else {
            return; // a hello, handled apart
        };
        // Every noised update the hospital released was charged to its
        // ledger, whether it counts or not (late, rejected, of another run).
        if let ToCoordinator::Update { outcome, .. } = &message {
            let spent = match outcome {
                TrainOutcome::Trained { update } => update.privacy.as_ref(),
                TrainOutcome::Masked { privacy, .. } => privacy.as_ref(),
                _ => None,
            };
            if let Some(spent) = spent {
                t.privacy.insert(from.clone(), spent.clone());
            }
        }
        if ask.run != self.generation {
            // An answer to a request of an earlier run.
            self.apply(now, &task, Event::Outdated(from), None, out);
            return;
        }
        let secure = t.secure.is_some();
        let (stage, verdict, payload) = match message {
            ToCoordinator::Hello { .. } => return,
            ToCoordinator::Stats { outcome, .. } => match outcome {
                StatsOutcome::Released { stats } => {
                    match stats.as_ref().map(|s| t.check.check_stats(s, noised)) {
                        Some(Err(reason)) => (
                            StageKind::Stats,
                            Verdict::Invalid {
                                label: reason.label().to_string(),
                                reason: reason.to_string(),
                            },
                            None,
                        ),
                        _ => (StageKind::Stats, Verdict::Usable, Some(Payload::Stats(stats))),
                    }
                }
                StatsOutcome::Declined { reason } => (StageKind::Stats, Verdict::Declined(reason), None),
            },
            ToCoordinator::Update { outcome, .. } => {
                let (verdict, payload) = match outcome {
                    // Under secure aggregation a plaintext update is never used.
                    TrainOutcome::Trained { .. } if secure => (
                        invalid(
                            "unmasked",
                            "an unmasked update in a secure-aggregation round".into(),
                        ),
                        None,
                    ),
                    TrainOutcome::Trained { update } => {
                        let checked = t
                            .check
                            .check(&t.global.params, &update.delta, update.num_examples)
                            .and_then(|()| t.check.check_examples(update.num_examples, noised));
                        match checked {
                            Ok(()) => (Verdict::Usable, Some(Payload::Update(update))),
                            Err(reason) => (invalid(reason.label(), reason.to_string()), None),
                        }
                    }
                    TrainOutcome::Masked { vector, privacy, .. } => {
                        let fed = masked_words(&vector)
                            .and_then(|words| t.feed_secure(ask, |server| server.add_masked(&from, words)));
                        (secure_verdict(fed), Some(Payload::Masked(privacy)))
                    }
                    TrainOutcome::Failed { reason } => (
                        invalid("training_failed", format!("training failed: {reason}")),
                        None,
                    ),
                    TrainOutcome::Declined { reason } => (Verdict::Declined(reason), None),
                };
                (StageKind::Train, verdict, payload)
            }
            ToCoordinator::Evaluated { outcome, .. } => (
                StageKind::Evaluate,
                Verdict::Usable,
                Some(Payload::Evaluation(outcome)),
            ),
            ToCoordinator::SecAgg { answer, .. } => {
                let stage = answer.stage();
                let verdict = match answer {
                    SecAggAnswer::Declined { reason, .. } => Verdict::Declined(reason),
                    SecAggAnswer::Keys { keys } => {
                        secure_verdict(t.feed_secure(ask, |s| s.add_keys(&from, keys)))
                    }
                    SecAggAnswer::Shares { shares } => {
                        secure_verdict(t.feed_secure(ask, |s| s.add_shares(&from, shares)))
                    }
                    SecAggAnswer::Unmask { shares } => {
                        secure_verdict(t.feed_secure(ask, |s| s.add_unmask(&from, shares)))
                    }
                };
                (stage, verdict, None)
            }
        };
        let event = Event::Answered {
            from,
            stage,
            round: ask.round,
            attempt: ask.attempt,
            verdict,
        };
        self.apply(now, &task, event, payload, out);
    }

    fn on_aggregated(
        &mut self,
        now: Duration,
        task: String,
        generation: u64,
        round: u32,
        result: Result<Aggregated, AggregateFailure>,
        out: &mut Vec<Output>,
    ) {
        if generation != self.generation {
            return; // from a run that was stopped
        }
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.fsm.phase() != &(Phase::Aggregating { round }) {
            return;
        }
        match result {
            Ok(Aggregated {
                params,
                participants,
                metrics,
                strategy,
            }) => {
                // The round goes on with its federated evaluation: `round_started`
                // stays until that stage closes too.
                let seconds = t
                    .round_started
                    .map(|started| now.saturating_sub(started).as_secs_f64())
                    .unwrap_or(0.0);
                t.kept_updates.clear();
                t.global.params = params;
                t.strategy = strategy;
                if let Some(dir) = &t.checkpoint_dir {
                    out.push(Output::WriteCheckpoint {
                        dir: dir.clone(),
                        checkpoint: Checkpoint {
                            task: task.clone(),
                            round,
                            model: t.global.clone(),
                        },
                    });
                }
                t.history.push(RoundRecord {
                    round,
                    participants,
                    metrics: metrics.clone(),
                    seconds,
                    seconds_with_evaluation: None,
                    federated: FederatedEval::default(),
                    participation: std::mem::take(&mut t.participation),
                });
                out.push(Output::Publish(FederationEvent::RoundAggregated {
                    task: task.clone(),
                    round,
                    participants,
                    metrics,
                    seconds,
                }));
                self.apply(now, &task, Event::Aggregated { round }, None, out);
            }
            Err(AggregateFailure {
                reason,
                retry_round: true,
            }) => self.apply(now, &task, Event::RoundFailed { round, reason }, None, out),
            Err(AggregateFailure { reason, .. }) => {
                self.apply(now, &task, Event::AggregationFailed { round, reason }, None, out)
            }
        }
    }

    /// Feed one event to a task's machine and turn what it decides into outputs.
    fn apply(
        &mut self,
        now: Duration,
        task: &str,
        event: Event,
        payload: Option<Payload>,
        out: &mut Vec<Output>,
    ) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        let before = t.fsm.phase().clone();
        let mut payload = payload;
        let mut queue: VecDeque<Effect> = t.fsm.handle(event).into();
        while let Some(effect) = queue.pop_front() {
            match self.execute(now, task, effect, &mut payload, out) {
                Ok(follow_ups) => {
                    for event in follow_ups {
                        let t = self.tasks.get_mut(task).expect("the task exists");
                        queue.extend(t.fsm.handle(event));
                    }
                }
                Err(reason) => {
                    queue.clear();
                    let t = self.tasks.get_mut(task).expect("the task exists");
                    queue.extend(t.fsm.handle(Event::Failed { reason }));
                }
            }
        }
        let after = self.tasks[task].fsm.phase().clone();
        if after != before {
            out.push(Output::Publish(FederationEvent::PhaseChanged {
                task: task.to_string(),
                phase: after,
            }));
        }
        self.check_run_end(out);
    }

    fn check_run_end(&mut self, out: &mut Vec<Output>) {
        let Some(run) = self.run.as_mut().filter(|r| r.active) else {
            return;
        };
        let phases: Vec<&Phase> = run
            .tasks
            .iter()
            .filter_map(|t| self.tasks.get(t).map(|t| t.fsm.phase()))
            .collect();
        if phases.iter().any(|p| p.is_active()) {
            return;
        }
        run.active = false;
        let outcome = if phases.iter().any(|p| matches!(p, Phase::Aborted { .. })) {
            RunOutcome::Aborted
        } else if phases.iter().any(|p| matches!(p, Phase::Stopped { .. })) {
            RunOutcome::Stopped
        } else {
            RunOutcome::Finished
        };
        out.push(Output::Publish(FederationEvent::RunEnded {
            run_id: run.id.clone(),
            outcome,
        }));
    }

    /// Carry out one of the machine's effects; returns events it leads to.
    fn execute(
        &mut self,
        now: Duration,
        task: &str,
        effect: Effect,
        payload: &mut Option<Payload>,
        out: &mut Vec<Output>,
    ) -> Result<Vec<Event>, String> {
        let generation = self.generation;
        let run_id = self.run.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let excluded = self.run.as_ref().map(|r| &r.excluded);
        let by_name = &self.by_name;
        let t = self.tasks.get_mut(task).expect("the task exists");
        let publish = |out: &mut Vec<Output>, e: FederationEvent| out.push(Output::Publish(e));
        let mut follow_ups = Vec::new();
        match effect {
            Effect::Request {
                stage,
                round,
                attempt,
                to,
            } => {
                let send = |out: &mut Vec<Output>, name: &str, message: ToHospital| {
                    if let Some(&actor) = by_name.get(name) {
                        out.push(Output::Send { to: actor, message });
                    }
                };
                let ask = Ask {
                    run: generation,
                    round,
                    attempt,
                };
                // A withdrawn hospital is excused from every stage, as one
                // the strategy leaves out.
                let (to, withdrawn): (Vec<String>, Vec<String>) = to
                    .into_iter()
                    .partition(|h| excluded.is_none_or(|x| !x.contains(h)));
                follow_ups.extend(withdrawn.into_iter().map(Event::Excused));
                // The strategy may leave hospitals out; it may not add any.
                let members: BTreeSet<&String> = to.iter().collect();
                // One secure-aggregation step, the same for everyone asked.
                let broadcast = |step: SecAggStep| -> Vec<(String, ToHospital)> {
                    to.iter()
                        .map(|h| {
                            (
                                h.clone(),
                                ToHospital::SecAgg {
                                    ask,
                                    step: step.clone(),
                                },
                            )
                        })
                        .collect()
                };
                let asked: Vec<(String, ToHospital)> = match stage {
                    StageKind::Stats => to
                        .iter()
                        .map(|h| {
                            let privacy = t.plan.privacy;
                            (h.clone(), ToHospital::CollectStats { ask, privacy })
                        })
                        .collect(),
                    StageKind::Setup => {
                        let Some(settings) = &t.secure else {
                            return Err(format!(
                                "task '{task}' runs secure rounds without secure-aggregation settings"
                            ));
                        };
                        let graph_seed = medfed_models::seed::derive(
                            t.plan.seed,
                            &format!("{task}/secagg-graph"),
                            u64::from(round) | (u64::from(attempt) << 32),
                        );
                        let plan = settings.round_plan(to.len(), graph_seed);
                        let dims = t.initial.as_slice().len();
                        let server = Server::new(secure_context(task, ask), plan, dims, true)
                            .map_err(|e| e.to_string())?;
                        t.secagg = Some(server);
                        broadcast(SecAggStep::Setup {
                            plan,
                            max_weight: settings.max_weight,
                            max_update_norm: settings.max_update_norm,
                        })
                    }
                    StageKind::ShareKeys => match t.secagg.as_mut().map(Server::close_setup) {
                        Some(Ok(mut request)) => {
                            if crate::failpoints::armed("coordinator::substitute_setup_keys") {
                                substitute_first_keys(&mut request);
                            }
                            broadcast(SecAggStep::ShareKeys { request })
                        }
                        failed => {
                            follow_ups.push(secure_failure(round, failed.map(|r| r.map(|_| ()))));
                            Vec::new()
                        }
                    },
                    StageKind::Train => {
                        let base = TrainPlan {
                            round,
                            attempt,
                            ..t.plan.clone()
                        };
                        // In a secure round only the hospitals the sum can
                        // take are asked, each with the shares sent to it.
                        let mut shares = match t.secagg.as_mut().map(Server::close_share_keys) {
                            None => None,
                            Some(Ok(requests)) => Some(requests),
                            Some(Err(e)) => {
                                follow_ups.push(secure_failure(round, Some(Err(e))));
                                Some(BTreeMap::new())
                            }
                        };
                        t.strategy
                            .configure_train(round, &base, &to)
                            .into_iter()
                            .filter(|(h, _)| members.contains(h))
                            .filter_map(|(h, plan)| {
                                let shares = match shares.as_mut() {
                                    None => None,
                                    Some(requests) => Some(requests.remove(&h)?),
                                };
                                let message = ToHospital::Train {
                                    ask,
                                    model: t.global.clone(),
                                    plan,
                                    shares,
                                };
                                Some((h, message))
                            })
                            .collect()
                    }
                    StageKind::Unmask => match t.secagg.as_mut().map(Server::close_masked_input) {
                        Some(Ok(request)) => broadcast(SecAggStep::Unmask { request }),
                        failed => {
                            follow_ups.push(secure_failure(round, failed.map(|r| r.map(|_| ()))));
                            Vec::new()
                        }
                    },
                    StageKind::Evaluate => {
                        let chosen: Vec<String> = t
                            .strategy
                            .configure_evaluate(round, &to)
                            .into_iter()
                            .filter(|h| members.contains(h))
                            .collect();
                        if let Some(record) = t.history.last_mut().filter(|r| r.round == round) {
                            record.federated.requested = chosen.len();
                        }
                        chosen
                            .into_iter()
                            .map(|h| {
                                let message = ToHospital::Evaluate {
                                    ask,
                                    model: t.global.clone(),
                                };
                                (h, message)
                            })
                            .collect()
                    }
                };
                let asked_names: BTreeSet<&String> = asked.iter().map(|(h, _)| h).collect();
                for h in &to {
                    if !asked_names.contains(h) {
                        follow_ups.push(Event::Excused(h.clone()));
                    }
                }
                for (h, message) in asked {
                    send(out, &h, message);
                }
            }
            Effect::ArmDeadline { timer, after } => out.push(Output::ArmDeadline {
                task: task.to_string(),
                timer,
                after,
            }),
            Effect::Keep { from, stage, round } => match (stage, payload.take()) {
                (StageKind::Stats, Some(Payload::Stats(Some(stats)))) => {
                    t.kept_stats.insert(from, stats);
                }
                (StageKind::Stats, Some(Payload::Stats(None))) if matches!(t.scaling, Scaling::Federated) => {
                    return Err(format!("hospital '{from}' sent no feature statistics"));
                }
                (StageKind::Train, Some(Payload::Update(update))) => {
                    publish(
                        out,
                        FederationEvent::UpdateAccepted {
                            task: task.to_string(),
                            round,
                            hospital: from.clone(),
                            num_examples: update.num_examples,
                            train_loss: update.train_loss,
                            epsilon_spent: update.privacy.as_ref().map(|p| p.epsilon),
                            epsilon_collusion: update.privacy.as_ref().and_then(|p| p.epsilon_collusion),
                        },
                    );
                    if let Some(spent) = &update.privacy {
                        t.privacy.insert(from.clone(), spent.clone());
                    }
                    t.participated(
                        &from,
                        ParticipationOutcome::Accepted,
                        None,
                        Some(update.num_examples),
                        false,
                    );
                    t.kept_updates.insert(from, update);
                }
                (StageKind::Train, Some(Payload::Masked(privacy))) => {
                    publish(
                        out,
                        FederationEvent::UpdateAccepted {
                            task: task.to_string(),
                            round,
                            hospital: from.clone(),
                            // Hidden in the secure sum: only the total is learnt.
                            num_examples: 0,
                            train_loss: None,
                            epsilon_spent: privacy.as_ref().map(|p| p.epsilon),
                            epsilon_collusion: privacy.as_ref().and_then(|p| p.epsilon_collusion),
                        },
                    );
                    if let Some(spent) = privacy {
                        t.privacy.insert(from.clone(), spent);
                    }
                    t.participated(&from, ParticipationOutcome::Accepted, None, None, false);
                }
                (StageKind::Evaluate, Some(Payload::Evaluation(outcome))) => {
                    let (metrics, reason) = match &outcome {
                        EvalOutcome::Evaluated { metrics } => (Some(metrics.clone()), None),
                        EvalOutcome::Declined { reason } => (None, Some(reason.clone())),
                    };
                    if let Some(record) = t.history.last_mut().filter(|r| r.round == round) {
                        record.federated.record(from.clone(), outcome);
                    }
                    publish(
                        out,
                        FederationEvent::HospitalEvaluated {
                            task: task.to_string(),
                            round,
                            hospital: from,
                            metrics,
                            reason,
                        },
                    );
                }
                _ => {}
            },
            Effect::Refuse {
                from,
                stage,
                round,
                verdict,
            } => match verdict {
                Verdict::Declined(reason) => {
                    if stage == StageKind::Train {
                        t.declined += 1;
                        t.participated(
                            &from,
                            ParticipationOutcome::Declined,
                            Some(reason.clone()),
                            None,
                            false,
                        );
                    }
                    publish(
                        out,
                        FederationEvent::UpdateDeclined {
                            task: task.to_string(),
                            round,
                            hospital: from,
                            reason,
                        },
                    );
                }
                Verdict::Invalid { label, reason } => {
                    *t.rejected.entry(label).or_default() += 1;
                    if stage == StageKind::Train {
                        t.participated(
                            &from,
                            ParticipationOutcome::Rejected,
                            Some(reason.clone()),
                            None,
                            false,
                        );
                    }
                    publish(
                        out,
                        FederationEvent::UpdateRejected {
                            task: task.to_string(),
                            round,
                            hospital: from,
                            reason,
                        },
                    );
                }
                Verdict::Usable => {}
            },
            Effect::Drop { from, reason } => {
                let training = matches!(
                    t.fsm.phase(),
                    Phase::Collecting {
                        stage: StageKind::Train,
                        ..
                    } | Phase::Aggregating { .. }
                );
                if reason == DropReason::Late && training {
                    let why = Some("answered after its attempt closed".to_string());
                    t.participated(&from, ParticipationOutcome::Late, why, None, true);
                }
                publish(
                    out,
                    FederationEvent::MessageDropped {
                        task: task.to_string(),
                        hospital: from,
                        reason,
                    },
                )
            }
            Effect::RoundClosed { round } => {
                if let Some(record) = t.history.last().filter(|r| r.round == round) {
                    out.push(Output::CommitRound(Box::new(RoundCommit {
                        run_id,
                        task: task.to_string(),
                        target_rounds: t.fsm.target_rounds(),
                        checkpoint: Checkpoint {
                            task: task.to_string(),
                            round,
                            model: t.global.clone(),
                        },
                        strategy: t.strategy.state(),
                        record: record.clone(),
                        totals: t.totals(),
                        privacy: t.privacy.clone(),
                    })));
                }
            }
            Effect::DiscardCollected => {
                t.kept_updates.clear();
                t.kept_stats.clear();
                // A run that stopped or aborted leaves no secrets behind.
                if !t.fsm.phase().is_active() {
                    t.secagg = None;
                }
            }
            Effect::StageClosed { stage, round, from } => match stage {
                StageKind::Stats => t.combine_stats(&from)?,
                StageKind::Setup | StageKind::ShareKeys => {}
                // Secure rounds aggregate after unmask: the inputs are in the sum.
                StageKind::Train if t.secagg.is_some() => {}
                StageKind::Unmask => {
                    let Some(server) = t.secagg.take() else {
                        return Err(format!("task '{task}': unmask closed without a secure sum"));
                    };
                    let max_weight = t.secure.as_ref().map_or(1, |s| s.max_weight);
                    out.push(Output::Aggregate(Box::new(AggregateJob {
                        task: task.to_string(),
                        generation,
                        round,
                        global: t.global.clone(),
                        updates: Vec::new(),
                        secure: Some(SecureJob { server, max_weight }),
                        strategy: t.strategy.boxed_clone(),
                        evaluator: t.evaluator.clone(),
                    })));
                }
                StageKind::Train => {
                    let updates = from
                        .iter()
                        .filter_map(|h| t.kept_updates.get(h).cloned())
                        .collect();
                    out.push(Output::Aggregate(Box::new(AggregateJob {
                        task: task.to_string(),
                        generation,
                        round,
                        global: t.global.clone(),
                        updates,
                        secure: None,
                        strategy: t.strategy.boxed_clone(),
                        evaluator: t.evaluator.clone(),
                    })));
                }
                StageKind::Evaluate => {
                    let started = t.round_started.take();
                    if let Some(record) = t.history.last_mut().filter(|r| r.round == round) {
                        record.seconds_with_evaluation = started.map(|s| now.saturating_sub(s).as_secs_f64());
                        let parts: Vec<&Metrics> = record.federated.hospitals.values().collect();
                        record.federated.pooled = t.strategy.aggregate_evaluate(round, &parts);
                    }
                }
            },
            Effect::StageBelowQuorum {
                round,
                attempt,
                accepted,
                needed,
                ..
            } => publish(
                out,
                FederationEvent::RoundBelowQuorum {
                    task: task.to_string(),
                    round,
                    attempt,
                    accepted,
                    needed,
                },
            ),
            Effect::RoundStarted {
                round,
                attempt,
                participants,
            } => {
                if attempt == 0 {
                    t.round_started = Some(now);
                    t.participation.clear();
                }
                publish(
                    out,
                    FederationEvent::RoundStarted {
                        task: task.to_string(),
                        round,
                        attempt,
                        participants,
                    },
                );
            }
            Effect::StartingWithout { joined, expected } => {
                let present: BTreeSet<&String> = joined.iter().collect();
                let missing = t
                    .expected_names
                    .iter()
                    .filter(|name| !present.contains(name))
                    .cloned()
                    .collect();
                publish(
                    out,
                    FederationEvent::StartingWithout {
                        task: task.to_string(),
                        joined,
                        expected,
                        missing,
                    },
                )
            }
            Effect::RunFinished { rounds } => publish(
                out,
                FederationEvent::TaskFinished {
                    task: task.to_string(),
                    rounds,
                },
            ),
            Effect::RunStopped { rounds } => publish(
                out,
                FederationEvent::TaskStopped {
                    task: task.to_string(),
                    rounds,
                },
            ),
            Effect::RunAborted { reason } => {
                let reason = t.explain_abort(reason);
                publish(
                    out,
                    FederationEvent::TaskAborted {
                        task: task.to_string(),
                        reason,
                    },
                )
            }
        }
        Ok(follow_ups)
    }
}

/// A malicious coordinator, for the tests (failpoint
/// `coordinator::substitute_setup_keys`): one hospital's public keys
/// replaced by keys of the coordinator's making, its signature left as it
/// was. Hospitals that check signatures refuse the request.
fn substitute_first_keys(request: &mut medfed_models::secagg::ShareKeysRequest) {
    if let Some((name, keys)) = request.keys.iter_mut().next() {
        tracing::warn!(hospital = %name, "test failpoint: substituting this hospital's setup keys");
        keys.cipher = rand::random();
        keys.mask = rand::random();
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
