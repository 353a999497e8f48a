//! The coordinator actor: routes messages to the per-task state machines and
//! executes the effects they return. All decisions live in `fsm`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{debug, info, warn};

use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::MomentSums;
use medfed_models::learner::{GlobalModel, LocalUpdate};

use super::fsm::{Effect, Event, Phase, Verdict};
use super::task::{aggregate_and_evaluate, write_checkpoint, TaskRuntime, TaskSetup};
use super::task_group;
use crate::events::{EventBus, FederationEvent};
use crate::messages::{
    CoordinatorMsg, EvalOutcome, HospitalInfo, RunRequest, StartRefused, StatsOutcome, ToCoordinator,
    ToHospital, TrainOutcome,
};
use crate::report::{FederatedEval, RoundRecord, RunReport};

pub struct Coordinator;

pub struct CoordinatorArgs {
    pub tasks: Vec<TaskSetup>,
    pub events: EventBus,
}

struct Registered {
    info: HospitalInfo,
    actor: ActorRef<ToHospital>,
}

/// A payload that arrived with the event being applied; `Keep*` effects claim it.
enum Incoming {
    Stats(Option<MomentSums>),
    Update(LocalUpdate),
}

pub struct CoordinatorState {
    tasks: BTreeMap<String, TaskRuntime>,
    hospitals: HashMap<ActorId, Registered>,
    /// Hospital name -> its actor: keyed, so no per-message scan.
    by_name: HashMap<String, ActorId>,
    events: EventBus,
    run_id: Option<String>,
    run_tasks: Vec<String>,
    run_active: bool,
    /// Bumped per run so that results of an earlier run are recognised.
    generation: u64,
    incoming: Option<Incoming>,
}

impl CoordinatorState {
    fn actor_of(&self, name: &str) -> Option<&ActorRef<ToHospital>> {
        self.by_name
            .get(name)
            .and_then(|id| self.hospitals.get(id))
            .map(|r| &r.actor)
    }
}

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut tasks = BTreeMap::new();
        for setup in args.tasks {
            pg::monitor(task_group(&setup.name), myself.get_cell());
            tasks.insert(setup.name.clone(), TaskRuntime::new(setup));
        }
        info!(tasks = ?tasks.keys().collect::<Vec<_>>(), "coordinator started");
        Ok(CoordinatorState {
            tasks,
            hospitals: HashMap::new(),
            by_name: HashMap::new(),
            events: args.events,
            run_id: None,
            run_tasks: Vec::new(),
            run_active: false,
            generation: 0,
            incoming: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::FromHospital {
                sender,
                message: ToCoordinator::Hello { info },
            } => on_join(&myself, state, info, sender),
            CoordinatorMsg::FromHospital { sender, message } => {
                // The sender is the actor it came from, never what the message says.
                let Some(r) = state.hospitals.get(&sender.get_id()) else {
                    debug!(
                        message = message.name(),
                        "message from an actor that is not a joined hospital dropped"
                    );
                    return Ok(());
                };
                let (from, task) = (r.info.name.clone(), r.info.task.clone());
                match message {
                    ToCoordinator::Hello { .. } => {}
                    ToCoordinator::Stats { attempt, outcome } => {
                        on_stats(&myself, state, from, task, attempt, outcome)
                    }
                    ToCoordinator::Update {
                        round,
                        attempt,
                        outcome,
                    } => on_update(&myself, state, from, task, round, attempt, outcome),
                    ToCoordinator::Evaluated { round, outcome } => {
                        on_evaluated(state, from, task, round, outcome)
                    }
                }
            }
            CoordinatorMsg::StartRun { request, reply } => {
                let result = start_run(&myself, state, request);
                let _ = reply.send(result);
            }
            CoordinatorMsg::Stop => {
                let names: Vec<String> = state.tasks.keys().cloned().collect();
                for task in names {
                    apply(&myself, state, &task, Event::Stop);
                }
            }
            CoordinatorMsg::Deadline { task, timer } => {
                apply(&myself, state, &task, Event::DeadlineExpired(timer))
            }
            CoordinatorMsg::RoundDone {
                task,
                generation,
                round,
                result,
            } => on_round_done(&myself, state, task, generation, round, result),
            CoordinatorMsg::Model { task, reply } => {
                let _ = reply.send(state.tasks.get(&task).map(TaskRuntime::checkpoint));
            }
            CoordinatorMsg::Report(reply) => {
                let report = RunReport {
                    run_id: state.run_id.clone(),
                    tasks: state
                        .tasks
                        .iter()
                        .map(|(name, rt)| (name.clone(), rt.report()))
                        .collect(),
                };
                let _ = reply.send(report);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, cells)) => {
                for cell in cells {
                    let Some(gone) = state.hospitals.remove(&cell.get_id()) else {
                        continue;
                    };
                    state.by_name.remove(&gone.info.name);
                    let reason = "left its process group (actor stopped or node disconnected)".to_string();
                    warn!(hospital = %gone.info.name, task = %gone.info.task, actor = %cell.get_id(), group = %group, "hospital departed: {reason}");
                    if let Some(rt) = state.tasks.get_mut(&gone.info.task) {
                        rt.departures += 1;
                    }
                    state.events.publish(FederationEvent::HospitalLeft {
                        task: gone.info.task.clone(),
                        hospital: gone.info.name.clone(),
                        reason,
                    });
                    apply(&myself, state, &gone.info.task, Event::Left(gone.info.name));
                }
            }
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, group, cells)) => {
                debug!(group = %group, actors = cells.len(), "process group join");
            }
            other => info!(event = %other, "supervision event"),
        }
        Ok(())
    }
}

fn on_join(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    info: HospitalInfo,
    hospital: ActorRef<ToHospital>,
) {
    let refusal = if !state.tasks.contains_key(&info.task) {
        Some(format!(
            "task '{}' is not served by this coordinator (tasks: {})",
            info.task,
            state.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    } else if state
        .by_name
        .get(&info.name)
        .is_some_and(|id| *id != hospital.get_id())
    {
        Some(format!("hospital name '{}' is already in use", info.name))
    } else if let (Some(theirs), Some(ours)) = (&info.held_out, &state.tasks[&info.task].held_out) {
        (theirs != ours).then(|| {
            format!(
                "its data was split from a different held-out set ({theirs}; the coordinator's is {ours}): \
                 seed, test fraction or data differ, so it could be training on held-out rows"
            )
        })
    } else {
        None
    };
    if let Some(reason) = refusal {
        warn!(hospital = %info.name, task = %info.task, "join refused: {reason}");
        state.events.publish(FederationEvent::HospitalRefused {
            task: info.task.clone(),
            hospital: info.name.clone(),
            reason: reason.clone(),
        });
        let _ = hospital.cast(ToHospital::Refused { reason });
        return;
    }
    info!(hospital = %info.name, task = %info.task, kind = %info.kind, samples = info.samples, "hospital joined");
    state.events.publish(FederationEvent::HospitalJoined {
        task: info.task.clone(),
        hospital: info.name.clone(),
        kind: info.kind.clone(),
        samples: info.samples,
        node: info.node.clone(),
    });
    let (task, name) = (info.task.clone(), info.name.clone());
    state.by_name.insert(name.clone(), hospital.get_id());
    state.hospitals.insert(
        hospital.get_id(),
        Registered {
            info,
            actor: hospital,
        },
    );
    apply(myself, state, &task, Event::Joined(name));
}

fn on_stats(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    from: String,
    task: String,
    attempt: u32,
    outcome: StatsOutcome,
) {
    let usable = match outcome {
        StatsOutcome::Released { stats } => {
            state.incoming = Some(Incoming::Stats(stats));
            true
        }
        StatsOutcome::Declined { reason } => {
            info!(task = %task, hospital = %from, "feature statistics declined: {reason}");
            state.events.publish(FederationEvent::UpdateDeclined {
                task: task.clone(),
                round: 0,
                hospital: from.clone(),
                reason,
            });
            false
        }
    };
    apply(
        myself,
        state,
        &task,
        Event::StatsArrived {
            from,
            attempt,
            usable,
        },
    );
}

fn on_update(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    from: String,
    task: String,
    round: u32,
    attempt: u32,
    outcome: TrainOutcome,
) {
    let Some(rt) = state.tasks.get(&task) else {
        warn!(hospital = %from, task = %task, "update for an unknown task dropped");
        return;
    };
    let verdict = match outcome {
        TrainOutcome::Trained { update } => {
            match rt
                .check
                .check(&rt.global.params, &update.delta, update.num_examples)
            {
                Ok(()) => {
                    state.incoming = Some(Incoming::Update(update));
                    Verdict::Valid
                }
                Err(reason) => Verdict::Invalid {
                    label: reason.label().to_string(),
                    reason: reason.to_string(),
                },
            }
        }
        TrainOutcome::Failed { reason } => Verdict::Invalid {
            label: "training_failed".to_string(),
            reason: format!("training failed: {reason}"),
        },
        TrainOutcome::Declined { reason } => Verdict::Declined(reason),
    };
    apply(
        myself,
        state,
        &task,
        Event::UpdateArrived {
            from,
            round,
            attempt,
            verdict,
        },
    );
}

fn on_evaluated(state: &mut CoordinatorState, from: String, task: String, round: u32, outcome: EvalOutcome) {
    let known = state
        .hospitals
        .values()
        .any(|r| r.info.name == from && r.info.task == task);
    let record = state
        .tasks
        .get_mut(&task)
        .and_then(|rt| rt.history.iter_mut().find(|r| r.round == round));
    let (true, Some(record)) = (known, record) else {
        debug!(task = %task, hospital = %from, round, "federated evaluation for no current round dropped");
        return;
    };
    let (metrics, reason) = match &outcome {
        EvalOutcome::Evaluated { metrics } => (Some(metrics.clone()), None),
        EvalOutcome::Declined { reason } => (None, Some(reason.clone())),
    };
    record.federated.record(from.clone(), outcome);
    state.events.publish(FederationEvent::HospitalEvaluated {
        task,
        round,
        hospital: from,
        metrics,
        reason,
    });
}

fn start_run(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    request: RunRequest,
) -> Result<String, StartRefused> {
    if state.run_active {
        return Err(StartRefused::RunActive(state.run_id.clone().unwrap_or_default()));
    }
    let tasks = request
        .tasks
        .unwrap_or_else(|| state.tasks.keys().cloned().collect());
    if tasks.is_empty() {
        return Err(StartRefused::Invalid("a run needs at least one task".into()));
    }
    for t in &tasks {
        if !state.tasks.contains_key(t) {
            return Err(StartRefused::Invalid(format!(
                "unknown task '{t}' (tasks: {})",
                state.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if request.rounds == Some(0) {
        return Err(StartRefused::Invalid("rounds must be at least 1".into()));
    }
    for t in &tasks {
        state
            .tasks
            .get_mut(t)
            .expect("checked above")
            .reset_for_run()
            .map_err(StartRefused::Invalid)?;
    }
    state.generation += 1;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let run_id = format!("run-{millis}");
    state.run_id = Some(run_id.clone());
    state.run_tasks = tasks.clone();
    state.run_active = true;
    info!(run = %run_id, tasks = ?tasks, "run started");
    state.events.publish(FederationEvent::RunStarted {
        run_id: run_id.clone(),
        tasks: tasks.clone(),
    });
    for t in &tasks {
        let rounds = request
            .rounds
            .unwrap_or_else(|| state.tasks[t].fsm.config().rounds);
        apply(myself, state, t, Event::Start { rounds });
    }
    Ok(run_id)
}

fn on_round_done(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    task: String,
    generation: u64,
    round: u32,
    result: Result<(medfed_models::Params, medfed_models::metrics::Metrics), String>,
) {
    if generation != state.generation {
        return; // from a run that was stopped
    }
    let Some(rt) = state.tasks.get_mut(&task) else {
        return;
    };
    if rt.fsm.phase() != &(Phase::Evaluating { round }) {
        return;
    }
    match result {
        Ok((params, metrics)) => {
            let seconds = rt
                .round_started
                .take()
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            let participants = rt.kept_updates.len();
            rt.kept_updates.clear();
            rt.global.params = std::sync::Arc::new(params);
            // Federated evaluation: every hospital of the task tests the new
            // model on its own test split; answers arrive in `on_evaluated`.
            let model = rt.global.clone();
            let mut asked = 0;
            for r in state.hospitals.values().filter(|r| r.info.task == task) {
                let request = ToHospital::Evaluate {
                    round,
                    model: model.clone(),
                };
                if r.actor.cast(request).is_ok() {
                    asked += 1;
                }
            }
            let rt = state.tasks.get_mut(&task).expect("task exists");
            rt.history.push(RoundRecord {
                round,
                participants,
                metrics: metrics.clone(),
                seconds,
                federated: FederatedEval {
                    requested: asked,
                    ..FederatedEval::default()
                },
            });
            info!(task = %task, round, accuracy = metrics.accuracy, loss = metrics.loss, "round aggregated");
            state.events.publish(FederationEvent::RoundAggregated {
                task: task.clone(),
                round,
                participants,
                metrics,
                seconds,
            });
            apply(myself, state, &task, Event::Evaluated { round });
        }
        Err(reason) => apply(myself, state, &task, Event::EvaluationFailed { round, reason }),
    }
}

/// Feed one event to a task's machine and execute what it decides.
fn apply(myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState, task: &str, event: Event) {
    let Some(rt) = state.tasks.get_mut(task) else {
        warn!(task = %task, "event for an unknown task dropped");
        return;
    };
    let before = rt.fsm.phase().clone();
    let mut queue: VecDeque<Effect> = rt.fsm.handle(event).into();
    while let Some(effect) = queue.pop_front() {
        if let Err(reason) = execute(myself, state, task, effect) {
            warn!(task = %task, "run cannot continue: {reason}");
            queue.clear();
            let rt = state.tasks.get_mut(task).expect("task exists");
            queue.extend(rt.fsm.handle(Event::Failed { reason }));
        }
    }
    state.incoming = None;
    let rt = state.tasks.get_mut(task).expect("task exists");
    let after = rt.fsm.phase().clone();
    if after != before {
        debug!(task = %task, from = before.name(), to = after.name(), "phase changed");
        state.events.publish(FederationEvent::PhaseChanged {
            task: task.to_string(),
            phase: after,
        });
    }
    if state.run_active
        && state
            .run_tasks
            .iter()
            .all(|t| !state.tasks[t].fsm.phase().is_active())
    {
        state.run_active = false;
        let aborted = state
            .run_tasks
            .iter()
            .any(|t| matches!(state.tasks[t].fsm.phase(), Phase::Aborted { .. }));
        let run_id = state.run_id.clone().unwrap_or_default();
        info!(run = %run_id, aborted, "run ended");
        state
            .events
            .publish(FederationEvent::RunEnded { run_id, aborted });
    }
}

fn execute(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    task: &str,
    effect: Effect,
) -> Result<(), String> {
    let generation = state.generation;
    let events = state.events.clone();
    match effect {
        Effect::RequestStats { to, attempt } => {
            for name in to {
                if let Some(actor) = state.actor_of(&name) {
                    let _ = actor.cast(ToHospital::CollectStats { attempt });
                }
            }
        }
        Effect::KeepStats { from } => {
            let rt = state.tasks.get_mut(task).expect("task exists");
            if let Some(Incoming::Stats(Some(stats))) = state.incoming.take() {
                rt.kept_stats.insert(from, stats);
            } else if matches!(rt.scaling, super::task::Scaling::Federated) {
                return Err(format!("hospital '{from}' sent no feature statistics"));
            }
        }
        Effect::CombineStats { from } => {
            state
                .tasks
                .get_mut(task)
                .expect("task exists")
                .combine_stats(&from)?;
        }
        Effect::RequestTraining { to, round, attempt } => {
            let rt = &state.tasks[task];
            let model = rt.global.clone();
            let plan = rt.plan_for(round);
            for name in to {
                if let Some(actor) = state.actor_of(&name) {
                    let _ = actor.cast(ToHospital::Train {
                        round,
                        attempt,
                        model: model.clone(),
                        plan: plan.clone(),
                    });
                }
            }
        }
        Effect::ArmDeadline { timer, after } => {
            let task = task.to_string();
            myself.send_after(after, move || CoordinatorMsg::Deadline { task, timer });
        }
        Effect::KeepUpdate { from } => {
            let rt = state.tasks.get_mut(task).expect("task exists");
            let round = round_of(rt.fsm.phase());
            if let Some(Incoming::Update(update)) = state.incoming.take() {
                events.publish(FederationEvent::UpdateAccepted {
                    task: task.to_string(),
                    round,
                    hospital: from.clone(),
                    num_examples: update.num_examples,
                    train_loss: update.train_loss,
                    epsilon_spent: update.privacy.as_ref().map(|p| p.epsilon),
                });
                if let Some(spent) = &update.privacy {
                    rt.privacy.insert(from.clone(), spent.clone());
                }
                rt.kept_updates.insert(from, update);
            }
        }
        Effect::RefuseUpdate { from, verdict } => {
            let rt = state.tasks.get_mut(task).expect("task exists");
            let round = round_of(rt.fsm.phase());
            match verdict {
                Verdict::Declined(reason) => {
                    rt.declined += 1;
                    info!(task = %task, hospital = %from, round, "update declined: {reason}");
                    events.publish(FederationEvent::UpdateDeclined {
                        task: task.to_string(),
                        round,
                        hospital: from,
                        reason,
                    });
                }
                Verdict::Invalid { label, reason } => {
                    rt.count_rejection(&label);
                    warn!(task = %task, hospital = %from, round, "update rejected: {reason}");
                    events.publish(FederationEvent::UpdateRejected {
                        task: task.to_string(),
                        round,
                        hospital: from,
                        reason,
                    });
                }
                Verdict::Valid => {}
            }
        }
        Effect::Drop { from, reason } => {
            debug!(task = %task, hospital = %from, ?reason, "message dropped");
            events.publish(FederationEvent::MessageDropped {
                task: task.to_string(),
                hospital: from,
                reason,
            });
        }
        Effect::DiscardCollected => {
            let rt = state.tasks.get_mut(task).expect("task exists");
            rt.kept_updates.clear();
            rt.kept_stats.clear();
        }
        Effect::Aggregate { round, from } => {
            let rt = state.tasks.get_mut(task).expect("task exists");
            let updates: Vec<LocalUpdate> = from
                .iter()
                .filter_map(|h| rt.kept_updates.get(h).cloned())
                .collect();
            let strategy = rt.strategy.clone();
            let evaluator = rt.evaluator.clone();
            let global = rt.global.clone();
            let checkpoints = rt.checkpoint_dir.clone();
            let me = myself.clone();
            let task = task.to_string();
            let task_name = task.clone();
            tokio::spawn(async move {
                let result = tokio::task::spawn_blocking(move || {
                    let result = aggregate_and_evaluate(&strategy, &evaluator, &global, &updates);
                    if let (Ok((params, _)), Some(dir)) = (&result, checkpoints) {
                        let checkpoint = Checkpoint {
                            task: task_name,
                            round,
                            model: GlobalModel {
                                params: std::sync::Arc::new(params.clone()),
                                standardizer: global.standardizer.clone(),
                            },
                        };
                        write_checkpoint(&dir, &checkpoint);
                    }
                    result
                })
                .await
                .unwrap_or_else(|e| Err(format!("aggregation task failed: {e}")));
                let _ = me.cast(CoordinatorMsg::RoundDone {
                    task,
                    generation,
                    round,
                    result,
                });
            });
        }
        Effect::RoundStarted {
            round,
            attempt,
            participants,
        } => {
            let rt = state.tasks.get_mut(task).expect("task exists");
            if attempt == 0 {
                rt.round_started = Some(Instant::now());
            }
            events.publish(FederationEvent::RoundStarted {
                task: task.to_string(),
                round,
                attempt,
                participants,
            });
        }
        Effect::RoundBelowQuorum {
            round,
            attempt,
            accepted,
            needed,
        } => {
            warn!(task = %task, round, attempt, accepted, needed, "attempt ended below quorum");
            events.publish(FederationEvent::RoundBelowQuorum {
                task: task.to_string(),
                round,
                attempt,
                accepted,
                needed,
            });
        }
        Effect::RunFinished { rounds } => {
            info!(task = %task, rounds, "task finished");
            events.publish(FederationEvent::TaskFinished {
                task: task.to_string(),
                rounds,
            });
        }
        Effect::RunAborted { reason } => {
            warn!(task = %task, "task aborted: {reason}");
            events.publish(FederationEvent::TaskAborted {
                task: task.to_string(),
                reason,
            });
        }
    }
    Ok(())
}

fn round_of(phase: &Phase) -> u32 {
    match phase {
        Phase::Training { round, .. } | Phase::Evaluating { round } => *round,
        _ => 0,
    }
}
