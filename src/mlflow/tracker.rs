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

use medfed_actors::Recording;

use super::batch::Param;
use super::client::{Client, MlflowError};
use super::ops::{ops_for, Op, Queue};

/// What the tracker did, for `/metrics` and the logs.
#[derive(Debug, Default)]
pub struct TrackerStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

/// Per task, the params of a run (the configuration and the run's settings).
pub type ParamsOf = Arc<dyn Fn(&str) -> Vec<Param> + Send + Sync>;

pub struct Tracker {
    pub client: Client,
    pub experiment: String,
    pub queue_limit: usize,
    /// How long a shutdown waits for the queue to drain.
    pub flush: Duration,
    pub stats: Arc<TrackerStats>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    closed: std::sync::atomic::AtomicBool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Tracker {
    /// Follow `events` until the bus closes, then flush (at most `flush`).
    pub async fn follow(self, mut events: Recording, params: ParamsOf) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(self.queue_limit)),
            wake: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let stats = self.stats.clone();
        let intake = {
            let shared = shared.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let ops = ops_for(&event, now_ms(), params.as_ref());
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
            experiment_id: None,
            runs: HashMap::new(),
        };
        let mut pause = Duration::from_millis(250);
        let mut flush_deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = shared.queue.lock().ok().and_then(|q| q.front().cloned());
            let Some(op) = next else {
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
                Err(e) if e.is_transient() => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("{e}; MLflow calls wait in the queue, next try in {pause:?}");
                    tokio::time::sleep(pause).await;
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
                q.pop();
                self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// What the sending side knows of MLflow: the experiment and each task's run.
struct Sender<'a> {
    client: &'a Client,
    experiment: &'a str,
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
                    let run = self.client.create_run(&experiment_id, &name, tags).await?;
                    // Only the latest medfed run's MLflow run takes metrics.
                    self.runs.retain(|(_, t), _| t != task);
                    self.runs.insert(key.clone(), run.run_id);
                }
                let run_id = self.runs[&key].clone();
                self.client
                    .log(&run_id, Vec::new(), params.clone(), Vec::new())
                    .await
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
        }
    }
}
