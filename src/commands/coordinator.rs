//! `medfed coordinator`: the coordinator actor behind a cluster node.
//! Hospitals connect from their own processes (`medfed hospital`); the
//! coordinator evaluates each global model on its held-out set and the
//! hospitals on their local test splits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ractor::Actor;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use medfed_actors::cluster::{node, Gateway, GatewayArgs, NodeOptions, SessionLog, WireStats};
use medfed_actors::{Coordinator, CoordinatorArgs, EventBus, FederationEvent, RunRequest};

use super::cluster_node;
use super::serve::Panel;
use crate::cli::CoordinatorArgs as Args;
use crate::federation::{task_setup, CoordinatorClient};
use crate::output::{print_run, TaskContext};
use crate::tasks::prepare_task;
use crate::web::state::mark_ready;

/// Runs until Ctrl-C, or with --exit-after-run until the run ends;
/// returns whether the run completed (false: it aborted).
pub async fn execute(args: &Args) -> Result<bool> {
    let (mut loaded, selected) = super::overrides::load_with(&args.config, &args.overrides)?;
    cluster_node::apply_flags(&mut loaded, &args.security)?;
    let c = &mut loaded.config.cluster;
    if let Some(listen) = args.listen {
        c.listen = listen.to_string();
    }
    c.auto_start |= args.auto_start;
    c.exit_after_run |= args.exit_after_run;
    let cluster = loaded.config.cluster.clone();
    let listen = cluster
        .listen
        .parse()
        .with_context(|| format!("cluster.listen: '{}' is not HOST:PORT", cluster.listen))?;
    let cookie = cluster_node::cookie(&loaded)?;
    let tls = cluster_node::tls(&loaded)?;

    let tasks = selected
        .iter()
        .map(|name| prepare_task(&loaded, name))
        .collect::<Result<Vec<_>>>()?;
    let mut contexts: BTreeMap<String, TaskContext> = tasks
        .iter()
        .map(|t| (t.name.clone(), TaskContext::of(t, &loaded, None)))
        .collect();
    let setups = tasks
        .iter()
        .map(|t| task_setup(&loaded, t))
        .collect::<Result<Vec<_>>>()?;

    let bus = EventBus::default();
    let mut events = bus.subscribe();
    let followed = args.http.map(|_| bus.subscribe());
    let (coordinator, _) = Actor::spawn(
        None,
        Coordinator,
        CoordinatorArgs {
            tasks: setups,
            events: bus.clone(),
        },
    )
    .await
    .context("starting the coordinator")?;
    let client = CoordinatorClient::new(coordinator.clone());
    let stats = Arc::new(WireStats::default());
    let panel = match (args.http, followed) {
        (Some(addr), Some(followed)) => {
            let panel = Panel::start(
                &loaded,
                &tasks,
                bus.clone(),
                followed,
                client.clone(),
                Some(addr),
                Some(stats.clone()),
            )?;
            // Not stdout: with --json, stdout holds exactly the run's JSON.
            eprint!("{}", panel.announcement);
            mark_ready(&panel.state);
            Some(panel)
        }
        _ => None,
    };

    let (node, mut node_events) = node::start(NodeOptions {
        name: "coordinator".into(),
        cookie,
        listen,
        tls: tls.clone(),
    })
    .await?;
    Actor::spawn(
        None,
        Gateway,
        GatewayArgs {
            coordinator: coordinator.clone(),
            tasks: selected.clone(),
            stats: stats.clone(),
            nodes: node.directory.clone(),
        },
    )
    .await
    .context("starting the cluster gateway")?;
    info!(listen = %listen, tls = tls.is_some(), tasks = ?selected, "coordinator listening for hospitals");

    let started = Instant::now();
    let mut sessions = SessionLog::default();
    let mut run_started = false;
    if cluster.auto_start {
        // The run itself waits for every expected hospital (up to the
        // assembly timeout), so its start does not depend on join timing.
        let run = client
            .start(RunRequest {
                rounds: None,
                tasks: Some(selected.clone()),
            })
            .await?;
        info!(run = %run, "run started: waiting for the expected hospitals");
        run_started = true;
    }
    let mut stop_sent = false;
    let aborted = loop {
        tokio::select! {
            Some(event) = node_events.recv() => {
                sessions.observe(&event);
            }
            event = events.recv() => match event {
                Ok(FederationEvent::RunStarted { .. }) => run_started = true,
                Ok(FederationEvent::RoundAggregated { task, round, metrics, participants, .. }) => {
                    info!(task = %task, round, participants, accuracy = metrics.accuracy, "round complete");
                }
                Ok(FederationEvent::RunEnded { aborted, .. }) if cluster.exit_after_run => break aborted,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => warn!(missed = n, "event log fell behind"),
                Err(RecvError::Closed) => bail!("the coordinator stopped"),
            },
            _ = tokio::signal::ctrl_c(), if !stop_sent => {
                info!("Ctrl-C: stopping");
                if !run_started || !cluster.exit_after_run {
                    node.stop();
                    log_traffic(&stats);
                    if let Some(panel) = panel {
                        panel.stop().await;
                    }
                    return Ok(true);
                }
                client.stop()?;
                stop_sent = true;
            }
        }
    };
    let report = client.settled_report(Duration::from_secs(30)).await?;
    // The hospitals that are joined, not the config's count (sites bring their own data).
    for (name, ctx) in contexts.iter_mut() {
        if let Some(t) = report.tasks.get(name) {
            ctx.hospitals = t.hospitals;
        }
    }
    log_traffic(&stats);
    let wall_seconds = started.elapsed().as_secs_f64();
    print_run(
        &report,
        &contexts,
        wall_seconds,
        args.json,
        " (since the coordinator started)",
    )?;
    node.stop();
    if let Some(panel) = panel {
        panel.stop().await;
    }
    coordinator.stop(None);
    Ok(!aborted)
}

fn log_traffic(stats: &WireStats) {
    use std::sync::atomic::Ordering::Relaxed;
    info!(
        bytes_sent = stats.bytes_sent.load(Relaxed),
        bytes_received = stats.bytes_received.load(Relaxed),
        messages_sent = stats.messages_sent.load(Relaxed),
        messages_received = stats.messages_received.load(Relaxed),
        dropped = ?stats.dropped(),
        "cluster traffic"
    );
}
