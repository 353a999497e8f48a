//! The composition root of `run`, `serve` and `coordinator`: it builds the
//! event bus and the recordings its observers drain, the coordinator for
//! the prepared tasks (see `tasks`), and either the in-process hospitals or
//! the cluster node and gateway that remote hospitals connect to; it shuts
//! all of it down in order, flushing the observers first; and it drives a
//! run to its end for `medfed run`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc::UnboundedReceiver;

use medfed_actors::cluster::gateway::farewell;
use medfed_actors::cluster::{node, Envelope, Gateway, GatewayArgs, NodeOptions, SessionEvent, WireStats};
use medfed_actors::coordinator::fsm::FsmConfig;
use medfed_actors::coordinator::{Protocol, ResumePoint, RoundStore, Scaling, SecureSettings};
use medfed_actors::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, EventBus, FederationEvent, Hospital, HospitalArgs,
    Recording, RunReport, RunRequest, StartRefused, TaskSetup,
};
use medfed_models::aggregate::UpdateCheck;
use medfed_models::attack::Attack;
use medfed_models::checkpoint::Checkpoint;
use medfed_models::learner::TrainPlan;

use crate::config::Loaded;
use crate::durability::Persistence;
use crate::hospital_learner::{self, Ledgers, Site};
use crate::output::TaskContext;
use crate::shutdown::{RunEnd, ShutdownSignal};
use crate::store::{record_events, RunFacts};
use crate::tasks::PreparedTask;

/// The recording the store's observer drains.
const STORE_RECORDER: &str = "store";

pub fn task_setup(loaded: &Loaded, task: &PreparedTask) -> Result<TaskSetup> {
    let c = &task.config;
    let fed = &loaded.config.federation;
    let scaling = task.scaling(loaded)?;
    let strategy = c.strategy.build(c.hospitals);
    let quorum = c.effective_min_hospitals();
    if strategy.min_updates() > quorum {
        tracing::warn!(
            task = %task.name,
            "strategy {} needs at least {} updates a round to keep its guarantee: the quorum of {quorum} is \
             raised to {}, so a round with fewer (a hospital missing, or an update refused at intake) is retried, then aborts",
            strategy.name(),
            strategy.min_updates(),
            strategy.min_updates()
        );
    }
    let secure = c.secure().map(|sa| SecureSettings {
        num_shares: sa.num_shares,
        threshold: sa.threshold,
        clipping_range: sa.clipping_range,
        quantization_bits: sa.quantization_bits,
        // Every hospital's count must fit: by default the task's training rows.
        max_weight: sa.max_weight.unwrap_or(task.sizes().0 as u64),
        min_inputs: quorum.max(3),
        max_update_norm: c.max_update_norm,
    });
    Ok(TaskSetup {
        name: task.name.clone(),
        fsm: FsmConfig {
            rounds: c.effective_rounds(&loaded.config.run),
            expected_hospitals: c.hospitals,
            assemble_timeout: Duration::from_secs_f64(fed.assemble_timeout_secs),
            protocol: (if secure.is_some() {
                Protocol::secure
            } else {
                Protocol::federated
            })(
                matches!(scaling, Scaling::Federated),
                c.effective_min_hospitals(),
                fed.max_round_retries,
                Duration::from_secs_f64(fed.round_timeout_secs),
            ),
        },
        plan: TrainPlan {
            round: 0,
            attempt: 0,
            local_epochs: c.training.local_epochs,
            batch_size: c.training.batch_size,
            learning_rate: c.training.learning_rate,
            l2: c.training.l2,
            seed: loaded.config.run.seed,
            proximal_mu: 0.0,
            privacy: None,
        },
        check: UpdateCheck {
            max_norm: c.max_update_norm,
            max_examples: c.max_examples_per_hospital,
        },
        max_hospitals: c.max_hospitals,
        evaluator: task.evaluator(loaded.config.run.seed)?,
        strategy,
        scaling,
        checkpoint_dir: loaded
            .config
            .run
            .checkpoint_dir
            .as_ref()
            .map(|dir| loaded.resolve(dir).join(&task.name)),
        held_out: Some(task.held_out_fingerprint()),
        features: task.data.feature_names(),
        expected_names: (0..task.hospital_count())
            .map(|i| task.hospital_name(i))
            .collect(),
        secure,
    })
}

pub struct RunResult {
    pub report: RunReport,
    /// Each task's final global model.
    pub models: BTreeMap<String, Checkpoint>,
    pub wall_seconds: f64,
    pub end: RunEnd,
}

/// Where a federation's hospitals run.
pub enum Hospitals {
    /// One hospital actor per shard, in this process (`run`, `serve`),
    /// keeping its privacy ledger where `Ledgers` says.
    InProcess(Ledgers),
    /// In their own processes (`medfed hospital`), connecting to this
    /// process's cluster node; its traffic is counted in `stats`.
    Remote {
        node: Box<NodeOptions>,
        tasks: Vec<String>,
        stats: Arc<WireStats>,
    },
}

/// How long a coordinator waits after telling its hospitals it is leaving.
const FAREWELL_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// A running federation: the coordinator, its in-process hospitals or its
/// cluster node, the event bus and the observers recording it.
pub struct Federation {
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub events: EventBus,
    /// Made before anything could publish; each taken once by its observer.
    recordings: BTreeMap<String, Recording>,
    hospitals: Vec<ActorRef<medfed_actors::ToHospital>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    observers: Vec<tokio::task::JoinHandle<()>>,
    node: Option<node::Node>,
    gateway: Option<(ActorRef<Envelope>, tokio::task::JoinHandle<()>)>,
    /// The cluster node's session events, until the command takes them.
    pub sessions: Option<UnboundedReceiver<SessionEvent>>,
    /// Cluster mode: the wire counters and the tasks served (for the
    /// farewell at shutdown).
    wire_stats: Option<Arc<WireStats>>,
    cluster_tasks: Vec<String>,
}

impl Federation {
    /// Build the federation of `tasks`, with a recording for each name in
    /// `recorders`, made before the coordinator starts so that every event
    /// (the hospitals' joins first) reaches them.
    ///
    /// With `persistence`, the coordinator commits every closed round into
    /// its store and a "store" recording is made too (`record_into_store`).
    pub async fn spawn(
        loaded: &Loaded,
        tasks: &[PreparedTask],
        hospitals_at: Hospitals,
        recorders: &[&str],
        persistence: Option<&Persistence>,
    ) -> Result<Federation> {
        let events = EventBus::default();
        let mut recordings: BTreeMap<String, Recording> = recorders
            .iter()
            .map(|name| (name.to_string(), events.record(name)))
            .collect();
        if persistence.is_some() {
            recordings.insert(STORE_RECORDER.into(), events.record(STORE_RECORDER));
        }
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
                store: persistence.map(|p| p.round_store() as Arc<dyn RoundStore>),
                denied: loaded.config.cluster.deny.clone(),
            },
        )
        .await
        .context("starting the coordinator")?;
        let mut federation = Federation {
            coordinator,
            events,
            recordings,
            hospitals: Vec::new(),
            handles: vec![handle],
            observers: Vec::new(),
            node: None,
            gateway: None,
            sessions: None,
            wire_stats: None,
            cluster_tasks: Vec::new(),
        };
        let built = match hospitals_at {
            Hospitals::InProcess(ledgers) => federation.spawn_hospitals(loaded, tasks, &ledgers).await,
            Hospitals::Remote { node, tasks, stats } => federation.listen(*node, tasks, stats).await,
        };
        if let Err(e) = built {
            federation.shutdown().await;
            return Err(e);
        }
        Ok(federation)
    }

    async fn spawn_hospitals(
        &mut self,
        loaded: &Loaded,
        tasks: &[PreparedTask],
        ledgers: &Ledgers,
    ) -> Result<()> {
        let all_names: BTreeSet<String> = tasks
            .iter()
            .flat_map(|t| (0..t.hospital_count()).map(|i| t.hospital_name(i)))
            .collect();
        if let Some(unknown) = loaded
            .config
            .privacy
            .hospitals
            .keys()
            .find(|n| !all_names.contains(*n))
        {
            bail!(
                "privacy.hospitals.{unknown}: no such hospital (hospitals: {})",
                all_names.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        for task in tasks {
            let rounds = task.config.effective_rounds(&loaded.config.run);
            for i in 0..task.hospital_count() {
                let name = task.hospital_name(i);
                let site = task.site(i).context("shard index within the hospital count")?;
                let built = hospital_learner::build(
                    loaded,
                    &name,
                    &task.name,
                    site,
                    rounds,
                    Site::InProcess,
                    ledgers,
                )?;
                let local_test = task.local_test(i, loaded.config.run.seed)?;
                let attack = task
                    .config
                    .attack
                    .get(&name)
                    .map(|spec| Attack::parse(spec))
                    .transpose()
                    .with_context(|| format!("tasks.{}.attack.{name}", task.name))?;
                let (hospital, handle) = Actor::spawn(
                    None,
                    Hospital,
                    HospitalArgs {
                        secagg_identity: None,
                        crash_at: None,
                        secure_policy: medfed_actors::SecurePolicy {
                            enabled: task.config.secure().is_some(),
                            required: loaded.config.privacy.require_secure_aggregation,
                        },
                        name: name.clone(),
                        task: task.name.clone(),
                        kind: task.config.kind.name().to_string(),
                        learner: built.learner,
                        coordinator: self.coordinator.clone(),
                        local_test,
                        held_out: None,
                        features: task.data.feature_names(),
                        attack,
                        site_record: false,
                        observer: None,
                    },
                )
                .await
                .with_context(|| format!("starting hospital {name}"))?;
                self.hospitals.push(hospital);
                self.handles.push(handle);
            }
        }
        Ok(())
    }

    /// Start the cluster node and the gateway that binds each remote
    /// hospital to the coordinator.
    async fn listen(
        &mut self,
        options: NodeOptions,
        tasks: Vec<String>,
        stats: Arc<WireStats>,
    ) -> Result<()> {
        let (node, sessions) = node::start(options).await?;
        self.wire_stats = Some(stats.clone());
        self.cluster_tasks = tasks.clone();
        let gateway = Actor::spawn(
            None,
            Gateway,
            GatewayArgs {
                coordinator: self.coordinator.clone(),
                tasks,
                stats,
                nodes: node.directory.clone(),
            },
        )
        .await
        .context("starting the cluster gateway");
        self.node = Some(node);
        self.sessions = Some(sessions);
        self.gateway = Some(gateway?);
        Ok(())
    }

    /// The recording made for `name` at spawn (each can be taken once).
    pub fn recording(&mut self, name: &str) -> Result<Recording> {
        self.recordings
            .remove(name)
            .with_context(|| format!("no recording '{name}' was made for this federation"))
    }

    /// Record every event, run and registered model into the store (the
    /// federation must have been spawned with it).
    pub fn record_into_store(
        &mut self,
        persistence: &Persistence,
        contexts: BTreeMap<String, TaskContext>,
    ) -> Result<()> {
        let events = self.recording(STORE_RECORDER)?;
        let facts = RunFacts {
            fingerprint: persistence.fingerprint.clone(),
            contexts,
        };
        let handle = tokio::spawn(record_events(
            persistence.store.clone(),
            events,
            self.client(),
            facts,
        ));
        self.add_observer(handle);
        Ok(())
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

    /// Shut down in order: the bus closes and the observers handle every
    /// event published before (they may still ask the coordinator for a
    /// run's report); cluster hospitals are told it is a normal shutdown;
    /// then the coordinator stops, so that hospitals leaving afterwards are
    /// not reported as departures; then the gateway and the cluster node;
    /// then in-process hospitals (killed: one may be in a long epoch).
    pub async fn shutdown(self) {
        self.events.close();
        for observer in self.observers {
            let _ = observer.await;
        }
        // Cluster hospitals are told this is a normal shutdown, then the
        // coordinator stops before their sessions close (their leaving is
        // then no departure), then the gateway and the node.
        if let Some(stats) = &self.wire_stats {
            let told = farewell(&self.cluster_tasks, stats);
            tracing::info!(
                hospitals = told,
                "told the hospital nodes this coordinator is shutting down"
            );
            // Their links handle a departure before a queued message
            // (supervision first): give the farewell time to arrive.
            if told > 0 {
                tokio::time::sleep(FAREWELL_GRACE).await;
            }
        }
        let mut handles = self.handles.into_iter();
        self.coordinator.stop(None);
        if let Some(coordinator) = handles.next() {
            let _ = coordinator.await;
        }
        if let Some((gateway, handle)) = self.gateway {
            gateway.stop(None);
            let _ = handle.await;
        }
        if let Some(node) = &self.node {
            node.stop();
        }
        for h in &self.hospitals {
            h.kill();
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

    /// Carry on an interrupted run; the inner error says why it could not.
    pub async fn resume(&self, point: ResumePoint) -> Result<Result<String, StartRefused>> {
        ractor::call!(self.coordinator, |reply| CoordinatorMsg::ResumeRun {
            point: Box::new(point),
            reply
        })
        .context("coordinator did not answer the resume request")
    }

    /// Stop the active run; returns its id (`None`: no run was active).
    /// Its `RunEnded` has been published when this returns.
    pub async fn stop(&self) -> Result<Option<String>> {
        ractor::call!(self.coordinator, CoordinatorMsg::Stop)
            .context("coordinator did not answer the stop request")
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
/// With `durable` (the store and the tasks' output contexts), every round
/// is committed, the run and its models are recorded, and an interrupted
/// run in that store is resumed instead of a new one started.
///
/// `exclude` names hospitals the run must not use (site withdrawal).
pub async fn run_to_end(
    loaded: &Loaded,
    tasks: &[PreparedTask],
    exclude: &[String],
    durable: Option<(&Persistence, &BTreeMap<String, TaskContext>)>,
    shutdown: ShutdownSignal,
    on_event: impl FnMut(&FederationEvent),
) -> Result<RunResult> {
    let started = Instant::now();
    let ledgers = Ledgers::for_simulation(loaded);
    let persistence = durable.map(|(p, _)| p);
    if let Some(p) = persistence {
        let private = loaded.config.privacy.mode != crate::config::PrivacyMode::Off;
        if private && ledgers == Ledgers::Simulation && p.store.interrupted()?.is_some() {
            bail!(
                "the store's interrupted run cannot be resumed with differential privacy and in-memory \
                 ledgers: every hospital would start again from a full budget. Set privacy.ledger_dir, or \
                 give the run up with --abandon-run"
            );
        }
    }
    let tracker = crate::mlflow::tracker(loaded)?;
    let mut federation = Federation::spawn(
        loaded,
        tasks,
        Hospitals::InProcess(ledgers),
        &crate::mlflow::recordings(&["run"], tracker.as_ref()),
        persistence,
    )
    .await?;
    if let Some((p, contexts)) = durable {
        federation.record_into_store(p, contexts.clone())?;
    }
    if let Some(tracker) = tracker {
        let inputs = crate::mlflow::inputs(tasks, true);
        crate::mlflow::follow(tracker, &mut federation, &loaded.config, inputs)?;
    }
    let events = federation.recording("run")?;
    let outcome = drive(
        &federation.client(),
        tasks,
        exclude,
        persistence,
        events,
        shutdown,
        on_event,
    )
    .await;
    federation.shutdown().await;
    let (report, models, end) = outcome?;
    Ok(RunResult {
        report,
        models,
        wall_seconds: started.elapsed().as_secs_f64(),
        end,
    })
}

type Driven = (RunReport, BTreeMap<String, Checkpoint>, RunEnd);

async fn drive(
    client: &CoordinatorClient,
    tasks: &[PreparedTask],
    exclude: &[String],
    persistence: Option<&Persistence>,
    mut events: Recording,
    mut shutdown: ShutdownSignal,
    mut on_event: impl FnMut(&FederationEvent),
) -> Result<Driven> {
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let resumed = match persistence {
        Some(p) => p.resume(client, Some(exclude)).await?,
        None => None,
    };
    if resumed.is_none() {
        client
            .start(RunRequest {
                rounds: None,
                tasks: Some(names),
                exclude: exclude.to_vec(),
                settings: Default::default(),
            })
            .await?;
    }
    let mut stop_sent = false;
    let end = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    on_event(&event);
                    if let FederationEvent::RunEnded { outcome, .. } = event {
                        break RunEnd::from(outcome);
                    }
                }
                None => bail!("the coordinator stopped before the run ended"),
            },
            signal = shutdown.received(), if !stop_sent => {
                eprintln!("stopping the run ({signal})...");
                // Its RunEnded is already on its way to `events`.
                client.stop().await?;
                stop_sent = true;
            }
        }
    };
    let report = client.report().await?;
    let mut models = BTreeMap::new();
    for task in tasks {
        models.insert(task.name.clone(), client.model(&task.name).await?);
    }
    Ok((report, models, end))
}
