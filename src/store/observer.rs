//! The store as a lossless observer of the federation: every event goes to
//! the append-only log; a run's start and end update its row; a finished
//! run's models are registered. (Rounds are written by the coordinator's
//! own commit, which does not wait for this observer.)

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::params;

use medfed_actors::{FederationEvent, Recording, RunOutcome};

use super::Store;
use crate::federation::CoordinatorClient;
use crate::output::{task_json, TaskContext};
use crate::web::state::unix_now;

/// What the observer records runs under.
pub struct RunFacts {
    pub fingerprint: String,
    pub contexts: BTreeMap<String, TaskContext>,
}

/// Follow `events` until the bus closes, recording into `store`.
pub async fn record_events(
    store: Arc<Store>,
    mut events: Recording,
    client: CoordinatorClient,
    facts: RunFacts,
) {
    let facts = Arc::new(facts);
    let writer = match store.writer() {
        Ok(writer) => writer,
        Err(e) => {
            tracing::error!("cannot record the federation: {e}");
            // Still drained: a recording that is not read holds events back.
            while events.recv().await.is_some() {}
            return;
        }
    };
    let mut run: Option<String> = None;
    while let Some(event) = events.recv().await {
        // The run's row was written by the coordinator before it started.
        if let FederationEvent::RunStarted { run_id, .. } = &event {
            run = Some(run_id.clone());
        }
        let kind = event_type(&event);
        let body = serde_json::to_string(&event).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let run_id = run.clone();
        writer.queue("an event", move |tx| {
            tx.execute(
                "INSERT INTO events (run_id, at, type, body) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, unix_now(), kind, body],
            )?;
            Ok(())
        });
        if let FederationEvent::RunEnded { run_id, outcome } = &event {
            end_run(&store, &client, &facts, run_id, *outcome).await;
        }
    }
    if let Err(e) = writer.flush() {
        tracing::error!("cannot flush the store: {e}");
    }
}

/// The `type` tag the event serialises with.
fn event_type(event: &FederationEvent) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

async fn end_run(
    store: &Arc<Store>,
    client: &CoordinatorClient,
    facts: &RunFacts,
    run_id: &str,
    outcome: RunOutcome,
) {
    let reports: BTreeMap<String, (String, Option<String>, String)> = match client.report().await {
        Ok(report) if report.run_id.as_deref() == Some(run_id) => report
            .tasks
            .iter()
            .filter_map(|(name, r)| {
                let ctx = facts.contexts.get(name)?;
                let json = task_json(r, ctx);
                let text = serde_json::to_string(&json).ok()?;
                Some((
                    name.clone(),
                    (json.status.to_string(), json.abort_reason.clone(), text),
                ))
            })
            .collect(),
        Ok(_) => BTreeMap::new(),
        Err(e) => {
            tracing::error!(run = run_id, "cannot fetch the run's report for the store: {e:#}");
            BTreeMap::new()
        }
    };
    let id = run_id.to_string();
    let status = outcome.name();
    let ended = store.writer().and_then(|writer| {
        writer.call(move |tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, ended_at = ?3 WHERE id = ?1",
                params![id, status, unix_now()],
            )?;
            for (task, (task_status, reason, report)) in &reports {
                tx.execute(
                "UPDATE run_tasks SET status = ?3, reason = ?4, report = ?5 WHERE run_id = ?1 AND task = ?2",
                params![id, task, task_status, reason, report],
            )?;
            }
            Ok(())
        })
    });
    if let Err(e) = ended {
        tracing::error!(run = run_id, "cannot record the run's end: {e}");
        return;
    }
    if outcome != RunOutcome::Finished {
        return;
    }
    let (store, id, fingerprint) = (store.clone(), run_id.to_string(), facts.fingerprint.clone());
    let registered = tokio::task::spawn_blocking(move || store.register_run(&id, &fingerprint)).await;
    match registered {
        Ok(Ok(versions)) => {
            for v in versions {
                tracing::info!(task = %v.task, version = v.version, run = run_id, sha256 = %v.sha256, "model registered");
            }
        }
        Ok(Err(e)) => tracing::error!(run = run_id, "cannot register the run's models: {e}"),
        Err(e) => tracing::error!(run = run_id, "cannot register the run's models: {e}"),
    }
}
