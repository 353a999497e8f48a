//! Builds a whole federation in one process from prepared tasks (see
//! `tasks`): spawns the coordinator and hospital actors and drives a run to
//! its end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ractor::{Actor, ActorRef};
use tokio::sync::broadcast::error::RecvError;

use medfed_actors::coordinator::fsm::FsmConfig;
use medfed_actors::coordinator::{Protocol, Scaling};
use medfed_actors::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, EventBus, FederationEvent, Hospital, HospitalArgs,
    RunReport, RunRequest, StartRefused, TaskSetup,
};
use medfed_models::aggregate::{FedAdam, FedAvg, UpdateCheck};
use medfed_models::checkpoint::Checkpoint;
use medfed_models::learner::TrainPlan;

use crate::config::{Loaded, StrategyName};
use crate::hospital_learner::{self, Site};
use crate::tasks::PreparedTask;

pub fn task_setup(loaded: &Loaded, task: &PreparedTask) -> Result<TaskSetup> {
    let c = &task.config;
    let fed = &loaded.config.federation;
    let scaling = task.scaling(loaded)?;
    Ok(TaskSetup {
        name: task.name.clone(),
        fsm: FsmConfig {
            rounds: c.effective_rounds(&loaded.config.run),
            expected_hospitals: c.hospitals,
            assemble_timeout: Duration::from_secs_f64(fed.assemble_timeout_secs),
            protocol: Protocol::federated(
                matches!(scaling, Scaling::Federated),
                c.effective_min_hospitals(),
                fed.max_round_retries,
                Duration::from_secs_f64(fed.round_timeout_secs),
            ),
        },
        plan: TrainPlan {
            round: 0,
            local_epochs: c.training.local_epochs,
            batch_size: c.training.batch_size,
            learning_rate: c.training.learning_rate,
            l2: c.training.l2,
            seed: loaded.config.run.seed,
        },
        check: UpdateCheck {
            max_norm: c.max_update_norm,
        },
        evaluator: task.evaluator(loaded.config.run.seed)?,
        strategy: match c.strategy {
            StrategyName::Fedavg => Box::new(FedAvg),
            StrategyName::Fedadam => Box::new(FedAdam::new(c.fedadam)),
        },
        scaling,
        checkpoint_dir: loaded
            .config
            .run
            .checkpoint_dir
            .as_ref()
            .map(|dir| loaded.resolve(dir).join(&task.name)),
        held_out: Some(task.held_out_fingerprint()),
    })
}

pub struct RunOutcome {
    pub report: RunReport,
    /// Each task's final global model.
    pub models: BTreeMap<String, Checkpoint>,
    pub wall_seconds: f64,
    pub aborted: bool,
}

/// A running in-process federation: the coordinator and its hospitals.
pub struct Federation {
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub events: EventBus,
    hospitals: Vec<ActorRef<medfed_actors::ToHospital>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Federation {
    /// Spawn the coordinator for `tasks` and one hospital per shard,
    /// publishing on `events` (subscribe before, to see the joins).
    pub async fn spawn(loaded: &Loaded, tasks: &[PreparedTask], events: EventBus) -> Result<Federation> {
        let setups = tasks
            .iter()
            .map(|t| task_setup(loaded, t))
            .collect::<Result<Vec<_>>>()?;
        let (coordinator, handle) = Actor::spawn(
            None,
            Coordinator,
            CoordinatorArgs {
                tasks: setups,
                events: events.clone(),
            },
        )
        .await
        .context("starting the coordinator")?;
        let mut handles = vec![handle];
        let mut hospitals = Vec::new();
        let all_names: Vec<String> = tasks
            .iter()
            .flat_map(|t| (0..t.hospital_count()).map(|i| t.hospital_name(i)))
            .collect();
        if let Some(unknown) = loaded
            .config
            .privacy
            .hospitals
            .keys()
            .find(|n| !all_names.contains(n))
        {
            bail!(
                "privacy.hospitals.{unknown}: no such hospital (hospitals: {})",
                all_names.join(", ")
            );
        }
        for task in tasks {
            let rounds = task.config.effective_rounds(&loaded.config.run);
            for i in 0..task.hospital_count() {
                let name = task.hospital_name(i);
                let shard = task.shard(i).context("shard index within the hospital count")?;
                let built =
                    hospital_learner::build(loaded, &name, &task.name, shard, rounds, Site::InProcess)?;
                let local_test = task.local_test(i, loaded.config.run.seed)?;
                let (hospital, handle) = Actor::spawn(
                    None,
                    Hospital,
                    HospitalArgs {
                        name: name.clone(),
                        task: task.name.clone(),
                        kind: task.config.kind.name().to_string(),
                        learner: built.learner,
                        coordinator: coordinator.clone(),
                        local_test,
                        held_out: None,
                    },
                )
                .await
                .with_context(|| format!("starting hospital {name}"))?;
                hospitals.push(hospital);
                handles.push(handle);
            }
        }
        Ok(Federation {
            coordinator,
            events,
            hospitals,
            handles,
        })
    }

    /// A cheap, cloneable handle for talking to the coordinator.
    pub fn client(&self) -> CoordinatorClient {
        CoordinatorClient {
            coordinator: self.coordinator.clone(),
        }
    }

    /// Stop the coordinator first, so that hospitals stopping afterwards are
    /// not reported as departures.
    pub async fn shutdown(self) {
        let mut handles = self.handles.into_iter();
        self.coordinator.stop(None);
        if let Some(coordinator) = handles.next() {
            let _ = coordinator.await;
        }
        for h in &self.hospitals {
            h.stop(None);
        }
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// Requests to a running coordinator (shared by the CLI and web handlers).
#[derive(Clone)]
pub struct CoordinatorClient {
    coordinator: ActorRef<CoordinatorMsg>,
}

impl CoordinatorClient {
    pub fn new(coordinator: ActorRef<CoordinatorMsg>) -> Self {
        Self { coordinator }
    }

    /// Ask for a run; the inner error says why the coordinator refused.
    pub async fn try_start(&self, request: RunRequest) -> Result<Result<String, StartRefused>> {
        ractor::call!(self.coordinator, |reply| CoordinatorMsg::StartRun {
            request,
            reply
        })
        .context("coordinator did not answer the start request")
    }

    pub async fn start(&self, request: RunRequest) -> Result<String> {
        Ok(self.try_start(request).await??)
    }

    pub fn stop(&self) -> Result<()> {
        self.coordinator
            .cast(CoordinatorMsg::Stop)
            .context("the coordinator is not running")
    }

    pub async fn report(&self) -> Result<RunReport> {
        ractor::call!(self.coordinator, CoordinatorMsg::Report)
            .context("coordinator did not answer the report request")
    }

    /// The report once every task's last round has all its federated
    /// evaluations (they arrive after the round closes), or after `patience`.
    pub async fn settled_report(&self, patience: Duration) -> Result<RunReport> {
        let deadline = Instant::now() + patience;
        loop {
            let report = self.report().await?;
            let settled = report
                .tasks
                .values()
                .all(|t| t.rounds.last().is_none_or(|r| r.federated.complete()));
            if settled || Instant::now() >= deadline {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn model(&self, task: &str) -> Result<Checkpoint> {
        ractor::call!(self.coordinator, |reply| CoordinatorMsg::Model {
            task: task.to_string(),
            reply
        })
        .context("coordinator did not answer the model request")?
        .with_context(|| format!("the coordinator has no task '{task}'"))
    }
}

/// Run one federation of `tasks` to its end. Every event goes to `on_event`;
/// Ctrl-C stops the run cleanly (it ends as aborted, with what it has).
pub async fn run_to_end(
    loaded: &Loaded,
    tasks: &[PreparedTask],
    rounds: Option<u32>,
    mut on_event: impl FnMut(&FederationEvent),
) -> Result<RunOutcome> {
    let started = Instant::now();
    let bus = EventBus::default();
    let mut events = bus.subscribe();
    let federation = Federation::spawn(loaded, tasks, bus).await?;
    let client = federation.client();
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    client
        .start(RunRequest {
            rounds,
            tasks: Some(names),
        })
        .await?;
    let mut stop_sent = false;
    let aborted = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    on_event(&event);
                    if let FederationEvent::RunEnded { aborted, .. } = event {
                        break aborted;
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "progress display fell behind"),
                Err(RecvError::Closed) => bail!("the coordinator stopped before the run ended"),
            },
            _ = tokio::signal::ctrl_c(), if !stop_sent => {
                eprintln!("stopping the run (Ctrl-C)...");
                client.stop()?;
                stop_sent = true;
            }
        }
    };
    let report = client.settled_report(Duration::from_secs(30)).await?;
    let mut models = BTreeMap::new();
    for task in tasks {
        models.insert(task.name.clone(), client.model(&task.name).await?);
    }
    federation.shutdown().await;
    Ok(RunOutcome {
        report,
        models,
        wall_seconds: started.elapsed().as_secs_f64(),
        aborted,
    })
}
