//! `medfed hospital`: one hospital's agent next to its own data. It
//! connects to the coordinator (retrying with backoff), joins its task's
//! process group, trains when asked, and reconnects by itself when the
//! coordinator goes away and comes back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ractor::Actor;
use tracing::{debug, info, warn};

use medfed_actors::cluster::gate::Identity;
use medfed_actors::cluster::key_signature::secagg_identity;
use medfed_actors::cluster::reconnect::{Next, Reconnect};
use medfed_actors::cluster::{
    node, ClusterError, HospitalLink, LinkArgs, LinkStatus, NodeOptions, SessionEventKind, SessionLog,
    Shared, Uplink, WireStats,
};
use medfed_actors::{Hospital, HospitalArgs, HospitalObserver};
use medfed_models::data::columnar::StreamProgress;
use medfed_models::learner::Evaluator;

use super::cluster_node;
use crate::cli::HospitalNodeArgs as Args;
use crate::config::Loaded;
use crate::hospital_learner::{self, BuiltLearner, Ledgers, Site};
use crate::shutdown::shutdown_signal;
use crate::tasks::{kind_of, prepare_task};
use crate::web::hospital::HospitalMetrics;

pub async fn execute(args: &Args) -> Result<()> {
    let mut shutdown = shutdown_signal()?;
    let (mut loaded, selected) = super::overrides::load_with(&args.config, &args.overrides)?;
    cluster_node::apply_flags(&mut loaded, &args.security)?;
    let h = loaded.config.cluster.hospital.clone();
    let task = match (selected.as_slice(), &h.task) {
        (many, _) if args.overrides.tasks.len() > 1 => bail!(
            "a hospital serves one task, not {} (--task {})",
            many.len(),
            many.join(" --task ")
        ),
        ([one], _) if !args.overrides.tasks.is_empty() => one.clone(),
        (_, Some(task)) => task.clone(),
        ([one], None) => one.clone(),
        _ => bail!(
            "a hospital serves one task: pass --task TASK (tasks: {})",
            selected.join(", ")
        ),
    };
    if !loaded.config.tasks.contains_key(&task) {
        bail!(
            "no task '{task}' in {} (tasks: {})",
            loaded.source,
            loaded.config.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let coordinator_addr = args
        .coordinator
        .clone()
        .unwrap_or_else(|| loaded.config.cluster.coordinator.clone());
    cluster_node::check_address(&coordinator_addr).context("--coordinator (cluster.coordinator)")?;
    let cookie = cluster_node::cookie(&loaded)?;
    let tls = cluster_node::tls(&loaded)?;
    let shard = args.shard.clone().or(h.shard.clone());
    // Relative to where the command runs; an s3:// URL as given.
    let data = args
        .data
        .as_ref()
        .map(|p| match p.to_str() {
            Some(url) if crate::tasks::columnar::storage::is_remote(url) => Ok(p.clone()),
            _ => std::env::current_dir().map(|d| d.join(p)),
        })
        .transpose()?
        .or_else(|| h.data.as_ref().map(|p| loaded.resolve(p)));

    let name = args.name.clone().or(h.name.clone());
    // Checked here, before any data is read; the coordinator checks again.
    if let Some(name) = &name {
        medfed_actors::names::check_hospital_name(name).map_err(anyhow::Error::msg)?;
    }
    let stats = Arc::new(WireStats::default());
    let metrics = Arc::new(HospitalMetrics::new(stats.clone()));
    // Up before the data is loaded: liveness answers at once, readiness
    // once the coordinator has admitted this hospital.
    if let Some(addr) = args.http {
        let (server, bound) = crate::web::hospital::server(
            metrics.clone(),
            crate::web::auth::token::scrape_token(&loaded)?,
            addr,
        )?;
        info!(http = %bound, "serving /healthz, /readyz and /metrics");
        tokio::spawn(server);
    }
    let (prepare, task_name) = (loaded.clone(), task.clone());
    // Loading the data and calibrating the noise may take a while: a signal
    // meanwhile ends the agent at once.
    let Some(local) = shutdown
        .unless_received(move || {
            let mut loaded = prepare;
            match (shard, data) {
                (Some(_), Some(_)) => bail!("give either --shard or --data, not both"),
                (Some(spec), None) => from_shard(&mut loaded, &task_name, &spec, name),
                (None, Some(path)) => {
                    let name = name.context("--name is required with --data")?;
                    from_file(&loaded, &task_name, &name, &path)
                }
                (None, None) => {
                    bail!("this hospital has no data: pass --data PATH (its own CSV) or --shard I/K")
                }
            }
        })
        .await?
    else {
        return Ok(());
    };
    let kind = local
        .kind
        .unwrap_or(loaded.config.tasks[&task].kind.name())
        .to_string();
    metrics.identify(&local.name, &task, &kind);
    if let Some(progress) = &local.progress {
        metrics.watch_table(progress.clone());
        tokio::spawn(log_table_progress(local.name.clone(), progress.clone()));
    }

    // Unique per process: ractor_cluster refuses a second session under a
    // node name it already has, before the coordinator could say why.
    let link_name = format!("medfed.hospital.{}.{:016x}", local.name, rand::random::<u64>());
    // Hospitals listen nowhere: they adopt only the coordinator they dial.
    let identity = Identity::Hospital(local.name.clone());
    let (node, mut node_events) = node::start(NodeOptions {
        tls: tls.clone(),
        stats: stats.gate.clone(),
        directory: stats.directory.clone(),
        ..NodeOptions::new(link_name.clone(), identity, cookie)
    })
    .await?;
    // Under mutual TLS this hospital signs its secure-aggregation keys with
    // its TLS key and accepts only peers' keys signed the same way (loaded
    // once the node has checked that the certificate names this hospital).
    let secagg_identity = tls
        .as_ref()
        .map(|files| secagg_identity(files, &local.name))
        .transpose()
        .context("secure aggregation's key signatures")?;
    let shared = Shared::new(link_name, stats.clone());
    let (uplink, _) = Actor::spawn(None, Uplink, shared.clone()).await?;
    let (hospital, hospital_done) = Actor::spawn(
        None,
        Hospital,
        HospitalArgs {
            secagg_identity,
            crash_at: None,
            secure_policy: medfed_actors::SecurePolicy {
                enabled: loaded
                    .config
                    .tasks
                    .get(&task)
                    .is_some_and(|t| t.secure().is_some()),
                required: loaded.config.privacy.require_secure_aggregation,
            },
            name: local.name.clone(),
            task: task.clone(),
            kind,
            learner: local.built.learner,
            coordinator: uplink,
            local_test: local.local_test,
            held_out: local.held_out,
            features: local.features,
            attack: args.attack,
            site_record: true,
            observer: Some(metrics.clone() as Arc<dyn HospitalObserver>),
        },
    )
    .await
    .with_context(|| format!("starting hospital {}", local.name))?;
    let (status_tx, mut status) = tokio::sync::mpsc::unbounded_channel();
    Actor::spawn(
        Some(shared.link_name().to_string()),
        HospitalLink,
        LinkArgs {
            task: task.clone(),
            hospital,
            shared,
            status: status_tx,
        },
    )
    .await?;

    info!(hospital = %local.name, task = %task, coordinator = %coordinator_addr, "connecting");
    let mut link = Connection {
        node: node.clone(),
        addr: coordinator_addr.clone(),
        policy: Reconnect::new(args.max_reconnect_attempts),
        retry_armed: true,
        last_summary: tokio::time::Instant::now(),
    };
    // At most one connection attempt in flight and one retry timer, so
    // reconnect loops never pile up.
    let mut attempt: Option<tokio::task::JoinHandle<Result<(), ClusterError>>> = None;
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut sessions = SessionLog::default();
    let mut connected = false;
    let mut first_duplicate: Option<tokio::time::Instant> = None;
    let mut hospital_done = hospital_done;
    loop {
        tokio::select! {
            biased;
            signal = shutdown.received() => {
                info!("{signal}: leaving the federation");
                node.stop();
                return Ok(());
            }
            Some(s) = status.recv() => match s {
                LinkStatus::CoordinatorUp => {
                    connected = true;
                    metrics.connected();
                    first_duplicate = None;
                    // A pending retry (the handshake watchdog) is moot.
                    link.retry_armed = false;
                    link.policy.authenticated();
                    info!(hospital = %local.name, "connected to the coordinator");
                }
                LinkStatus::Welcomed => metrics.welcomed(),
                LinkStatus::CoordinatorLeaving => {
                    link.policy.coordinator_leaving();
                    info!(hospital = %local.name, "the coordinator is shutting down normally: waiting for the next one");
                }
                LinkStatus::CoordinatorDown => {
                    connected = false;
                    metrics.disconnected();
                    if link.policy.announced_leave {
                        info!(hospital = %local.name, "the coordinator left: reconnecting when it is back");
                    } else {
                        warn!(hospital = %local.name, "coordinator gone: reconnecting");
                    }
                    let next = link.policy.lost();
                    link.schedule(next, retry.as_mut())?;
                }
                LinkStatus::Refused(reason) => bail!("the coordinator refused this hospital: {reason}"),
            },
            // The one connection attempt in flight finished.
            Some(result) = async { Some(attempt.as_mut()?.await) }, if attempt.is_some() => {
                attempt = None;
                let result = result.unwrap_or_else(|e| Err(ClusterError::Connect(format!("the attempt failed: {e}"))));
                match result {
                    // Open: the session's events say whether it was accepted;
                    // if neither acceptance nor a coordinator follows in
                    // time, this watchdog tries again.
                    Ok(()) if !connected => link.schedule(Next::RetryIn(HANDSHAKE_WATCHDOG), retry.as_mut())?,
                    Ok(()) => {}
                    Err(
                        e @ (ClusterError::Tls(_)
                        | ClusterError::Refused(_)
                        | ClusterError::Handshake(_)
                        | ClusterError::Config(_)),
                    ) => bail!("{e}"),
                    Err(e @ ClusterError::Duplicate(_)) => {
                        // A dead session of ours lingers up to the idle
                        // timeout; one that stays active is another node.
                        let since = *first_duplicate.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= DUPLICATE_GIVE_UP {
                            bail!("{e} (for {} s in a row: is another hospital using this name?)", since.elapsed().as_secs());
                        }
                        warn!(coordinator = %link.addr, "{e}; retrying");
                        let next = link.policy.unreachable();
                        link.schedule(next, retry.as_mut())?;
                    }
                    Err(ClusterError::ClosedEarly(why)) => {
                        debug!(coordinator = %link.addr, "{why}");
                        let next = link.policy.closed_unauthenticated(false, &coordinator_addr);
                        link.schedule(next, retry.as_mut())?;
                    }
                    Err(e) => {
                        link.report_unreachable(&e);
                        let next = link.policy.unreachable();
                        link.schedule(next, retry.as_mut())?;
                    }
                }
            }
            () = &mut retry, if link.retry_armed && attempt.is_none() => {
                link.retry_armed = false;
                attempt = Some(link.start_attempt());
            }
            Some(event) = node_events.recv() => {
                let closed = sessions.observe(&event);
                if event.inbound || connected {
                    continue;
                }
                match closed {
                    Some(closed) => {
                        let next = link.policy.closed_unauthenticated(closed.peer_named, &coordinator_addr);
                        if let Next::GiveUp(why) = &next {
                            bail!("the coordinator at {coordinator_addr} did not accept this node: {why}");
                        }
                        link.schedule(next, retry.as_mut())?;
                    }
                    // An accepted session that closed before a coordinator
                    // showed up in it: no link status follows, so retry here.
                    None if event.kind == SessionEventKind::Disconnected => {
                        let next = link.policy.lost();
                        link.schedule(next, retry.as_mut())?;
                    }
                    None => {}
                }
            }
            _ = &mut hospital_done => bail!("the hospital agent stopped"),
        }
    }
}

/// The hospital's way to its coordinator: the retry policy and its logs.
struct Connection {
    node: node::Node,
    addr: String,
    policy: Reconnect,
    retry_armed: bool,
    last_summary: tokio::time::Instant,
}

/// How long an open connection may take to show an accepted session with a
/// coordinator in it before the hospital tries again.
const HANDSHAKE_WATCHDOG: Duration = Duration::from_secs(30);

/// How long a hospital keeps retrying while another session of its name is
/// active at the coordinator: longer than it takes a dead session of its own
/// to go silent (10 s).
const DUPLICATE_GIVE_UP: Duration = Duration::from_secs(15);

/// How often a hospital that keeps failing to reach its coordinator says so
/// at INFO (single failures are DEBUG after the first).
const WAITING_SUMMARY: Duration = Duration::from_secs(300);

impl Connection {
    fn start_attempt(&mut self) -> tokio::task::JoinHandle<Result<(), ClusterError>> {
        self.policy.attempting();
        let (node, addr) = (self.node.clone(), self.addr.clone());
        tokio::spawn(async move { node.connect(&addr).await })
    }

    /// Arm the retry timer (replacing any armed one), or give up.
    fn schedule(&mut self, next: Next, retry: std::pin::Pin<&mut tokio::time::Sleep>) -> Result<()> {
        match next {
            Next::RetryIn(wait) => {
                retry.reset(tokio::time::Instant::now() + wait);
                self.retry_armed = true;
                Ok(())
            }
            Next::GiveUp(why) => bail!("{why}"),
        }
    }

    fn report_unreachable(&mut self, e: &ClusterError) {
        let attempts = self.policy.attempts;
        if attempts == 1 {
            warn!(coordinator = %self.addr, "cannot reach the coordinator: {e}; retrying with backoff");
        } else if self.last_summary.elapsed() >= WAITING_SUMMARY {
            self.last_summary = tokio::time::Instant::now();
            info!(coordinator = %self.addr, attempts, "still waiting for the coordinator: {e}");
        } else {
            debug!(coordinator = %self.addr, attempts, "cannot reach the coordinator: {e}");
        }
    }
}

/// Every 30 s while a columnar hospital reads its table: rows, rows per
/// second, bytes and row groups read since the last line.
async fn log_table_progress(name: String, progress: Arc<StreamProgress>) {
    let period = Duration::from_secs(30);
    let mut last = progress.snapshot();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let now = progress.snapshot();
        let rows = now.rows - last.rows;
        if rows > 0 {
            info!(
                hospital = %name,
                rows,
                rows_per_second = (rows as f64 / period.as_secs_f64()).round(),
                mb_read = ((now.bytes - last.bytes) as f64 / 1e6).round(),
                row_groups = now.groups - last.groups,
                passes = now.passes,
                "reading its table"
            );
        }
        last = now;
    }
}

struct LocalData {
    name: String,
    built: BuiltLearner,
    local_test: Option<Box<dyn Evaluator>>,
    /// The held-out set its shard was split from (shipped data only).
    held_out: Option<String>,
    /// A streamed table's read counters (columnar `--data`).
    progress: Option<Arc<StreamProgress>>,
    /// Its model's input columns (tables), for the coordinator's check.
    features: Option<Vec<String>>,
    /// Its learner's kind when not the task's (see `OwnData::kind`).
    kind: Option<&'static str>,
}

/// Shard I of K of the shipped data under the config's split, partition
/// and seed: the same rows `medfed run` gives its hospital I.
fn from_shard(loaded: &mut Loaded, task: &str, spec: &str, name: Option<String>) -> Result<LocalData> {
    let (i, k) = parse_shard(spec)?;
    let t = loaded
        .config
        .tasks
        .get_mut(task)
        .with_context(|| format!("no task '{task}'"))?;
    t.hospitals = k;
    let prepared = prepare_task(loaded, task)?;
    let index = i - 1;
    let name = name.unwrap_or_else(|| prepared.hospital_name(index));
    let seed = loaded.config.run.seed;
    let rounds = prepared.config.effective_rounds(&loaded.config.run);
    let site = prepared
        .site(index)
        .context("shard index within the hospital count")?;
    let built = hospital_learner::build(
        loaded,
        &name,
        task,
        site,
        rounds,
        Site::Cluster,
        &Ledgers::long_lived(loaded)?,
    )?;
    let local_test = prepared.local_test(index, seed)?;
    Ok(LocalData {
        name,
        built,
        local_test,
        held_out: Some(prepared.held_out_fingerprint()),
        progress: None,
        features: prepared.data.feature_names(),
        kind: None,
    })
}

/// The hospital's own data file, read as its task's kind reads one.
fn from_file(loaded: &Loaded, task: &str, name: &str, path: &std::path::Path) -> Result<LocalData> {
    let config = &loaded.config.tasks[task];
    let own = kind_of(config.kind)?.own_data(loaded, task, path)?;
    let rounds = config.effective_rounds(&loaded.config.run);
    let built = hospital_learner::build(
        loaded,
        name,
        task,
        own.site,
        rounds,
        Site::Cluster,
        &Ledgers::long_lived(loaded)?,
    )?;
    Ok(LocalData {
        name: name.to_string(),
        built,
        local_test: Some(own.local_test),
        held_out: None,
        progress: own.progress,
        features: own.features,
        kind: own.kind,
    })
}

fn parse_shard(spec: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--shard '{spec}': expected I/K with 1 <= I <= K, e.g. 2/5");
    let (i, k) = spec.split_once('/').ok_or_else(bad)?;
    let (i, k): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        k.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || k == 0 || i > k {
        return Err(bad());
    }
    Ok((i, k))
}

#[cfg(test)]
mod tests {
    use super::parse_shard;

    #[test]
    fn shard_specs() {
        assert_eq!(parse_shard("2/5").unwrap(), (2, 5));
        assert_eq!(parse_shard(" 5 / 5 ").unwrap(), (5, 5));
        for bad in ["0/5", "6/5", "1/0", "1", "a/b", "1/2/3", ""] {
            let e = parse_shard(bad).unwrap_err().to_string();
            assert!(e.contains("expected I/K"), "{bad}: {e}");
        }
    }
}
