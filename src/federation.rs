//! The composition root of `run`, `serve` and `coordinator`: builds the
//! coordinator for prepared tasks (see `tasks`), its in-process hospitals
//! when it has any, and the observers that record its events; shuts them
//! down in order, flushing the observers; and drives a run to its end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ractor::{Actor, ActorRef};

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
use crate::shutdown::{RunEnd, ShutdownSignal};
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
    pub end: RunEnd,
}

/// Where a federation's hospitals run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hospitals {
    /// One hospital actor per shard, in this process (`run`, `serve`).
    InProcess,
    /// In their own processes, connecting through the cluster gateway (`coordinator`).
    Remote,
}

/// A running federation: the coordinator, its in-process hospitals and the
/// observers recording its events.
pub struct Federation {
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub events: EventBus,
    hospitals: Vec<ActorRef<medfed_actors::ToHospital>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    observers: Vec<tokio::task::JoinHandle<()>>,
}

impl Federation {
    /// Spawn the coordinator for `tasks` and, for `Hospitals::InProcess`,
    /// one hospital per shard, publishing on `events` (record or subscribe
    /// before, to see the joins).
    pub async fn spawn(
        loaded: &Loaded,
        tasks: &[PreparedTask],
        events: EventBus,
        hospitals_at: Hospitals,
    ) -> Result<Federation> {
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
        if hospitals_at == Hospitals::Remote {
            return Ok(Federation {
                coordinator,
                events,
                hospitals,
                handles,
                observers: Vec::new(),
            });
        }
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
                let site = task.site(i).context("shard index within the hospital count")?;
                let built =
                    hospital_learner::build(loaded, &name, &task.name, site, rounds, Site::InProcess)?;
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
            observers: Vec::new(),
        })
    }

    /// Keep an observer's task (one draining a `Recording`), so that
    /// `shutdown` waits until it has handled every event.
    pub fn add_observer(&mut self, handle: tokio::task::JoinHandle<()>) {
        self.observers.push(handle);
    }

    /// A cheap, cloneable handle for talking to the coordinator.
    pub fn client(&self) -> CoordinatorClient {
        CoordinatorClient {
            coordinator: self.coordinator.clone(),
        }
    }

    /// Stop the coordinator first, so that hospitals stopping afterwards are
    /// not reported as departures; then the hospitals (killed: one may be in
    /// the middle of a long local training); then flush the observers.
    pub async fn shutdown(self) {
        let mut handles = self.handles.into_iter();
        self.coordinator.stop(None);
        if let Some(coordinator) = handles.next() {
            let _ = coordinator.await;
        }
        for h in &self.hospitals {
            h.kill();
        }
        for handle in handles {
            let _ = handle.await;
        }
        self.events.close_recordings();
        for observer in self.observers {
            let _ = observer.await;
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

    pub async fn model(&self, task: &str) -> Result<Checkpoint> {
        ractor::call!(self.coordinator, |reply| CoordinatorMsg::Model {
            task: task.to_string(),
            reply
        })
        .context("coordinator did not answer the model request")?
        .with_context(|| format!("the coordinator has no task '{task}'"))
    }
}

/// Run one federation of `tasks` in this process to its end. Every event
/// goes to `on_event`, in order. A `shutdown` signal stops the run cleanly:
/// it ends as stopped, with the rounds it completed.
pub async fn run_to_end(
    loaded: &Loaded,
    tasks: &[PreparedTask],
    mut shutdown: ShutdownSignal,
    mut on_event: impl FnMut(&FederationEvent),
) -> Result<RunOutcome> {
    let started = Instant::now();
    let bus = EventBus::default();
    let mut events = bus.record("run");
    let federation = Federation::spawn(loaded, tasks, bus, Hospitals::InProcess).await?;
    let client = federation.client();
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    client
        .start(RunRequest {
            rounds: None,
            tasks: Some(names),
        })
        .await?;
    let mut stop_sent = false;
    let end = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    on_event(&event);
                    if let FederationEvent::RunEnded { aborted, stopped, .. } = event {
                        break RunEnd::from_flags(aborted, stopped);
                    }
                }
                None => bail!("the coordinator stopped before the run ended"),
            },
            signal = shutdown.received(), if !stop_sent => {
                eprintln!("stopping the run ({signal})...");
                client.stop()?;
                stop_sent = true;
            }
        }
    };
    let report = client.report().await?;
    let mut models = BTreeMap::new();
    for task in tasks {
        models.insert(task.name.clone(), client.model(&task.name).await?);
    }
    federation.shutdown().await;
    Ok(RunOutcome {
        report,
        models,
        wall_seconds: started.elapsed().as_secs_f64(),
        end,
    })
}
