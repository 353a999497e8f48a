//! `medfed serve`: the config's coordinator and hospitals in this process,
//! with the control panel, REST API, event stream and /metrics.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use medfed_actors::cluster::WireStats;
use medfed_actors::EventBus;

use crate::audit::AuditLog;
use crate::cli::HttpTlsArgs;
use crate::cli::ServeArgs;
use crate::config::{Loaded, PrivacyMode};
use crate::durability::{open_for, Persistence, StoreDefault};
use crate::federation::{CoordinatorClient, Federation, Hospitals};
use crate::hospital_learner::Ledgers;
use crate::output::TaskContext;
use crate::shutdown::shutdown_signal;
use crate::tasks::{prepare_task, PreparedTask};
use crate::web::auth::token::{TokenSource, Tokens};
use crate::web::auth::Auth;
use crate::web::live::{LiveView, TaskView};
use crate::web::metrics::Metrics;
use crate::web::state::{follow, mark_ready, AppState};
use crate::web::tls::HttpTls;

pub async fn execute(args: &ServeArgs) -> Result<()> {
    let mut shutdown = shutdown_signal()?;
    let (loaded, selected) = super::overrides::load_with(&args.config, &args.overrides)?;
    if args.baseline {
        PreparedTask::check_baseline_allowed(&loaded)?;
    }
    let prepare = loaded.clone();
    let baseline = args.baseline;
    let Some((tasks, baselines)) = shutdown
        .unless_received(move || {
            let tasks = selected
                .iter()
                .map(|name| prepare_task(&prepare, name))
                .collect::<Result<Vec<_>>>()?;
            let mut baselines = BTreeMap::new();
            for task in tasks.iter().filter(|_| baseline) {
                baselines.insert(task.name.clone(), task.centralized_baseline(&prepare)?);
            }
            Ok((tasks, baselines))
        })
        .await?
    else {
        return Ok(());
    };
    let ledgers = Ledgers::long_lived(&loaded)?;
    let persistence = open_for(&loaded, &tasks, &args.durable, StoreDefault::DataDir)?;
    let audit = open_audit(&loaded, "serve", persistence.as_ref())?;
    let tracker = crate::mlflow::tracker(&loaded)?;
    let mut federation = Federation::spawn(
        &loaded,
        &tasks,
        Hospitals::InProcess(ledgers),
        &crate::mlflow::recordings(&["panel"], tracker.as_ref()),
        persistence.as_ref(),
    )
    .await?;
    let mlflow = match tracker {
        Some(t) => {
            let inputs = crate::mlflow::inputs(&tasks, true);
            Some(crate::mlflow::follow(t, &mut federation, &loaded.config, inputs)?)
        }
        None => None,
    };
    let started = Panel::start(
        &loaded,
        &tasks,
        &mut federation,
        PanelOptions {
            command: "serve",
            http: args.http,
            https: &args.https,
            cluster: None,
            audit: Some(audit),
            audit_events: true,
            baselines,
            mlflow,
        },
        persistence.as_ref(),
    );
    let panel = match started {
        Ok(panel) => panel,
        Err(e) => {
            federation.shutdown().await;
            return Err(e);
        }
    };
    // A run this server was carrying when it stopped goes on (the panel
    // shows it); refused, with the reason, if the configuration changed.
    if let Some(p) = &persistence {
        if let Err(e) = p.resume(&federation.client(), None).await {
            shut_down("the interrupted run cannot be resumed", panel, federation, false).await?;
            return Err(e);
        }
    }
    // One write, errors ignored: a closed stdout must not take the server down.
    let mut out = std::io::stdout();
    let _ = write!(out, "{}", panel.announcement(std::io::stdout().is_terminal()));
    let _ = out.flush();
    let expected = tasks.iter().map(PreparedTask::hospital_count).sum();
    let on_terminate = loaded.config.store.on_terminate;
    let has_store = persistence.is_some();
    let suspends = |signal: &str| on_terminate.suspends(signal, has_store);
    tokio::select! {
        _ = wait_for_hospitals(&panel.state, expected) => mark_ready(&panel.state),
        signal = shutdown.received() => return shut_down(signal, panel, federation, suspends(signal)).await,
    }
    let signal = shutdown.received().await;
    shut_down(signal, panel, federation, suspends(signal)).await
}

/// The process's audit log (`<data dir>/audit-<command>.jsonl`), mirrored
/// into the store when there is one.
pub fn open_audit(
    loaded: &Loaded,
    command: &str,
    persistence: Option<&Persistence>,
) -> Result<Arc<AuditLog>> {
    let log = Arc::new(AuditLog::open(&AuditLog::path_for(&loaded.data_dir()?, command))?);
    if let Some(p) = persistence {
        log.mirror_into(p.store.clone());
    }
    Ok(log)
}

/// Stop the run in progress (its end is then already published), end the
/// live event streams, stop serving, and shut the federation down, which
/// lets the panel's recorder record the stopped run first.
async fn shut_down(signal: &str, panel: Panel, federation: Federation, suspend: bool) -> Result<()> {
    eprintln!("shutting down ({signal})...");
    let stopped = if suspend {
        tracing::info!(
            "{signal}: a run in progress stays interrupted in the store and resumes when serve restarts"
        );
        Ok(None)
    } else {
        federation.client().stop().await
    };
    federation.events.close_live();
    panel.stop().await;
    federation.shutdown().await;
    stopped.map(|_| ())
}

/// The control panel, REST API, event stream and /metrics over a
/// coordinator (in-process hospitals or cluster mode alike).
pub struct Panel {
    pub state: Arc<AppState>,
    /// Where the panel is.
    pub url: String,
    token_source: TokenSource,
    handle: actix_web::dev::ServerHandle,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Which command serves the panel (it names the token file), and where.
pub struct PanelOptions<'a> {
    pub command: &'static str,
    pub http: Option<std::net::SocketAddr>,
    pub https: &'a HttpTlsArgs,
    pub cluster: Option<Arc<WireStats>>,
    /// The process's audit log; `audit_events`: the panel records the
    /// federation's events into it too (`serve`).
    pub audit: Option<Arc<AuditLog>>,
    pub audit_events: bool,
    /// Each task's centralized baseline, where one was trained (`--baseline`).
    pub baselines: BTreeMap<String, medfed_models::metrics::Metrics>,
    /// The MLflow tracker's counts, when tracking (`medfed_mlflow_*`).
    pub mlflow: Option<Arc<crate::mlflow::tracker::TrackerStats>>,
}

impl Panel {
    /// Serve on `http` (else `web.http`), following the federation's
    /// "panel" recording (an observer of the federation from now on).
    pub fn start(
        loaded: &Loaded,
        tasks: &[PreparedTask],
        federation: &mut Federation,
        options: PanelOptions,
        persistence: Option<&Persistence>,
    ) -> Result<Panel> {
        let web = &loaded.config.web;
        let addr: std::net::SocketAddr = match options.http {
            Some(a) => a,
            None => web.http.parse().context("web.http")?,
        };
        let tls = HttpTls::from_parts(
            options
                .https
                .http_tls_cert
                .clone()
                .or(web.tls_cert.as_ref().map(|f| loaded.resolve(f))),
            options
                .https
                .http_tls_key
                .clone()
                .or(web.tls_key.as_ref().map(|f| loaded.resolve(f))),
        )?;
        // One file per command and instance: serve and a coordinator on
        // the same machine never overwrite each other's token.
        let token_file = match &web.token_file {
            Some(f) => loaded.resolve(f),
            None => {
                let instance = match addr.port() {
                    0 => format!("pid{}", std::process::id()),
                    port => port.to_string(),
                };
                loaded
                    .data_dir()?
                    .join("tokens")
                    .join(format!("{}-{instance}.token", options.command))
            }
        };
        let (tokens, token_source) = Tokens::resolve(
            std::env::var("MEDFED_API_TOKEN").ok(),
            web.api_token.as_deref(),
            &token_file,
        )?;
        let auth = Auth::with_limit(
            tokens,
            crate::web::auth::token::scrape_token(loaded)?,
            web.secure_cookies || tls.is_some(),
            web.auth_failures_per_minute,
        );
        let followed = federation.recording("panel")?;
        let mut state = app_state(
            loaded,
            tasks,
            federation.events.clone(),
            federation.client(),
            auth,
            options.cluster,
            &options.baselines,
        )?;
        if let Some(stats) = options.mlflow.clone() {
            state.metrics.add_mlflow(stats.clone());
            state.mlflow = Some(stats);
        }
        state.store = persistence.map(|p| p.store.clone());
        if let (Some(store), Ok(live)) = (&state.store, state.live.get_mut()) {
            // The privacy chart starts with what earlier processes recorded.
            match store.epsilon_history(50_000) {
                Ok(rows) => live.seed_epsilon_history(rows.into_iter().map(|r| {
                    let point = crate::web::live::EpsilonPoint {
                        run: r.run,
                        task: r.task,
                        round: r.round,
                        epsilon: r.epsilon,
                    };
                    (r.hospital, point)
                })),
                Err(e) => tracing::warn!("cannot read the privacy history from the store: {e}"),
            }
        }
        state.audit = options.audit.clone();
        state.audit_events = options.audit_events;
        if let Some(p) = persistence {
            federation.record_into_store(p, state.contexts.clone())?;
        }
        let state = Arc::new(state);
        let (server, bound) = crate::web::server(state.clone(), addr, tls.as_ref())?;
        federation.add_observer(tokio::spawn(follow(state.clone(), followed)));
        let handle = server.handle();
        let serving = tokio::spawn(server);
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Panel {
            url: format!("{scheme}://{bound}/"),
            token_source,
            state,
            handle,
            serving,
        })
    }

    /// Where the panel is and where its token comes from. A generated
    /// token is shown only on a terminal (never into a log file).
    pub fn announcement(&self, terminal: bool) -> String {
        let token_line = match &self.token_source {
            TokenSource::Generated(file) if terminal => format!(
                "API token (shown once; also in {}, readable only by you): {}",
                file.display(),
                self.state.auth.tokens.primary()
            ),
            TokenSource::Generated(file) | TokenSource::File(file) => {
                format!("API token: in {} (sign in to the panel with it)", file.display())
            }
            TokenSource::Environment => "API token: from MEDFED_API_TOKEN".into(),
            TokenSource::Config => "API token: from web.api_token in the config".into(),
        };
        format!("medfed control panel: {}\n{token_line}\n", self.url)
    }

    /// Stop serving (end the live streams first: `EventBus::close_live`).
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.serving.await;
    }
}

fn app_state(
    loaded: &Loaded,
    tasks: &[PreparedTask],
    events: EventBus,
    client: CoordinatorClient,
    auth: Auth,
    cluster: Option<Arc<WireStats>>,
    baselines: &BTreeMap<String, medfed_models::metrics::Metrics>,
) -> Result<AppState> {
    let privacy = &loaded.config.privacy;
    let seed = loaded.config.run.seed;
    let ledgers = match cluster {
        Some(_) => "kept by each hospital".to_string(),
        None => Ledgers::long_lived(loaded)?.describe(),
    };
    let mut live = LiveView::default();
    let mut contexts = BTreeMap::new();
    let mut model_bytes = BTreeMap::new();
    let mut settings = serde_json::Map::new();
    let mut expected = BTreeMap::new();
    for task in tasks {
        expected.insert(task.name.clone(), task.hospital_count());
        let rounds = task.config.effective_rounds(&loaded.config.run);
        live.tasks.insert(
            task.name.clone(),
            TaskView {
                kind: task.config.kind.name().into(),
                phase: "idle".into(),
                abort_reason: None,
                round: 0,
                target_rounds: rounds,
                default_rounds: rounds,
                last_metrics: None,
                round_started_at: None,
            },
        );
        let baseline = baselines.get(&task.name).cloned();
        contexts.insert(
            task.name.clone(),
            TaskContext::of(task, loaded, baseline, &ledgers),
        );
        let params = task.evaluator(seed)?.init_params().as_slice().len() as u64;
        model_bytes.insert(task.name.clone(), params * 4);
        settings.insert(
            task.name.clone(),
            json!({
                "kind": task.config.kind.name(),
                "hospitals": task.hospital_count(),
                "min_hospitals": task.config.effective_min_hospitals(),
                "rounds": rounds,
                "strategy": task.config.strategy.name(),
                // The tables a run's settings start from (the panel's form).
                "strategy_config": task.config.strategy,
                "training": task.config.training,
                "partition": task.config.partition.scheme_name(),
                "privacy": {
                    "mode": privacy.mode.name(),
                    "relation": privacy.mode.relation(),
                    "epsilon": (privacy.mode != PrivacyMode::Off).then_some(privacy.epsilon),
                    "delta": (privacy.mode != PrivacyMode::Off).then_some(privacy.delta),
                    "noise_multiplier": privacy.noise_multiplier,
                },
            }),
        );
    }
    let observed = events.clone();
    Ok(AppState {
        client,
        events,
        live: RwLock::new(live),
        runs: RwLock::new(Default::default()),
        metrics: match cluster {
            Some(stats) => Metrics::new(model_bytes).with_cluster(stats),
            None => Metrics::new(model_bytes),
        }
        .with_observers(observed)
        .with_expected(&expected)
        .with_hospital_series(loaded.config.web.hospital_series),
        auth,
        audit: None,
        audit_events: false,
        contexts,
        settings: serde_json::Value::Object(settings),
        config: loaded.config.clone(),
        ready: AtomicBool::new(false),
        store: None,
        allowed_hosts: loaded.config.web.allowed_hosts.clone(),
        trusted_proxies: loaded
            .config
            .web
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::web::proxies::parse(p))
            .collect(),
        mlflow: None,
    })
}

/// Hospitals join asynchronously; ready when all are online (or after 30 s,
/// when /readyz still says whether the coordinator answers).
async fn wait_for_hospitals(state: &AppState, expected: usize) {
    for _ in 0..300 {
        let online = state
            .live
            .read()
            .map(|l| l.hospitals.values().filter(|h| h.status == "online").count())
            .unwrap_or(0);
        if online >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(expected, "not every hospital joined within 30 s");
}
