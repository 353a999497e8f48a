//! What the web server shares between requests, and the one task that
//! follows the event bus to keep the live view, metrics and run history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use medfed_actors::{EventBus, FederationEvent, Recording};

use super::live::LiveView;
use super::metrics::Metrics;
use crate::federation::CoordinatorClient;
use crate::output::{task_json, TaskContext, TaskJson};

/// Runs kept in memory (with their final models); older ones are dropped.
const MAX_RUNS: usize = 100;

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    /// running, finished or aborted.
    pub status: String,
    pub started_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<f64>,
    /// Rounds asked for (absent: each task's configured rounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    pub tasks: Vec<String>,
    /// Per task, the settings the run set instead of the configured ones.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, medfed_actors::TaskRunSettings>,
    /// Per task, the same shape as `medfed run --json`'s "tasks" (set when the run ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<BTreeMap<String, TaskJson>>,
    /// Final global models as safetensors, per task.
    #[serde(skip)]
    pub models: BTreeMap<String, Vec<u8>>,
}

pub struct AppState {
    pub client: CoordinatorClient,
    pub events: EventBus,
    pub live: RwLock<LiveView>,
    pub runs: RwLock<VecDeque<RunRecord>>,
    pub metrics: Metrics,
    pub auth: super::auth::Auth,
    pub contexts: BTreeMap<String, TaskContext>,
    /// Per task, the strategy and privacy settings a run uses (shown in the panel).
    pub settings: serde_json::Value,
    /// The loaded configuration: a run's own settings are checked against it.
    pub config: crate::config::Config,
    pub ready: AtomicBool,
    /// Runs and models that outlive the process (the registry).
    pub store: Option<std::sync::Arc<crate::store::Store>>,
    /// Who did what through the API (and, with `audit_events`, what the
    /// federation did: `serve`; a coordinator records its events itself).
    pub audit: Option<std::sync::Arc<crate::audit::AuditLog>>,
    pub audit_events: bool,
    /// Host names this server answers to besides IP literals and localhost.
    pub allowed_hosts: Vec<String>,
    /// See `web.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The MLflow tracker, when tracking (its runs' pages for the panel).
    pub mlflow: Option<std::sync::Arc<crate::mlflow::tracker::TrackerStats>>,
}

impl AppState {
    pub fn run(&self, id: &str) -> Option<RunRecord> {
        self.runs.read().ok()?.iter().find(|r| r.id == id).cloned()
    }

    /// Insert a run if it is not known yet (the POST handler and the event
    /// follower race to record it; the first one wins, details are merged).
    pub fn record_start(&self, id: &str, tasks: &[String], rounds: Option<u32>) {
        let Ok(mut runs) = self.runs.write() else {
            return;
        };
        if let Some(r) = runs.iter_mut().find(|r| r.id == id) {
            r.rounds = r.rounds.or(rounds);
            return;
        }
        runs.push_back(RunRecord {
            id: id.to_string(),
            status: "running".into(),
            started_at: unix_now(),
            ended_at: None,
            rounds,
            tasks: tasks.to_vec(),
            settings: BTreeMap::new(),
            report: None,
            models: BTreeMap::new(),
        });
        while runs.len() > MAX_RUNS {
            runs.pop_front();
        }
    }

    /// Keep the settings a run was started with.
    pub fn record_settings(&self, id: &str, settings: BTreeMap<String, medfed_actors::TaskRunSettings>) {
        if let Ok(mut runs) = self.runs.write() {
            if let Some(r) = runs.iter_mut().find(|r| r.id == id) {
                r.settings = settings;
            }
        }
    }

    /// The per-task report of the current run, straight from the coordinator.
    pub async fn live_report(&self, tasks: &[String]) -> anyhow::Result<BTreeMap<String, TaskJson>> {
        let report = self.client.report().await?;
        Ok(tasks
            .iter()
            .filter_map(|t| {
                let ctx = self.contexts.get(t)?;
                report.tasks.get(t).map(|r| (t.clone(), task_json(r, ctx)))
            })
            .collect())
    }
}

/// Follow the bus until it closes: live view, metrics, run history.
pub async fn follow(state: std::sync::Arc<AppState>, mut events: Recording) {
    // A recording: the live view, the metrics and the run history miss nothing.
    while let Some(event) = events.recv().await {
        if let Ok(mut live) = state.live.write() {
            live.apply(&event, unix_now());
            state.metrics.observe(&event, &live);
        }
        if let (Some(audit), true) = (&state.audit, state.audit_events) {
            crate::audit::events::observe(audit, &event);
        }
        match &event {
            FederationEvent::RunStarted { run_id, tasks, .. } => state.record_start(run_id, tasks, None),
            FederationEvent::RunEnded { run_id, outcome } => finish_run(&state, run_id, outcome.name()).await,
            _ => {}
        }
    }
}

async fn finish_run(state: &AppState, id: &str, status: &str) {
    let Some(record) = state.run(id) else {
        return;
    };
    let report = state.live_report(&record.tasks).await;
    let mut models = BTreeMap::new();
    for task in &record.tasks {
        match state.client.model(task).await.and_then(|c| Ok(c.to_bytes()?)) {
            Ok(bytes) => {
                models.insert(task.clone(), bytes);
            }
            Err(e) => tracing::error!(run = id, task = %task, "cannot keep the final model: {e:#}"),
        }
    }
    let Ok(mut runs) = state.runs.write() else {
        return;
    };
    if let Some(r) = runs.iter_mut().find(|r| r.id == id) {
        r.status = status.into();
        r.ended_at = Some(unix_now());
        match report {
            Ok(report) => r.report = Some(report),
            Err(e) => tracing::error!(run = id, "cannot fetch the run's report: {e:#}"),
        }
        r.models = models;
    }
}

pub fn mark_ready(state: &AppState) {
    state.ready.store(true, Ordering::SeqCst);
}
