//! `medfed coordinator`: the coordinator actor behind a cluster node.
//! Hospitals connect from their own processes (`medfed hospital`); the
//! coordinator evaluates each global model on its held-out set and the
//! hospitals on their local test splits.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tracing::info;

use medfed_actors::cluster::gate::Identity;
use medfed_actors::cluster::{NodeOptions, SessionEventKind, SessionLog, WireStats};
use medfed_actors::{FederationEvent, RunRequest};

use super::cluster_node;
use super::serve::{open_audit, Panel, PanelOptions};
use crate::audit::AuditLog;
use crate::cli::CoordinatorArgs as Args;
use crate::config::Loaded;
use crate::durability::{open_for, Persistence, StoreDefault};
use crate::federation::{Federation, Hospitals};
use crate::output::{print_run, TaskContext};
use crate::shutdown::{shutdown_signal, RunEnd, ShutdownSignal};
use crate::tasks::{prepare_task, PreparedTask};
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
    c.insecure_plaintext |= args.insecure_plaintext;
    c.exit_after_run |= args.exit_after_run;
    let cluster = loaded.config.cluster.clone();
    let listen = cluster
        .listen
        .parse()
        .with_context(|| format!("cluster.listen: '{}' is not HOST:PORT", cluster.listen))?;
    let cookie = cluster_node::cookie(&loaded)?;
    let tls = cluster_node::tls(&loaded)?;

    let prepare = loaded.clone();
    let names = selected.clone();
    let Some(tasks) = shutdown
        .unless_received(move || {
            names
                .iter()
                .map(|name| prepare_task(&prepare, name))
                .collect::<Result<Vec<_>>>()
        })
        .await?
    else {
        return Ok(RunEnd::Completed);
    };
    let mut contexts: BTreeMap<String, TaskContext> = tasks
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TaskContext::of(t, &loaded, None, "kept by each hospital"),
            )
        })
        .collect();
    let stats = Arc::new(WireStats::default());
    let remote = Hospitals::Remote {
        node: Box::new(NodeOptions {
            listen: Some(listen),
            tls: tls.clone(),
            allow: (!cluster.allow.is_empty()).then(|| cluster.allow.iter().cloned().collect()),
            insecure_plaintext: cluster.insecure_plaintext,
            stats: stats.gate.clone(),
            directory: stats.directory.clone(),
            ..NodeOptions::new(
                Identity::Coordinator.node_name_prefix(),
                Identity::Coordinator,
                cookie,
            )
        }),
        tasks: selected.clone(),
        stats: stats.clone(),
    };
    let recorders: &[&str] = if args.http.is_some() {
        &["coordinator", "panel"]
    } else {
        &["coordinator"]
    };
    let persistence = open_for(&loaded, &tasks, &args.durable, StoreDefault::DataDir)?;
    let audit = open_audit(&loaded, "coordinator", persistence.as_ref())?;
    let tracker = crate::mlflow::tracker(&loaded)?;
    let recorders = crate::mlflow::recordings(recorders, tracker.as_ref());
    let mut federation = Federation::spawn(&loaded, &tasks, remote, &recorders, persistence.as_ref()).await?;
    // The hospitals' data is theirs: only the held-out set's digest is logged.
    let mlflow = match tracker {
        Some(t) => Some(crate::mlflow::follow(
            t,
            &mut federation,
            &loaded.config,
            crate::mlflow::inputs(&tasks, false),
        )?),
        None => None,
    };
    // With a panel, the panel records into the store (it knows the contexts).
    if let (Some(p), None) = (&persistence, args.http) {
        federation.record_into_store(p, contexts.clone())?;
    }
    let setup = Setup {
        loaded: &loaded,
        tasks: &tasks,
        persistence: persistence.as_ref(),
        stats: &stats,
        audit: &audit,
        mlflow: mlflow.clone(),
    };
    let result = serve(args, &setup, &mut federation, &mut contexts, &mut shutdown).await;
    log_traffic(&stats);
    federation.shutdown().await;
    result
}

/// The coordinator's life once its federation is built: the panel, the
/// auto-started run, and the loop until a signal or the run's end.
/// What the coordinator was set up with.
struct Setup<'a> {
    loaded: &'a Loaded,
    tasks: &'a [PreparedTask],
    persistence: Option<&'a Persistence>,
    stats: &'a Arc<WireStats>,
    audit: &'a Arc<AuditLog>,
    mlflow: Option<Arc<crate::mlflow::tracker::TrackerStats>>,
}

async fn serve(
    args: &Args,
    setup: &Setup<'_>,
    federation: &mut Federation,
    contexts: &mut BTreeMap<String, TaskContext>,
    shutdown: &mut ShutdownSignal,
) -> Result<RunEnd> {
    let Setup {
        loaded,
        tasks,
        persistence,
        stats,
        audit,
        ..
    } = *setup;
    let cluster = &loaded.config.cluster;
    let client = federation.client();
    let mut events = federation.recording("coordinator")?;
    let mut sessions = federation
        .sessions
        .take()
        .context("the cluster node's session events")?;
    let panel = match args.http {
        Some(addr) => {
            let panel = Panel::start(
                loaded,
                tasks,
                federation,
                PanelOptions {
                    command: "coordinator",
                    http: Some(addr),
                    https: &args.https,
                    cluster: Some(stats.clone()),
                    audit: Some(audit.clone()),
                    audit_events: false,
                    baselines: Default::default(),
                    mlflow: setup.mlflow.clone(),
                },
                persistence,
            )?;
            // Not stdout: with --json, stdout holds exactly the run's JSON.
            eprint!("{}", panel.announcement(std::io::stderr().is_terminal()));
            mark_ready(&panel.state);
            Some(panel)
        }
        None => None,
    };
    info!(listen = %cluster.listen, tls = cluster.tls_cert.is_some(), tasks = ?federation_tasks(tasks), "coordinator listening for hospitals");

    let started = Instant::now();
    let mut session_log = SessionLog::default();
    // An interrupted run in the store is carried on (whether or not runs
    // start by themselves): a restarted coordinator pod picks up its run.
    let resumed = match persistence {
        Some(p) => p.resume(&client, None).await?,
        None => None,
    };
    if resumed.is_none() && cluster.auto_start {
        // The run itself waits for every expected hospital (up to the
        // assembly timeout), so its start does not depend on join timing.
        let run = client
            .start(RunRequest {
                rounds: None,
                tasks: Some(federation_tasks(tasks)),
                exclude: Vec::new(),
                settings: Default::default(),
            })
            .await?;
        audit.record(
            "coordinator --auto-start",
            "run_start_requested",
            serde_json::json!({ "run": run, "tasks": federation_tasks(tasks) }),
        );
        info!(run = %run, "run started: waiting for the expected hospitals");
    }
    let mut stop_sent = false;
    let mut membership = Membership::of(tasks);
    let mut waiting_log = tokio::time::interval(WAITING_LOG);
    waiting_log.tick().await;
    let end = loop {
        tokio::select! {
            Some(event) = sessions.recv() => {
                session_log.observe(&event);
                if let (SessionEventKind::Refused, Some(reason)) = (event.kind, &event.reason) {
                    audit.record(
                        "cluster gate",
                        "cluster_connection_refused",
                        serde_json::json!({ "addr": event.peer_addr, "reason": reason }),
                    );
                }
            }
            _ = waiting_log.tick() => membership.log_waiting(),
            event = events.recv() => {
                if let Some(event) = &event {
                    crate::audit::events::observe(audit, event);
                }
                match event {
                Some(FederationEvent::HospitalJoined { task, hospital, .. }) => {
                    membership.joined(&task, hospital);
                }
                Some(FederationEvent::HospitalLeft { task, hospital, .. }) => {
                    membership.left(&task, &hospital);
                }
                Some(FederationEvent::RunEnded { outcome, .. }) => {
                    if cluster.exit_after_run || stop_sent {
                        break Some(RunEnd::from(outcome));
                    }
                }
                Some(_) => {}
                None => bail!("the coordinator stopped"),
            }},
            signal = shutdown.received(), if !stop_sent => {
                if loaded.config.store.on_terminate.suspends(signal, persistence.is_some()) {
                    info!("{signal}: shutting down; a run in progress stays interrupted in the store and resumes when the coordinator restarts");
                    break None;
                }
                // The core knows whether a run is active; its end, if any,
                // is already on its way to `events`.
                match client.stop().await? {
                    Some(run) => {
                        audit.record(&format!("signal {signal}"), "run_stop_requested", serde_json::json!({ "run": run }));
                        info!(run = %run, "{signal}: stopping the run, then shutting down")
                    }
                    None => {
                        info!("{signal}: shutting down (no run in progress)");
                        break None;
                    }
                }
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
            contexts,
            started.elapsed().as_secs_f64(),
            args.json,
            " (since the coordinator started)",
        )?;
    }
    if let Some(panel) = panel {
        federation.events.close_live();
        panel.stop().await;
    }
    Ok(end.unwrap_or(RunEnd::Completed))
}

/// How often a coordinator still missing hospitals says so.
const WAITING_LOG: std::time::Duration = std::time::Duration::from_secs(30);

/// Who has joined each task, against the configuration's count and quorum:
/// logged when it changes and, while hospitals are missing, periodically.
struct Membership {
    tasks: BTreeMap<String, (std::collections::BTreeSet<String>, usize, usize)>,
}

impl Membership {
    fn of(tasks: &[PreparedTask]) -> Self {
        Self {
            tasks: tasks
                .iter()
                .map(|t| {
                    let quorum = t.config.effective_min_hospitals();
                    (t.name.clone(), (Default::default(), t.hospital_count(), quorum))
                })
                .collect(),
        }
    }

    fn joined(&mut self, task: &str, hospital: String) {
        if let Some((joined, ..)) = self.tasks.get_mut(task) {
            if joined.insert(hospital) {
                self.log(task);
            }
        }
    }

    fn left(&mut self, task: &str, hospital: &str) {
        if let Some((joined, ..)) = self.tasks.get_mut(task) {
            if joined.remove(hospital) {
                self.log(task);
            }
        }
    }

    fn log(&self, task: &str) {
        if let Some((joined, expected, quorum)) = self.tasks.get(task) {
            let k = joined.len();
            info!(task = %task, joined = k, expected, quorum, "{k} of {expected} hospitals joined (quorum {quorum})");
        }
    }

    fn log_waiting(&self) {
        for (task, (joined, expected, _)) in &self.tasks {
            if joined.len() < *expected {
                self.log(task);
            }
        }
    }
}

fn federation_tasks(tasks: &[PreparedTask]) -> Vec<String> {
    tasks.iter().map(|t| t.name.clone()).collect()
}

fn log_traffic(stats: &WireStats) {
    use std::sync::atomic::Ordering::Relaxed;
    info!(
        bytes_sent = stats.bytes_sent.load(Relaxed),
        bytes_received = stats.bytes_received.load(Relaxed),
        messages_sent = stats.messages_sent.load(Relaxed),
        messages_sent_direct = stats.messages_sent_direct.load(Relaxed),
        messages_received = stats.messages_received.load(Relaxed),
        dropped = ?stats.dropped(),
        "cluster traffic"
    );
}
