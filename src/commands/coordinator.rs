//! `medfed coordinator`: the coordinator actor behind a cluster node.
//! Hospitals connect from their own processes (`medfed hospital`); the
//! coordinator evaluates each global model on its held-out set and the
//! hospitals on their local test splits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ractor::Actor;
use tracing::info;

use medfed_actors::cluster::{node, Gateway, GatewayArgs, NodeOptions, SessionLog, WireStats};
use medfed_actors::{EventBus, FederationEvent, RunRequest};

use super::cluster_node;
use super::serve::Panel;
use crate::cli::CoordinatorArgs as Args;
use crate::federation::{Federation, Hospitals};
use crate::output::{print_run, TaskContext};
use crate::shutdown::{shutdown_signal, RunEnd};
use crate::tasks::prepare_task;
use crate::web::state::mark_ready;

/// Runs until Ctrl-C or SIGTERM, or with --exit-after-run until the run
/// ends. A signal during a run stops it (recorded as stopped) and prints
/// its result. Returns how the run ended (`Completed` when none ran).
pub async fn execute(args: &Args) -> Result<RunEnd> {
    let mut shutdown = shutdown_signal()?;
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
    let bus = EventBus::default();
    // Both recorded before any hospital can join, so no join is missed.
    let mut events = bus.record("coordinator");
    let followed = args.http.map(|_| bus.record("panel"));
    let mut federation = Federation::spawn(&loaded, &tasks, bus.clone(), Hospitals::Remote).await?;
    let client = federation.client();
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
            coordinator: federation.coordinator.clone(),
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
    }
    // A run this process saw start and not yet end.
    let mut run_active = cluster.auto_start;
    let mut stop_sent = false;
    let end = loop {
        tokio::select! {
            Some(event) = node_events.recv() => {
                sessions.observe(&event);
            }
            event = events.recv() => match event {
                Some(FederationEvent::RunStarted { .. }) => run_active = true,
                Some(FederationEvent::RoundAggregated { task, round, metrics, participants, .. }) => {
                    info!(task = %task, round, participants, accuracy = metrics.accuracy, "round complete");
                }
                Some(FederationEvent::RunEnded { aborted, stopped, .. }) => {
                    run_active = false;
                    if cluster.exit_after_run || stop_sent {
                        break Some(RunEnd::from_flags(aborted, stopped));
                    }
                }
                Some(_) => {}
                None => bail!("the coordinator stopped"),
            },
            signal = shutdown.received(), if !stop_sent => {
                if !run_active {
                    info!("{signal}: shutting down (no run in progress)");
                    break None;
                }
                info!("{signal}: stopping the run, then shutting down");
                client.stop()?;
                stop_sent = true;
            }
        }
    };
    if end.is_some() {
        let report = client.report().await?;
        // The hospitals that are joined, not the config's count (sites bring their own data).
        for (name, ctx) in contexts.iter_mut() {
            if let Some(t) = report.tasks.get(name) {
                ctx.hospitals = t.hospitals;
            }
        }
        print_run(
            &report,
            &contexts,
            started.elapsed().as_secs_f64(),
            args.json,
            " (since the coordinator started)",
        )?;
    }
    log_traffic(&stats);
    node.stop();
    if let Some(panel) = panel {
        federation.add_observer(panel.stop().await);
    }
    federation.shutdown().await;
    Ok(end.unwrap_or(RunEnd::Completed))
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
