//! The coordinator actor: the shell around `core`. It turns messages into
//! the core's inputs and executes the outputs — sends, timers, aggregation
//! off the actor thread, event publication and logs. It decides nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{debug, info, warn};

use super::core::{Core, Input, Output};
use super::durable::RoundStore;
use super::task::{run_aggregation, write_checkpoint, TaskSetup};
use super::task_group;
use crate::events::{EventBus, FederationEvent};
use crate::failpoints::crash_point;
use crate::messages::{CoordinatorMsg, ToCoordinator, ToHospital};

pub struct Coordinator;

pub struct CoordinatorArgs {
    pub tasks: Vec<TaskSetup>,
    pub events: EventBus,
    /// Where closed rounds are committed; `None`: nothing survives a restart.
    pub store: Option<Arc<dyn RoundStore>>,
    /// Hospitals refused at hello (`cluster.deny`).
    pub denied: Vec<String>,
}

pub struct CoordinatorState {
    core: Core,
    /// Where each joined hospital's actor is: the transport, not a decision.
    actors: HashMap<ActorId, ActorRef<ToHospital>>,
    events: EventBus,
    store: Option<Arc<dyn RoundStore>>,
    /// The core's clock: time since this actor started.
    started: Instant,
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
        let core = Core::new(args.tasks).deny(args.denied);
        for task in core.task_names() {
            pg::monitor(task_group(&task), myself.get_cell());
        }
        info!(tasks = ?core.task_names(), "coordinator started");
        Ok(CoordinatorState {
            core,
            actors: HashMap::new(),
            events: args.events,
            store: args.store,
            started: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let input = match msg {
            CoordinatorMsg::FromHospital {
                sender,
                message: ToCoordinator::Hello { info },
            } => {
                let actor = sender.get_id();
                state.actors.insert(actor, sender);
                Input::Hello { actor, info }
            }
            CoordinatorMsg::FromHospital { sender, message } => {
                if matches!(message, ToCoordinator::Update { .. }) {
                    crash_point("coordinator::update_received");
                }
                Input::Message {
                    actor: sender.get_id(),
                    message,
                }
            }
            CoordinatorMsg::StartRun { request, reply } => {
                let now = state.started.elapsed();
                let (result, outputs) = state.core.start_run(now, request, run_id());
                execute(&myself, state, outputs);
                let _ = reply.send(result);
                return Ok(());
            }
            CoordinatorMsg::ResumeRun { point, reply } => {
                let now = state.started.elapsed();
                let (result, outputs) = state.core.resume(now, *point);
                execute(&myself, state, outputs);
                let _ = reply.send(result);
                return Ok(());
            }
            CoordinatorMsg::Stop(reply) => {
                let (stopped, outputs) = state.core.stop(state.started.elapsed());
                execute(&myself, state, outputs);
                let _ = reply.send(stopped);
                return Ok(());
            }
            CoordinatorMsg::Deadline { task, timer } => Input::Deadline { task, timer },
            CoordinatorMsg::RoundDone {
                task,
                generation,
                round,
                result,
            } => Input::Aggregated {
                task,
                generation,
                round,
                result,
            },
            CoordinatorMsg::Model { task, reply } => {
                let _ = reply.send(state.core.checkpoint(&task));
                return Ok(());
            }
            CoordinatorMsg::Report(reply) => {
                let _ = reply.send(state.core.report());
                return Ok(());
            }
        };
        let outputs = state.core.handle(state.started.elapsed(), input);
        execute(&myself, state, outputs);
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
                    let actor = cell.get_id();
                    if state.actors.remove(&actor).is_some() {
                        debug!(actor = %actor, group = %group, "hospital actor left its group");
                        let outputs = state.core.handle(state.started.elapsed(), Input::Left { actor });
                        execute(&myself, state, outputs);
                    }
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

fn run_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("run-{millis}")
}

fn execute(myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState, outputs: Vec<Output>) {
    let mut outputs = outputs.into_iter();
    while let Some(output) = outputs.next() {
        match output {
            Output::Send { to, message } => {
                if let Some(actor) = state.actors.get(&to) {
                    let _ = actor.cast(message);
                }
            }
            Output::Forget(actor) => {
                state.actors.remove(&actor);
            }
            Output::ArmDeadline { task, timer, after } => {
                myself.send_after(after, move || CoordinatorMsg::Deadline { task, timer });
            }
            Output::Aggregate(job) => {
                let me = myself.clone();
                tokio::spawn(async move {
                    let (task, generation, round) = (job.task.clone(), job.generation, job.round);
                    let result = tokio::task::spawn_blocking(move || run_aggregation(*job))
                        .await
                        .unwrap_or_else(|e| Err(format!("aggregation task failed: {e}").into()));
                    let _ = me.cast(CoordinatorMsg::RoundDone {
                        task,
                        generation,
                        round,
                        result,
                    });
                });
            }
            Output::WriteCheckpoint { dir, checkpoint } => {
                // Small (a model), and rare (once a round): written in place.
                write_checkpoint(&dir, &checkpoint);
            }
            Output::BeginRun(begin) => {
                let Some(store) = &state.store else { continue };
                if let Err(e) = store.begin(&begin) {
                    tracing::error!(run = %begin.run_id, "cannot record the run's start: {e}");
                    drop(outputs);
                    for task in begin.tasks.keys() {
                        let input = Input::CommitFailed {
                            task: task.clone(),
                            reason: format!("cannot record the run's start in the store: {e}"),
                        };
                        let follow = state.core.handle(state.started.elapsed(), input);
                        execute(myself, state, follow);
                    }
                    return;
                }
            }
            Output::CommitRound(commit) => {
                let Some(store) = &state.store else { continue };
                // The one place the actor waits for the disk: nothing of the
                // next round may leave before this round is durable.
                let started = Instant::now();
                match store.commit(&commit) {
                    Ok(()) => {
                        debug!(
                            task = %commit.task,
                            round = commit.checkpoint.round,
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "round committed"
                        );
                        crash_point("coordinator::round_committed");
                    }
                    Err(reason) => {
                        tracing::error!(task = %commit.task, round = commit.checkpoint.round, "cannot commit the round: {reason}");
                        // What followed the commit must not happen.
                        drop(outputs);
                        let input = Input::CommitFailed {
                            task: commit.task.clone(),
                            reason: format!(
                                "cannot commit round {} to the store: {reason}",
                                commit.checkpoint.round
                            ),
                        };
                        let follow = state.core.handle(state.started.elapsed(), input);
                        execute(myself, state, follow);
                        return;
                    }
                }
            }
            Output::Publish(event) => {
                log(&event);
                state.events.publish(event);
            }
        }
    }
}

/// The coordinator's log: one line per decision worth an operator's eye.
/// Payloads are never logged.
fn log(event: &FederationEvent) {
    use FederationEvent as E;
    match event {
        E::RunStarted {
            run_id,
            tasks,
            resumed_after,
            ..
        } if !resumed_after.is_empty() => {
            info!(run = %run_id, tasks = ?tasks, after = ?resumed_after, "run resumed after its last committed round")
        }
        E::RunStarted { run_id, tasks, .. } => info!(run = %run_id, tasks = ?tasks, "run started"),
        E::HospitalJoined {
            task,
            hospital,
            kind,
            samples,
            attack,
            ..
        } => match attack {
            Some(attack) => warn!(
                hospital = %hospital, task = %task, kind = %kind, samples, attack = %attack,
                "hospital joined, declaring that it simulates an attack (robustness evaluation)"
            ),
            None => info!(hospital = %hospital, task = %task, kind = %kind, samples, "hospital joined"),
        },
        E::HospitalLeft {
            task,
            hospital,
            reason,
        } => {
            warn!(hospital = %hospital, task = %task, "hospital departed: {reason}")
        }
        E::HospitalRefused {
            task,
            hospital,
            reason,
        } => {
            warn!(hospital = %hospital, task = %task, "join refused: {reason}")
        }
        E::PhaseChanged { task, phase } => debug!(task = %task, phase = phase.name(), "phase changed"),
        E::UpdateRejected {
            task,
            round,
            hospital,
            reason,
        } => warn!(task = %task, hospital = %hospital, round, "update rejected: {reason}"),
        E::UpdateDeclined {
            task,
            round,
            hospital,
            reason,
        } => info!(task = %task, hospital = %hospital, round, "hospital declined: {reason}"),
        E::MessageDropped {
            task,
            hospital,
            reason,
        } => {
            debug!(task = %task, hospital = %hospital, ?reason, "message dropped")
        }
        E::RoundBelowQuorum {
            task,
            round,
            attempt,
            accepted,
            needed,
        } => warn!(task = %task, round, attempt, accepted, needed, "attempt ended below quorum"),
        // The one INFO line per round.
        E::RoundAggregated {
            task,
            round,
            participants,
            metrics,
            seconds,
        } => info!(
            task = %task, round, participants, accuracy = metrics.accuracy, loss = metrics.loss, seconds,
            "round aggregated"
        ),
        E::StartingWithout {
            task,
            joined,
            expected,
            missing,
        } => warn!(
            task = %task,
            expected,
            joined = joined.len(),
            "not every expected hospital joined in time: starting with {} of {expected}; missing: {}",
            joined.len(),
            if missing.is_empty() {
                format!("{} (they join under other names)", expected.saturating_sub(joined.len()))
            } else {
                missing.join(", ")
            }
        ),
        E::TaskFinished { task, rounds } => info!(task = %task, rounds, "task finished"),
        E::TaskStopped { task, rounds } => info!(task = %task, rounds, "task stopped by the operator"),
        E::TaskAborted { task, reason } => warn!(task = %task, "task aborted: {reason}"),
        E::RunEnded { run_id, outcome } => info!(run = %run_id, outcome = outcome.name(), "run ended"),
        E::RoundStarted {
            task, round, attempt, ..
        } => debug!(task = %task, round, attempt, "round started"),
        E::UpdateAccepted { .. } | E::HospitalEvaluated { .. } => {}
    }
}
