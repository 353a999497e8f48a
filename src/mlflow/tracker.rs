//! The tracker: follows a federation's recording (every event, in order),
//! turns events into MLflow calls (`ops`) and sends them from a queue of
//! its own. A slow or absent MLflow never holds a federation up: calls wait
//! in the bounded queue and are retried with backoff; past the queue's
//! limit the oldest metrics are dropped; at shutdown what cannot be sent
//! within the flush time is dropped. Every drop and error is counted and
//! logged (without payloads).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use medfed_actors::{FederationEvent, Recording};

use super::batch::{Metric, Tag};
use super::client::{Client, DatasetInput, MlflowError};
use super::ops::{ops_for, tag, Op, Queue};
use crate::federation::CoordinatorClient;

/// What the tracker did, for `/metrics` and the logs.
#[derive(Debug, Default)]
pub struct TrackerStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
    /// medfed run -> task -> its MLflow run's page (the panel links them).
    pub links: Mutex<std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>>,
}

/// Per task, the params of a run (the configuration and the run's settings).
pub type ParamsOf = Arc<super::ops::ParamsFn>;

pub struct Tracker {
    pub client: Client,
    pub experiment: String,
    /// Each task's final model is registered as `<prefix><task>`.
    pub model_prefix: String,
    pub queue_limit: usize,
    /// How long a shutdown waits for the queue to drain.
    pub flush: Duration,
    /// Per task, the datasets its runs use (digests only).
    pub inputs: Arc<std::collections::BTreeMap<String, Vec<DatasetInput>>>,
    /// Tags every run gets (the coordinator, the configuration's fingerprint).
    pub run_tags: Vec<Tag>,
    pub stats: Arc<TrackerStats>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Told once, when the bus closed: a backoff pause ends then.
    closing: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Tracker {
    /// Follow `events` until the bus closes, then flush (at most `flush`).
    /// `coordinator`: where a finished task's report and model come from.
    pub async fn follow(self, mut events: Recording, params: ParamsOf, coordinator: CoordinatorClient) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(self.queue_limit)),
            wake: Notify::new(),
            closing: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let stats = self.stats.clone();
        let intake = {
            let shared = shared.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut medfed_run = String::new();
                while let Some(event) = events.recv().await {
                    if let FederationEvent::RunStarted { run_id, .. } = &event {
                        medfed_run = run_id.clone();
                    }
                    let mut ops = Vec::new();
                    // Before the run ends: its federated metrics and its model.
                    if let FederationEvent::TaskFinished { task, .. }
                    | FederationEvent::TaskStopped { task, .. }
                    | FederationEvent::TaskAborted { task, .. } = &event
                    {
                        ops.extend(final_ops(&coordinator, task, &medfed_run).await);
                    }
                    ops.extend(ops_for(&event, crate::clock::now_ms(), params.as_ref()));
                    if ops.is_empty() {
                        continue;
                    }
                    if let Ok(mut q) = shared.queue.lock() {
                        let before = q.dropped;
                        for op in ops {
                            q.push(op);
                        }
                        if q.dropped > before {
                            stats.dropped.fetch_add(q.dropped - before, Ordering::Relaxed);
                            tracing::warn!(
                                dropped = q.dropped,
                                "MLflow is behind: the oldest queued metrics were dropped"
                            );
                        }
                        stats.queued.store(q.len() as u64, Ordering::Relaxed);
                    }
                    shared.wake.notify_one();
                }
                shared.closed.store(true, Ordering::SeqCst);
                shared.wake.notify_one();
                shared.closing.notify_one();
            })
        };
        self.send(shared).await;
        let _ = intake.await;
    }

    /// Send queued calls in order until the intake closed and the queue is
    /// empty (or the flush time ran out).
    async fn send(&self, shared: Arc<Shared>) {
        let mut sender = Sender {
            client: &self.client,
            experiment: &self.experiment,
            model_prefix: &self.model_prefix,
            inputs: &self.inputs,
            run_tags: &self.run_tags,
            stats: &self.stats,
            experiment_id: None,
            runs: HashMap::new(),
        };
        let mut pause = Duration::from_millis(250);
        let mut flush_deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = shared.queue.lock().ok().and_then(|q| q.next_call());
            let Some((op, stands_for)) = next else {
                if shared.closed.load(Ordering::SeqCst) {
                    return;
                }
                shared.wake.notified().await;
                continue;
            };
            if shared.closed.load(Ordering::SeqCst) {
                let deadline =
                    *flush_deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.flush);
                if tokio::time::Instant::now() >= deadline {
                    let left = shared.queue.lock().map(|q| q.len()).unwrap_or(0) as u64;
                    self.stats.dropped.fetch_add(left, Ordering::Relaxed);
                    tracing::warn!(
                        calls = left,
                        "MLflow did not take the last calls before shutdown; they were dropped"
                    );
                    return;
                }
            }
            match sender.execute(&op).await {
                // Shutting down with MLflow away: waiting would only make the
                // process slower than one without MLflow.
                Err(e) if e.is_transient() && shared.closed.load(Ordering::SeqCst) => {
                    let left = shared.queue.lock().map(|q| q.len()).unwrap_or(0) as u64;
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.dropped.fetch_add(left, Ordering::Relaxed);
                    tracing::warn!(
                        calls = left,
                        "{e}; MLflow is away at shutdown: its last calls were dropped"
                    );
                    return;
                }
                Err(e) if e.is_transient() => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("{e}; MLflow calls wait in the queue, next try in {pause:?}");
                    // A shutdown meanwhile ends the pause: the next failure drops.
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shared.closing.notified() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("{e}; this MLflow call is dropped");
                }
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    pause = Duration::from_millis(250);
                }
            }
            if let Ok(mut q) = shared.queue.lock() {
                q.done(stands_for);
                self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// A finished task's federated metrics (from the coordinator's report) and
/// its final model; nothing when the coordinator cannot say.
async fn final_ops(coordinator: &CoordinatorClient, task: &str, medfed_run: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    let report = match coordinator.report().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(task, "no report for MLflow: {e:#}");
            return ops;
        }
    };
    let Some(t) = report.tasks.get(task) else {
        return ops;
    };
    let now = crate::clock::now_ms();
    let mut metrics = Vec::new();
    for r in &t.rounds {
        if let Some(p) = &r.federated.pooled {
            for (key, value) in [
                ("federated.accuracy", p.accuracy),
                ("federated.precision", p.precision),
                ("federated.recall", p.recall),
                ("federated.f1", p.f1),
                ("federated.loss", p.loss),
            ] {
                metrics.push(Metric {
                    key: key.into(),
                    value,
                    timestamp: now,
                    step: i64::from(r.round),
                });
            }
        }
    }
    if !metrics.is_empty() {
        ops.push(Op::Log {
            task: task.to_string(),
            metrics,
        });
    }
    let Some(last) = t.rounds.last() else {
        return ops;
    };
    let model = coordinator.model(task).await.and_then(|c| Ok(c.to_bytes()?));
    match (model, serde_json::to_vec_pretty(t)) {
        (Ok(bytes), Ok(json)) => ops.push(Op::LogModel {
            task: task.to_string(),
            medfed_run: medfed_run.to_string(),
            round: last.round,
            accuracy: last.metrics.accuracy,
            safetensors: Arc::new(bytes),
            report: Arc::new(json),
        }),
        (Err(e), _) => tracing::warn!(task, "no model for MLflow: {e:#}"),
        (_, Err(e)) => tracing::warn!(task, "no report for MLflow: {e}"),
    }
    ops
}

/// What the sending side knows of MLflow: the experiment and each task's run.
struct Sender<'a> {
    client: &'a Client,
    experiment: &'a str,
    model_prefix: &'a str,
    inputs: &'a std::collections::BTreeMap<String, Vec<DatasetInput>>,
    run_tags: &'a [Tag],
    stats: &'a TrackerStats,
    experiment_id: Option<String>,
    /// (medfed run, task) -> MLflow run id, so that a retried start never
    /// makes a second MLflow run.
    runs: HashMap<(String, String), String>,
}

impl Sender<'_> {
    /// The MLflow run of `task` in the latest medfed run that started it
    /// (a start keeps one per task).
    fn current(&self, task: &str) -> Option<String> {
        self.runs
            .iter()
            .find(|((_, t), _)| t == task)
            .map(|(_, id)| id.clone())
    }

    async fn execute(&mut self, op: &Op) -> Result<(), MlflowError> {
        match op {
            Op::StartRun {
                task,
                medfed_run,
                params,
                tags,
            } => {
                let key = (medfed_run.clone(), task.clone());
                if !self.runs.contains_key(&key) {
                    let experiment_id = match &self.experiment_id {
                        Some(id) => id.clone(),
                        None => {
                            let id = self.client.experiment(self.experiment).await?;
                            self.experiment_id = Some(id.clone());
                            id
                        }
                    };
                    let name = format!("{medfed_run} {task}");
                    let all: Vec<Tag> = tags.iter().chain(self.run_tags).cloned().collect();
                    let run = self.client.create_run(&experiment_id, &name, &all).await?;
                    if let Ok(mut links) = self.stats.links.lock() {
                        links
                            .entry(medfed_run.clone())
                            .or_default()
                            .insert(task.clone(), self.client.run_page(&experiment_id, &run.run_id));
                    }
                    // Only the latest medfed run's MLflow run takes metrics.
                    self.runs.retain(|(_, t), _| t != task);
                    self.runs.insert(key.clone(), run.run_id);
                }
                let run_id = self.runs[&key].clone();
                self.client
                    .log(&run_id, Vec::new(), params.clone(), Vec::new())
                    .await?;
                match self.inputs.get(task) {
                    Some(datasets) if !datasets.is_empty() => self.client.log_inputs(&run_id, datasets).await,
                    _ => Ok(()),
                }
            }
            Op::Log { task, metrics } => match self.current(task) {
                Some(run_id) => {
                    self.client
                        .log(&run_id, metrics.clone(), Vec::new(), Vec::new())
                        .await
                }
                None => Ok(()),
            },
            Op::EndRun { task, status } => match self.current(task) {
                Some(run_id) => self.client.end_run(&run_id, *status).await,
                None => Ok(()),
            },
            Op::LogModel {
                task,
                medfed_run,
                round,
                accuracy,
                safetensors,
                report,
            } => {
                let (Some(run_id), Some(experiment_id)) = (self.current(task), self.experiment_id.clone())
                else {
                    return Ok(());
                };
                let lineage = [
                    tag("medfed.run_id", medfed_run),
                    tag("medfed.task", task),
                    tag("medfed.round", &round.to_string()),
                    tag("medfed.accuracy", &accuracy.to_string()),
                ];
                let model = self
                    .client
                    .create_logged_model(&experiment_id, task, &run_id, &lineage)
                    .await?;
                let mlmodel = mlmodel_file(&model.model_id, &run_id, task);
                self.client
                    .upload(&model.artifact_uri, "model.safetensors", safetensors)
                    .await?;
                self.client
                    .upload(&model.artifact_uri, "model-report.json", report)
                    .await?;
                self.client
                    .upload(&model.artifact_uri, "MLmodel", mlmodel.as_bytes())
                    .await?;
                self.client.finalize_logged_model(&model.model_id).await?;
                self.client
                    .log_outputs(&run_id, &model.model_id, i64::from(*round))
                    .await?;
                let name = format!("{}{task}", self.model_prefix);
                self.client.registered_model(&name).await?;
                let version = self
                    .client
                    .create_model_version(&name, &model.model_id, &run_id, &lineage)
                    .await?;
                // The best held-out accuracy so far is the champion.
                let best = self.client.alias_accuracy(&name, "champion").await?;
                if best.is_none_or(|b| *accuracy >= b) {
                    self.client.set_alias(&name, "champion", &version).await?;
                }
                Ok(())
            }
        }
    }
}

/// The `MLmodel` file that tells MLflow's tools what the model is: the
/// `medfed` flavor and its safetensors file.
fn mlmodel_file(model_id: &str, run_id: &str, task: &str) -> String {
    let created = chrono_like_now();
    format!(
        "artifact_path: model\nflavors:\n  medfed:\n    data: model.safetensors\n    format: safetensors\n    task: {task}\n    report: model-report.json\n    medfed_version: {}\nmodel_id: {model_id}\nmodel_uuid: {model_id}\nrun_id: {run_id}\nutc_time_created: '{created}'\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Now as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC), as MLflow writes it.
fn chrono_like_now() -> String {
    let now = crate::clock::since_epoch();
    let (year, month, day, hour, minute, second) = crate::clock::civil(now.as_secs() as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{:06}",
        now.subsec_micros()
    )
}
