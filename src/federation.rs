//! Builds a whole federation in one process from the configuration: loads
//! each task's data, holds out the test set, partitions the training rows
//! into hospitals, spawns the coordinator and hospital actors and drives a
//! run to its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ractor::{Actor, ActorRef};
use tokio::sync::broadcast::error::RecvError;

use medfed_actors::coordinator::fsm::FsmConfig;
use medfed_actors::coordinator::Scaling;
use medfed_actors::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, EventBus, FederationEvent, Hospital, HospitalArgs,
    RunReport, RunRequest, TaskSetup,
};
use medfed_models::aggregate::{FedAdam, FedAvg, UpdateCheck};
use medfed_models::data::csv::{load_csv, CsvSpec};
use medfed_models::data::{stratified_split, Dataset, MomentSums, Partition, Standardizer};
use medfed_models::learner::baseline::fit_centralized;
use medfed_models::learner::logistic::LogisticEvaluator;
use medfed_models::learner::{Evaluator, GlobalModel, TrainPlan};
use medfed_models::metrics::Metrics;
use medfed_models::privacy::bounds::FeatureBounds;

use crate::config::{DpScaling, Loaded, PartitionScheme, PrivacyMode, StrategyName, TaskConfig};
use crate::hospital_learner;

/// One task's data, split and partitioned, ready to be federated.
pub struct PreparedTask {
    pub name: String,
    pub config: TaskConfig,
    pub train: Dataset,
    pub held_out: Dataset,
    /// One dataset per hospital, partitioned from `train`.
    pub shards: Vec<Dataset>,
    /// Public per-feature bounds, when the config names them.
    pub bounds: Option<FeatureBounds>,
}

impl PreparedTask {
    pub fn hospital_name(&self, index: usize) -> String {
        format!("{}-{}", self.name, index + 1)
    }
}

pub fn partition_of(config: &TaskConfig) -> Partition {
    match config.partition.scheme {
        PartitionScheme::Iid => Partition::Iid,
        PartitionScheme::Sorted => Partition::Sorted {
            feature: config.partition.feature.clone().unwrap_or_default(),
        },
        PartitionScheme::Dirichlet => Partition::Dirichlet {
            alpha: config.partition.alpha,
        },
    }
}

pub fn prepare_task(loaded: &Loaded, name: &str) -> Result<PreparedTask> {
    let config = loaded
        .config
        .tasks
        .get(name)
        .with_context(|| format!("no task '{name}' in {}", loaded.source))?
        .clone();
    let seed = loaded.config.run.seed;
    let path = loaded.resolve(&config.data.path);
    let spec = CsvSpec {
        label_column: config.data.label_column.clone(),
        positive_class: config.data.positive_class.clone(),
    };
    let data = load_csv(&path, &spec).with_context(|| format!("task '{name}': loading its data"))?;
    let (train, held_out) = stratified_split(&data, config.data.test_fraction, seed)
        .with_context(|| format!("task '{name}': held-out split"))?;
    let shards = partition_of(&config)
        .split(&train, config.hospitals, seed)
        .with_context(|| format!("task '{name}': partitioning into {} hospitals", config.hospitals))?
        .iter()
        .map(|rows| train.select(rows))
        .collect();
    let bounds = match &config.data.feature_bounds {
        Some(path) => Some(
            FeatureBounds::load(&loaded.resolve(path), &data.feature_names)
                .with_context(|| format!("task '{name}'"))?,
        ),
        None => None,
    };
    Ok(PreparedTask {
        name: name.to_string(),
        config,
        train,
        held_out,
        shards,
        bounds,
    })
}

pub fn task_setup(loaded: &Loaded, task: &PreparedTask) -> Result<TaskSetup> {
    let c = &task.config;
    let fed = &loaded.config.federation;
    Ok(TaskSetup {
        name: task.name.clone(),
        fsm: FsmConfig {
            min_hospitals: c.effective_min_hospitals(),
            rounds: c.effective_rounds(&loaded.config.run),
            max_retries: fed.max_round_retries,
            round_timeout: Duration::from_secs_f64(fed.round_timeout_secs),
            assemble_timeout: Duration::from_secs_f64(fed.assemble_timeout_secs),
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
        evaluator: Box::new(LogisticEvaluator::new(task.held_out.clone())?),
        strategy: match c.strategy {
            StrategyName::Fedavg => Box::new(FedAvg),
            StrategyName::Fedadam => Box::new(FedAdam::new(c.fedadam)),
        },
        scaling: scaling_of(loaded, task)?,
    })
}

/// Exact federated standardisation without DP; under DP either the public
/// bounds (no budget) or noised statistics (charged at each hospital).
fn scaling_of(loaded: &Loaded, task: &PreparedTask) -> Result<Scaling> {
    let privacy = &loaded.config.privacy;
    if privacy.mode == PrivacyMode::Off || privacy.scaling == DpScaling::DpStats {
        return Ok(Scaling::Federated);
    }
    let bounds = task
        .bounds
        .as_ref()
        .with_context(|| format!("task '{}': differential privacy needs feature bounds", task.name))?;
    Ok(Scaling::Fixed(Arc::new(bounds.standardizer())))
}

/// The same model trained centrally on all training rows (linfa L-BFGS),
/// evaluated on the same held-out set. For comparison only: it pools data.
pub fn centralized_baseline(task: &PreparedTask) -> Result<Metrics> {
    let scaler = Arc::new(Standardizer::from_sums(&MomentSums::of(&task.train.features))?);
    let z = scaler.apply(&task.train.features)?;
    let params = fit_centralized(&z, &task.train.labels, task.config.training.baseline_alpha, 500)
        .with_context(|| format!("task '{}'", task.name))?;
    let mut evaluator = LogisticEvaluator::new(task.held_out.clone())?;
    Ok(evaluator.evaluate(&GlobalModel {
        params: Arc::new(params),
        standardizer: Some(scaler),
    })?)
}

pub struct RunOutcome {
    pub report: RunReport,
    pub wall_seconds: f64,
    pub aborted: bool,
}

/// A running in-process federation: the coordinator and its hospitals.
pub struct Federation {
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub events: EventBus,
    hospitals: Vec<ActorRef<medfed_actors::HospitalMsg>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Federation {
    /// Spawn the coordinator for `tasks` and one hospital per shard.
    pub async fn spawn(loaded: &Loaded, tasks: &[PreparedTask]) -> Result<Federation> {
        let events = EventBus::default();
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
        let require_private = loaded.config.privacy.mode != PrivacyMode::Off;
        let all_names: Vec<String> = tasks
            .iter()
            .flat_map(|t| (0..t.shards.len()).map(|i| t.hospital_name(i)))
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
            for (i, shard) in task.shards.iter().enumerate() {
                let name = task.hospital_name(i);
                let dataset = format!(
                    "{}-{}-shard{}of{}-seed{}",
                    task.name,
                    task.config.partition.scheme_name(),
                    i + 1,
                    task.shards.len(),
                    loaded.config.run.seed
                );
                let built = hospital_learner::build(
                    loaded,
                    &name,
                    &dataset,
                    shard.clone(),
                    task.bounds.as_ref(),
                    rounds,
                    "in-process",
                )?;
                let (hospital, handle) = Actor::spawn(
                    None,
                    Hospital,
                    HospitalArgs {
                        name: name.clone(),
                        task: task.name.clone(),
                        kind: task.config.kind.name().to_string(),
                        learner: built.learner,
                        coordinator: coordinator.clone(),
                        require_private,
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

    pub async fn start(&self, request: RunRequest) -> Result<String> {
        let reply = ractor::call!(self.coordinator, |reply| CoordinatorMsg::StartRun {
            request,
            reply
        })
        .context("coordinator did not answer the start request")?;
        reply.map_err(anyhow::Error::msg)
    }

    pub async fn report(&self) -> Result<RunReport> {
        ractor::call!(self.coordinator, CoordinatorMsg::Report)
            .context("coordinator did not answer the report request")
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

/// Run one federation of `tasks` to its end. Every event goes to `on_event`;
/// Ctrl-C stops the run cleanly (it ends as aborted, with what it has).
pub async fn run_to_end(
    loaded: &Loaded,
    tasks: &[PreparedTask],
    rounds: Option<u32>,
    mut on_event: impl FnMut(&FederationEvent),
) -> Result<RunOutcome> {
    let started = Instant::now();
    let federation = Federation::spawn(loaded, tasks).await?;
    let mut events = federation.events.subscribe();
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    federation
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
                federation.coordinator.cast(CoordinatorMsg::Stop)?;
                stop_sent = true;
            }
        }
    };
    let report = federation.report().await?;
    federation.shutdown().await;
    Ok(RunOutcome {
        report,
        wall_seconds: started.elapsed().as_secs_f64(),
        aborted,
    })
}
